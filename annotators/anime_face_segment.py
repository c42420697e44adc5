"""Anime face segmentation (A1111's anime_face_segment and comfyui_controlnet_aux's "Anime Face
Segmentor"), for the anime-face segmentation ControlNets (bdsqlsz's ControlNet-LLLite
"segment_animeface").

The network is siyeong0's Anime-Face-Segmentation U-Net: the first 17 blocks of a MobileNetV2
(torchvision's layout, down to 1/32) as the encoder, and a decoder of nearest x2 upsampling,
3x3 conv, instance norm and LeakyReLU 0.1 at each scale, joined to the encoder's skip. A softmax
over 7 classes comes last. Each pixel takes its most likely class's colour (A1111's palette,
which comfyui_controlnet_aux copies).

Input: RGB / 255 (no mean or std). A1111 resizes the image to a 512-pixel short side. The detect
resolution does that here (512 by default; the network was trained on 512 x 512 crops). The map
comes back to the image's size with nearest-neighbour sampling, as every segmentation map here.
A1111's decoder resizes each upsampled map to its skip's size (bilinear, align_corners=True). At
sizes that are multiples of 32 that does nothing, and comfyui_controlnet_aux leaves it out; here it
is kept, so other sizes run too.

Background removal (comfyui_controlnet_aux's "remove_background_using_abg", on by default there; not
in A1111): SkyTNT's anime-segmentation ISNet (annotators/isnet.py, `isnetis.ckpt`) first gives the
character's mask at the detect size, the background is blended to white by it (truncated to uint8),
and the U-Net segments that. The mask comes back too, bilinearly at the image's size (that pack
returns it at the detect size, as bytes); without background removal it is all ones.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution, to_rgb_uint8
from .isnet import ISNet
from .networks_common import image_batch, read_weights_at, to_numpy
from .weights import find_weights, load_state_dict

# A1111 annotator/anime_face_segment load_model and comfyui_controlnet_aux AnimeFaceSegmentor:
# huggingface.co/bdsqlsz/qinglong_controlnet-lllite, folder Annotators (weights.py: owner/name/folder).
ANIME_FACE_WEIGHTS = "UNet.pth"
ANIME_FACE_REPO = "bdsqlsz/qinglong_controlnet-lllite/Annotators"
# SkyTNT's anime-segmentation ISNet (huggingface.co/skytnt/anime-seg), which comfyui_controlnet_aux
# fetches for its background removal; its weights are the module's `net.*`.
ISNET_WEIGHTS = "isnetis.ckpt"
ISNET_PREFIX = "net."
WEIGHTS_REPOS = {ANIME_FACE_WEIGHTS: ANIME_FACE_REPO, ISNET_WEIGHTS: "skytnt/anime-seg"}  # where files are looked for

# The classes in the network's output order, each with its colour (RGB, A1111's PALETTE).
CLASS_COLOURS = (
    ("background", (255, 255, 0)),
    ("hair", (0, 0, 255)),
    ("eye", (255, 0, 0)),
    ("mouth", (255, 255, 255)),
    ("face", (0, 255, 0)),
    ("skin", (0, 255, 255)),
    ("clothes", (255, 0, 255)),
)
PALETTE = np.array([colour for _, colour in CLASS_COLOURS], dtype=np.uint8)

STEM_CHANNELS = 32
LEAKY_SLOPE = 0.1
INSTANCE_NORM_EPS = 1e-5


class InvertedResidualSetting(NamedTuple):
    """One MobileNetV2 stage (Sandler et al. 2018, Table 2): expansion t, channels c, repeats n,
    stride s of its first block."""
    expand_ratio: int
    channels: int
    repeats: int
    stride: int


# MobileNetV2's stages up to 160 channels (torchvision's features[1..16]); the U-Net stops there.
MOBILENET_V2_STAGES = (
    InvertedResidualSetting(1, 16, 1, 1),
    InvertedResidualSetting(6, 24, 2, 2),
    InvertedResidualSetting(6, 32, 3, 2),
    InvertedResidualSetting(6, 64, 4, 2),
    InvertedResidualSetting(6, 96, 3, 1),
    InvertedResidualSetting(6, 160, 3, 2),
)
# How many of torchvision's features[0..16] each encoder level takes, in order: [0, 1] (the stem and
# a block: 1/2, 16 channels), [2, 3] (1/4, 24), [4..6] (1/8, 32), [7..13] (1/16, 96), [14..16] (1/32, 160).
ENCODER_LEVEL_BLOCKS = (2, 2, 3, 7, 3)
ENCODER_LEVEL_CHANNELS = (16, 24, 32, 96, 160)


def conv_bn_relu6(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                  groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: bias-free conv, BatchNorm, ReLU6 (keys .0, .1)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2's block: 1x1 expansion (left out when t = 1), 3x3 depthwise, 1x1 linear
    projection with BatchNorm; + input when the shape is kept. Keys as torchvision's `conv.*`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        layers = [conv_bn_relu6(in_channels, hidden, 1)] if expand_ratio != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


def mobilenet_v2_blocks() -> list[nn.Module]:
    """torchvision's mobilenet_v2().features[0..16]: the stem and the blocks up to 160 channels."""
    blocks: list[nn.Module] = [conv_bn_relu6(3, STEM_CHANNELS, 3, stride=2)]
    in_channels = STEM_CHANNELS
    for stage in MOBILENET_V2_STAGES:
        for index in range(stage.repeats):
            blocks.append(InvertedResidual(in_channels, stage.channels, stage.stride if index == 0 else 1,
                                           stage.expand_ratio))
            in_channels = stage.channels
    return blocks


