"""M-LSD straight lines (the ControlNet "mlsd" condition): 1-pixel white segments on black.

M-LSD (Gu et al., "Towards Light-weight and Real-time Line Segment Detection", AAAI 2022) is a
MobileNetV2 backbone with a small U-Net-like decoder. At half the input resolution it predicts,
per pixel, a "this is a segment's centre" logit and the displacements from that centre to the
segment's two ends. Decoding keeps the local maxima of the centre score (3x3), takes the best
200, and keeps those whose score exceeds `thr_v` and whose length exceeds `thr_d`.

The input has four channels: RGB scaled to -1..1 plus a constant channel (ones before the
scaling, so 1/127.5 - 1 after it), as the published TFLite-derived model expects.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import image_batch, load_network, pad_to_multiple, to_numpy

# https://huggingface.co/lllyasviel/Annotators/blob/main/mlsd_large_512_fp32.pth
# (v1.1 annotator/mlsd; the M-LSD authors' "large" model, converted to PyTorch by lihaoweicv).
MLSD_WEIGHTS = "mlsd_large_512_fp32.pth"

# v1.1 gradio_mlsd2image defaults ("Hough value threshold", "Hough distance threshold").
DEFAULT_SCORE_THRESHOLD = 0.1      # thr_v: minimum centre score (after sigmoid)
DEFAULT_DISTANCE_THRESHOLD = 0.1   # thr_d: minimum segment length, in output-map pixels
# mlsd/utils.py pred_lines: deccode_output_score_and_ptss(outputs, topk_n=200, ksize=3).
TOP_K = 200
PEAK_WINDOW = 3
OUTPUT_STRIDE = 2                  # the prediction map is half the input size
# The decoder upsamples stride-16 features back through strides 8, 4, 2: sides must divide.
SIZE_MULTIPLE = 16
HALF_RANGE = 127.5                 # pixel / 127.5 - 1 -> -1..1
# Output channels: block23 predicts 16 maps; v1.1 uses maps 7.. : centre logit, then the
# displacements (start x, start y, end x, end y).
FIRST_USED_CHANNEL = 7

# MobileNetV2 (Sandler et al. 2018) inverted-residual stages used by M-LSD, truncated after the
# 96-channel stage: (expansion t, channels c, repeats n, first stride s).
_MOBILENET_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
_STEM_CHANNELS = 32
# The backbone features (indices into backbone.features) the decoder taps: strides 2, 4, 8, 16, 16.
_TAPPED_FEATURES = (1, 3, 6, 10, 13)


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU6. A stride-2 conv pads only right and bottom by one,
    like TensorFlow's 'SAME' padding, which the weights were trained with."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, groups: int = 1):
        padding = 0 if stride == 2 else (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (unless t=1), 3x3 depthwise, 1x1 project (linear), plus a
    residual when shape allows."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        layers = [] if expansion == 1 else [ConvBNReLU6(in_channels, hidden, kernel_size=1)]
        layers += [ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False),
                   nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetBackbone(nn.Module):
    """The first 14 MobileNetV2 layers on a 4-channel input; returns the tapped features."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = [ConvBNReLU6(4, _STEM_CHANNELS, stride=2)]
        channels = _STEM_CHANNELS
        for expansion, out_channels, repeats, first_stride in _MOBILENET_STAGES:
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                layers.append(InvertedResidual(channels, out_channels, stride, expansion))
                channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tapped = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in _TAPPED_FEATURES:
                tapped.append(x)
        return tapped


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int,
                  dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class MergeBlock(nn.Module):
    """("BlockTypeA") 1x1 conv both the skip feature and the deeper feature, upsample the deeper
    one x2 (bilinear, corners aligned) when it is coarser, concatenate [skip, deeper]."""

    def __init__(self, skip_channels: int, deep_channels: int, out_channels: int, upscale: bool):
        super().__init__()
        self.conv1 = _conv_bn_relu(deep_channels, out_channels, 1)
        self.conv2 = _conv_bn_relu(skip_channels, out_channels, 1)
        self.upscale = upscale

    def forward(self, skip: torch.Tensor, deep: torch.Tensor) -> torch.Tensor:
        deep = self.conv1(deep)
        if self.upscale:
            deep = F.interpolate(deep, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(skip), deep), dim=1)


