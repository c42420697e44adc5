"""UniFormer ADE20K segmentation (ControlNet 1.0 "seg"), in plain torch: no mmcv/mmseg.

`upernet_global_small.pth` is an mmseg EncoderDecoder checkpoint: a UniFormer-S backbone
(`uniformer_backbone`) and a UPerNet decode head (Xiao et al., "Unified Perceptual Parsing for
Scene Understanding", ECCV 2018) over its four feature maps:
  PPM:  the 1/32 map average-pooled to 1x1, 2x2, 3x3, 6x6, each conv-BN-ReLU to 512 channels,
        upsampled back (bilinear) and concatenated with the map; a 3x3 conv-BN-ReLU
        (`bottleneck`) makes the top FPN level.
  FPN:  1x1 lateral conv-BN-ReLU on the 1/4, 1/8, 1/16 maps; top-down, each level adds the
        bilinear upsampling of the one above; 3x3 conv-BN-ReLU on each (except the top); all
        four upsampled to 1/4, concatenated, 3x3 conv-BN-ReLU (`fpn_bottleneck`), and a 1x1
        conv to the 150 ADE20K classes (`conv_seg`).
The checkpoint also holds the training-only auxiliary FCN head (`auxiliary_head.*`); it is
dropped when loading, every other key must match.

The pipeline is mmseg's test pipeline as ControlNet 1.0 runs it (annotator/uniformer,
mmseg/apis/inference.py, configs/_base_/datasets/ade20k.py):
  1. resize keeping the aspect ratio, as large as fits (2048, 512) (long side <= 2048, short
     side <= 512), sizes rounded half up, bilinear (mmcv.imrescale);
  2. ImageNet mean/std normalisation in 0..255. ControlNet hands mmseg an RGB array, which
     mmseg takes for BGR and "converts" to RGB (to_rgb=True): the network sees the channels
     in B, G, R order, normalised with the R, G, B statistics. We reproduce that, so the maps
     equal the original annotator's.
  3. logits (1/4 size) -> bilinear to the resized input -> bilinear to the image's size
     (align_corners=False both times), argmax (mmseg's softmax does not change it);
  4. the labels coloured with the ADE20K palette at opacity 1 (`segmentation.colorize_labels`).

Checks (tests/annotators/test_uniformer.py): the decode head equals mmsegmentation 1.2.2's
UPerHead with identical random weights (raw logits, when mmseg is importable); the backbone's
blocks equal the same computations written with torch.nn.functional (no package implements
UniFormer, so there is no end-to-end oracle); key names and shapes match a list derived from the
original module tree, parameter count included; the pipeline's resize, normalisation, channel
order, upsampling and colouring are checked against their definitions above. Not checked: the
published weights' real segmentations (no file and no reference output here).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import image_batch, network_from_weights, read_weights
from .segmentation import colorize_labels
from .uniformer_backbone import EMBED_DIMS, UniFormerBackbone
from .weights import drop_prefixes

# https://huggingface.co/lllyasviel/Annotators/blob/main/upernet_global_small.pth
UNIFORMER_WEIGHTS = "upernet_global_small.pth"

ADE20K_CLASSES = 150
HEAD_CHANNELS = 512
POOL_SCALES = (1, 2, 3, 6)
AUXILIARY_HEAD_PREFIX = "auxiliary_head."  # training-only FCN head in the checkpoint
# mmseg ade20k.py test pipeline: img_scale=(2048, 512) with keep_ratio.
RESCALE_LIMITS = (2048, 512)
# ade20k.py img_norm_cfg, R, G, B order, on 0..255 values.
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


class ConvBNReLU(nn.Module):
    """mmcv ConvModule with BN: conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                              padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def resize_bilinear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class UPerHead(nn.Module):
    """Four feature maps -> class logits at the size of the first (1/4)."""

    def __init__(self, in_channels: Sequence[int] = EMBED_DIMS, channels: int = HEAD_CHANNELS,
                 classes: int = ADE20K_CLASSES, pool_scales: Sequence[int] = POOL_SCALES):
        super().__init__()
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvBNReLU(top, channels, 1))
            for scale in pool_scales)
        self.bottleneck = ConvBNReLU(top + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.conv_seg = nn.Conv2d(channels, classes, 1)

    def pyramid_pooling(self, top: torch.Tensor) -> torch.Tensor:
        pooled = [resize_bilinear(branch(top), top.shape[2:]) for branch in self.psp_modules]
        return self.bottleneck(torch.cat([top] + pooled, dim=1))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = [conv(x) for conv, x in zip(self.lateral_convs, features)]
        levels.append(self.pyramid_pooling(features[-1]))
        for i in range(len(levels) - 1, 0, -1):  # top-down: coarse context into finer levels
            levels[i - 1] = levels[i - 1] + resize_bilinear(levels[i], levels[i - 1].shape[2:])
        outputs = [conv(level) for conv, level in zip(self.fpn_convs, levels)] + [levels[-1]]
        size = outputs[0].shape[2:]
        fused = torch.cat([outputs[0]] + [resize_bilinear(o, size) for o in outputs[1:]], dim=1)
        return self.conv_seg(self.fpn_bottleneck(fused))


class UniFormerSegmentationNetwork(nn.Module):
    """Input Bx3xHxW normalised image; output Bx150xHxW ADE20K class logits (mmseg
    `encode_decode`: the head's 1/4-size logits brought back to the input size)."""

    def __init__(self, head_channels: int = HEAD_CHANNELS):
        super().__init__()
        self.backbone = UniFormerBackbone()
        self.decode_head = UPerHead(channels=head_channels)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.backbone(image))
        return resize_bilinear(logits, image.shape[2:])