def decoder_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Nearest x2, 3x3 conv, instance norm (no weights), LeakyReLU 0.1; keys .1 (the conv)."""
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(in_channels, out_channels, 3, padding=1),
                         nn.InstanceNorm2d(out_channels, eps=INSTANCE_NORM_EPS), nn.LeakyReLU(LEAKY_SLOPE))


class AnimeFaceSegmentNetwork(nn.Module):
    """Input 1x3xHxW RGB in 0..1; output 1x7xHxW class probabilities (H and W even: the
    decoder's last x2 must give the input size back)."""

    def __init__(self):
        super().__init__()
        blocks, start = mobilenet_v2_blocks(), 0
        for level, count in enumerate(ENCODER_LEVEL_BLOCKS):
            setattr(self, f"en_block{level}", nn.Sequential(*blocks[start:start + count]))
            start += count
        # de_block<level> brings level <level> to the size and width of level <level - 1>, whose
        # skip it is joined to (so the next block reads twice that width).
        channels = ENCODER_LEVEL_CHANNELS
        self.de_block4 = decoder_block(channels[4], channels[3])
        for level in (3, 2, 1):
            setattr(self, f"de_block{level}", decoder_block(2 * channels[level], channels[level - 1]))
        self.de_block0 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                       nn.Conv2d(2 * channels[0], len(CLASS_COLOURS), 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = []
        for level in range(len(ENCODER_LEVEL_BLOCKS)):
            x = getattr(self, f"en_block{level}")(x)
            levels.append(x)
        x = levels[-1]
        for level in (4, 3, 2, 1):
            skip = levels[level - 1]
            x = F.interpolate(getattr(self, f"de_block{level}")(x), size=skip.shape[-2:], mode="bilinear",
                              align_corners=True)
            x = torch.cat([x, skip], dim=1)
        return torch.softmax(self.de_block0(x), dim=1)


class AnimeFaceSegmenter(nn.Module):
    """What `anime_face_segment` runs: the U-Net, and ISNet when the background is removed first."""

    def __init__(self, remove_background: bool = False):
        super().__init__()
        self.unet = AnimeFaceSegmentNetwork()
        self.isnet = ISNet() if remove_background else None


def isnet_weights(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ISNet's weights from an anime-segmentation file: the module's `net.*` (its training-only
    `gt_encoder.*` dropped), or a bare ISNet state dict, as its AnimeSegmentation.try_load reads both."""
    if not any(key.startswith(ISNET_PREFIX) for key in state_dict):
        return state_dict
    return {key[len(ISNET_PREFIX):]: value for key, value in state_dict.items() if key.startswith(ISNET_PREFIX)}


def load_anime_face_segment(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    remove_background: bool = False,
) -> AnimeFaceSegmenter:
    """The U-Net with `UNet.pth` (a DataParallel `module.` prefix, which A1111 strips, removed
    too) and, with `remove_background`, ISNet with `isnetis.ckpt`, from the annotators models
    folders; both loaded strictly, both files found before either is read."""
    unet_path = find_weights(ANIME_FACE_WEIGHTS, folders, WEIGHTS_REPOS[ANIME_FACE_WEIGHTS])
    isnet_path = find_weights(ISNET_WEIGHTS, folders, WEIGHTS_REPOS[ISNET_WEIGHTS]) if remove_background else None
    segmenter = AnimeFaceSegmenter(remove_background)
    segmenter.unet.load_state_dict(read_weights_at(unet_path), strict=True)
    if isnet_path is not None:
        segmenter.isnet.load_state_dict(isnet_weights(load_state_dict(isnet_path)), strict=True)
    return segmenter.to(device=device, dtype=dtype).eval()


def segment_classes(rgb: np.ndarray, network: AnimeFaceSegmentNetwork) -> np.ndarray:
    """HxW class indices (CLASS_COLOURS' order) of a uint8 RGB image at its own size; odd sides
    are padded by repeating the last row or column, and cropped back."""
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    with torch.no_grad():
        probabilities = network(image_batch(padded / 255.0, network))
    return to_numpy(probabilities[0]).argmax(axis=0)[:height, :width]


def character_mask(rgb: np.ndarray, isnet: ISNet) -> np.ndarray:
    """HxW float32 in 0..1: ISNet's sigmoid on RGB / 255, at the image's own size."""
    with torch.no_grad():
        logits = isnet(image_batch(rgb / 255.0, isnet))
    return to_numpy(torch.sigmoid(logits[0, 0]))


def whiten_background(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The character kept and the rest blended to white by the mask, truncated to uint8
    (anime_segmentation.py: mask * image + 255 * (1 - mask))."""
    alpha = mask[:, :, None]
    return (alpha * rgb + 255.0 * (1.0 - alpha)).astype(np.uint8)


def anime_face_segment_with_mask(
    image: np.ndarray,
    segmenter: AnimeFaceSegmenter,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> tuple[np.ndarray, np.ndarray]:
    """(segmentation map uint8 HxWx3 in PALETTE colours, character mask float32 HxW in 0..1), both
    at the image's size. With ISNet the background is whitened before the U-Net sees the image
    and the mask is ISNet's (bilinear back to the image's size); without it the mask is all ones."""
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    masks = []

    def detect(detect_rgb: np.ndarray) -> np.ndarray:
        if segmenter.isnet is not None:
            mask = character_mask(detect_rgb, segmenter.isnet)
            masks.append(mask)
            detect_rgb = whiten_background(detect_rgb, mask)
        return PALETTE[segment_classes(detect_rgb, segmenter.unet)]

    segmentation = run_at_resolution(rgb, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
    if not masks:
        return segmentation, np.ones((height, width), np.float32)
    mask = masks[0]
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    return segmentation, mask


def anime_face_segment(
    image: np.ndarray,
    segmenter: AnimeFaceSegmenter,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Anime face segmentation map (uint8 HxWx3, PALETTE colours) at the image's size."""
    return anime_face_segment_with_mask(image, segmenter, resolution)[0]