class RefineBlock(nn.Module):
    """("BlockTypeB") a residual 3x3 conv, then a 3x3 conv to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, in_channels, 3)
        self.conv2 = _conv_bn_relu(in_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class HeadBlock(nn.Module):
    """("BlockTypeC") dilated 3x3 (wide context), 3x3, then 1x1 to the prediction maps."""

    HEAD_DILATION = 5

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, in_channels, 3, dilation=self.HEAD_DILATION)
        self.conv2 = _conv_bn_relu(in_channels, in_channels, 3)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MLSDNetwork(nn.Module):
    """Input 1x4xHxW (RGB and ones, all /127.5 - 1; H, W multiples of 16); output 1x9x(H/2)x(W/2):
    centre logit and the four end displacements."""

    def __init__(self):
        super().__init__()
        self.backbone = MobileNetBackbone()
        # Names block15..block23 continue MobileNetV2's layer numbering (v1.1 mbv2_mlsd_large).
        self.block15 = MergeBlock(64, 96, 64, upscale=False)   # stride 16 + stride 16
        self.block16 = RefineBlock(128, 64)
        self.block17 = MergeBlock(32, 64, 64, upscale=True)    # stride 8
        self.block18 = RefineBlock(128, 64)
        self.block19 = MergeBlock(24, 64, 64, upscale=True)    # stride 4
        self.block20 = RefineBlock(128, 64)
        self.block21 = MergeBlock(16, 64, 64, upscale=True)    # stride 2
        self.block22 = RefineBlock(128, 64)
        self.block23 = HeadBlock(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride2, stride4, stride8, stride16, stride16_deep = self.backbone(x)
        x = self.block16(self.block15(stride16, stride16_deep))
        x = self.block18(self.block17(stride8, x))
        x = self.block20(self.block19(stride4, x))
        x = self.block22(self.block21(stride2, x))
        return self.block23(x)[:, FIRST_USED_CHANNEL:]


def load_mlsd(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MLSDNetwork:
    """MLSDNetwork with the published `mlsd_large_512_fp32.pth` from the annotators folders."""
    return load_network(MLSDNetwork(), MLSD_WEIGHTS, folders, device, dtype)


def _to_numpy_int(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(np.int64)


def decode_segments(
    prediction: torch.Tensor,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD,
) -> np.ndarray:
    """Nx4 float64 segments (x_start, y_start, x_end, y_end) in input pixels from the network's
    1x9xhxw output (v1.1 mlsd/utils.py pred_lines), best score first."""
    prediction = prediction.float()
    height, width = prediction.shape[2:]
    score = torch.sigmoid(prediction[:, 0])
    # A centre is a local maximum of the score in its 3x3 window.
    window_max = F.max_pool2d(score, PEAK_WINDOW, stride=1, padding=PEAK_WINDOW // 2)
    peaks = (score * (window_max == score).float()).reshape(-1)
    scores, indices = torch.topk(peaks, min(TOP_K, peaks.numel()))
    ys, xs = _to_numpy_int(indices // width), _to_numpy_int(indices % width)
    scores = to_numpy(scores)
    displacement = to_numpy(prediction[0, 1:5]).transpose(1, 2, 0)[ys, xs]  # N x 4
    length = np.sqrt(np.sum((displacement[:, :2] - displacement[:, 2:]) ** 2, axis=-1))
    keep = (scores > score_threshold) & (length > distance_threshold)
    centres = np.stack([xs, ys, xs, ys], axis=1)[keep]
    return OUTPUT_STRIDE * (centres + displacement[keep])  # int64 + float32 -> float64


def mlsd(
    image: np.ndarray,
    network: MLSDNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    thr_v: float = DEFAULT_SCORE_THRESHOLD,
    thr_d: float = DEFAULT_DISTANCE_THRESHOLD,
) -> np.ndarray:
    """M-LSD line map (uint8 HxWx3, 1-pixel white segments on black) at the image's size.

    `thr_v`: minimum centre score (0..1); higher keeps fewer, surer segments.
    `thr_d`: minimum segment length in half-resolution pixels; higher drops short segments.
    """

    def detect(rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        padded = pad_to_multiple(rgb, SIZE_MULTIPLE).astype(np.float32)
        ones = np.ones(padded.shape[:2] + (1,), np.float32)
        network_input = np.concatenate([padded, ones], axis=2) / HALF_RANGE - 1.0
        with torch.no_grad():
            prediction = network(image_batch(network_input, network, channels_last=True))
        segments = decode_segments(prediction, thr_v, thr_d)
        canvas = np.zeros(padded.shape[:2], np.uint8)
        # v1.1 truncates the end points toward zero (int(val)) and draws 1-pixel lines.
        for x_start, y_start, x_end, y_end in segments.astype(np.int64).tolist():
            cv2.line(canvas, (x_start, y_start), (x_end, y_end), 255, 1)
        return canvas[:height, :width]

    # Nearest keeps the lines binary when the map is brought back to the image's size.
    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