def uniformer_state_dict(folders: Sequence[str]) -> dict[str, torch.Tensor]:
    """The published checkpoint's network weights (under 'state_dict'), the training-only
    auxiliary head left out."""
    return drop_prefixes(read_weights(UNIFORMER_WEIGHTS, folders), (AUXILIARY_HEAD_PREFIX,))


def load_uniformer(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> UniFormerSegmentationNetwork:
    """UniFormerSegmentationNetwork with the published `upernet_global_small.pth` (an mmseg
    checkpoint) from the annotators models folders; every key but the auxiliary head's must
    match."""
    return network_from_weights(lambda _: UniFormerSegmentationNetwork(), uniformer_state_dict(folders), device, dtype)


def rescaled_size(height: int, width: int) -> tuple[int, int]:
    """(height, width) of mmcv.imrescale(image, (2048, 512)): the largest scale at which the
    long side fits 2048 and the short side 512, sizes rounded half up."""
    long_limit, short_limit = max(RESCALE_LIMITS), min(RESCALE_LIMITS)
    scale = min(long_limit / max(height, width), short_limit / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def network_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB at the network's size -> float32 HxWx3 as ControlNet 1.0's pipeline feeds
    it: channels reversed (see the module docstring), minus mean, over std (R, G, B stats)."""
    swapped = rgb[:, :, ::-1].astype(np.float32)
    mean = np.asarray(IMAGENET_MEAN_255, dtype=np.float32)
    inverse_std = (1.0 / np.asarray(IMAGENET_STD_255, dtype=np.float64)).astype(np.float32)
    return (swapped - mean) * inverse_std


def segment_labels(rgb: np.ndarray, network: UniFormerSegmentationNetwork) -> np.ndarray:
    """HxW int64 ADE20K class index (0..149) of a uint8 RGB image, at its size."""
    height, width = rgb.shape[:2]
    net_height, net_width = rescaled_size(height, width)
    resized = rgb
    if (net_height, net_width) != (height, width):
        resized = cv2.resize(rgb, (net_width, net_height), interpolation=cv2.INTER_LINEAR)
    with torch.no_grad():
        logits = network(image_batch(network_input(resized), network))
        logits = resize_bilinear(logits, (height, width))  # mmseg rescale to ori_shape
        labels = logits.argmax(dim=1)[0]
    return labels.cpu().numpy().astype(np.int64)


def uniformer_segmentation(
    image: np.ndarray,
    network: UniFormerSegmentationNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """ADE20K segmentation map (uint8 HxWx3, mmseg's ADE20K palette) at the image's size."""

    def detect(rgb: np.ndarray) -> np.ndarray:
        return colorize_labels(segment_labels(rgb, network), "ade20k")

    # Nearest: a blend of two class colours is no class.
    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
