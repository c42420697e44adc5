"""PiDiNet soft edges (v1.1 "softedge_pidinet") and PiDiNet scribbles.

PiDiNet (Su et al., "Pixel Difference Networks for Efficient Edge Detection", ICCV 2021) is a
small edge detector whose depthwise convolutions look at *differences* between pixels instead of
the pixels themselves, as the classic edge operators do. Three kinds of difference
("pixel difference convolutions", PDC) plus the vanilla conv are mixed in the "carv4" pattern:

  cd  central:  sum_i w_i (x_i - x_centre)                 (like a Laplacian)
  ad  angular:  sum_i w_i (x_i - x_next clockwise neighbour) (like a gradient along the ring)
  rd  radial:   sum_i w_i (x_outer_i - x_inner_i) on a 5x5 window (a gradient at two radii)
  cv  vanilla convolution

The published `table5_pidinet.pth` is the paper's Table 5 model: 60 base channels, CDCM
dilation modules (24 channels) and CSAM attention. Weights are stored as plain 3x3 kernels and
the difference is applied at run time. Input is **BGR** (the authors trained on OpenCV images)
in 0..1.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import (SAFE_STEPS, image_batch, load_network, max_pool_2x2, pad_to_multiple,
                              probability_to_uint8, soft_edges_to_scribble, to_numpy)

# https://huggingface.co/lllyasviel/Annotators/blob/main/table5_pidinet.pth (v1.1
# annotator/pidinet). Stored as {'state_dict': {'module.<key>': ...}}: both layers are unwrapped.
PIDINET_WEIGHTS = "table5_pidinet.pth"

# pidinet.py `pidinet()`: PiDiNet(60, config_model('carv4'), dil=24, sa=True).
BASE_CHANNELS = 60
DILATION_CHANNELS = 24
# 'carv4': init_block + 15 blocks, the pattern cd, ad, rd, cv repeated four times.
CARV4 = ("cd", "ad", "rd", "cv") * 4
# Stage layout: blocks per stage and each stage's channels as a multiple of BASE_CHANNELS.
STAGE_BLOCKS = (3, 4, 4, 4)          # block1_1..1_3, block2_1..2_4, block3_*, block4_*
STAGE_WIDTH = (1, 2, 4, 4)
CDCM_DILATIONS = (5, 7, 9, 11)       # CDCM conv2_1..conv2_4
CSAM_CHANNELS = 4                    # CSAM's hidden channels
# Stages 2..4 each start with a 2x2 max pool: a shorter side would pool away to nothing, so
# smaller images (only reachable with resolution=None; detect sizes are >= 64) are padded to it.
MIN_SIDE = 2 ** (len(STAGE_BLOCKS) - 1)

# Angular difference: each 3x3 tap (row-major index) minus its clockwise neighbour's tap.
# pidinet.py createConvFunc('ad'): weights - weights[:, :, [3, 0, 1, 6, 4, 2, 7, 8, 5]].
_CLOCKWISE_NEIGHBOUR = (3, 0, 1, 6, 4, 2, 7, 8, 5)
# Radial difference: the stored 3x3 taps 1..8 (row-major; tap 0 is unused by the published
# parameterisation) go to the outer ring of a 5x5 kernel with +w and the inner ring with -w.
_RADIAL_SIZE = 5
_RADIAL_OUTER = (0, 2, 4, 10, 14, 20, 22, 24)
_RADIAL_INNER = (6, 7, 8, 11, 13, 16, 17, 18)


class PixelDifferenceConv(nn.Module):
    """A 3x3 convolution (bias-free) that applies one PDC kind to its stored kernel."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        if kind not in ("cv", "cd", "ad", "rd"):
            raise ValueError(f"unknown pixel difference kind '{kind}'")
        self.kind = kind
        self.groups = groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, groups = self.weight, self.groups
        if self.kind == "cv":
            return F.conv2d(x, weight, padding=1, groups=groups)
        if self.kind == "cd":
            # sum w_i x_i - x_centre * sum w_i
            centre = F.conv2d(x, weight.sum(dim=(2, 3), keepdim=True), groups=groups)
            return F.conv2d(x, weight, padding=1, groups=groups) - centre
        flat = weight.flatten(2)
        if self.kind == "ad":
            angular = (flat - flat[:, :, list(_CLOCKWISE_NEIGHBOUR)]).view_as(weight)
            return F.conv2d(x, angular, padding=1, groups=groups)
        out_channels, in_channels = flat.shape[:2]
        radial = flat.new_zeros(out_channels, in_channels, _RADIAL_SIZE * _RADIAL_SIZE)
        radial[:, :, list(_RADIAL_OUTER)] = flat[:, :, 1:]
        radial[:, :, list(_RADIAL_INNER)] = -flat[:, :, 1:]
        radial = radial.view(out_channels, in_channels, _RADIAL_SIZE, _RADIAL_SIZE)
        return F.conv2d(x, radial, padding=_RADIAL_SIZE // 2, groups=groups)


class PDCBlock(nn.Module):
    """Depthwise PDC -> ReLU -> 1x1 conv, plus the input (residual). A stride-2 block first
    max-pools and projects the shortcut to the new width with a 1x1 conv."""

    def __init__(self, kind: str, in_channels: int, out_channels: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        if downsample:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1 = PixelDifferenceConv(kind, in_channels, in_channels, groups=in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = max_pool_2x2(x)
        y = self.conv2(F.relu(self.conv1(x), inplace=True))  # conv1's fresh output: no copy
        return y + (self.shortcut(x) if self.downsample else x)


class CDCM(nn.Module):
    """Compact dilation convolution module: four dilated 3x3 views of the stage, summed."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        for index, dilation in enumerate(CDCM_DILATIONS, start=1):
            setattr(self, f"conv2_{index}", nn.Conv2d(out_channels, out_channels, 3,
                                                      padding=dilation, dilation=dilation,
                                                      bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return sum(getattr(self, f"conv2_{i}")(x) for i in range(1, len(CDCM_DILATIONS) + 1))


class CSAM(nn.Module):
    """Compact spatial attention: a per-pixel gate in 0..1 that scales the features."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, CSAM_CHANNELS, 1)
        self.conv2 = nn.Conv2d(CSAM_CHANNELS, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class MapReduce(nn.Module):
    """1x1 conv from a stage's features to one edge logit."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNetNetwork(nn.Module):
    """Input 1x3xHxW BGR in 0..1; output the four stage edge probabilities and the fused one
    (last), all at the input size."""

    def __init__(self):
        super().__init__()
        self.init_block = PixelDifferenceConv(CARV4[0], 3, BASE_CHANNELS)
        kinds = iter(CARV4[1:])
        in_channels = BASE_CHANNELS
        for stage, (block_count, width) in enumerate(zip(STAGE_BLOCKS, STAGE_WIDTH), start=1):
            out_channels = BASE_CHANNELS * width
            for block in range(1, block_count + 1):
                # Every stage after the first starts by halving the resolution.
                downsample = stage > 1 and block == 1
                setattr(self, f"block{stage}_{block}",
                        PDCBlock(next(kinds), in_channels, out_channels, downsample))
                in_channels = out_channels
        stage_channels = [BASE_CHANNELS * width for width in STAGE_WIDTH]
        # (Registered in the published file's key order.)
        self.conv_reduces = nn.ModuleList(MapReduce(DILATION_CHANNELS) for _ in stage_channels)
        self.attentions = nn.ModuleList(CSAM(DILATION_CHANNELS) for _ in stage_channels)
        self.dilations = nn.ModuleList(CDCM(c, DILATION_CHANNELS) for c in stage_channels)
        self.classifier = nn.Conv2d(len(stage_channels), 1, 1)  # fuses the four stage maps

    def forward(self, bgr_01: torch.Tensor) -> list[torch.Tensor]:
        height, width = bgr_01.shape[2:]
        x = self.init_block(bgr_01)
        stage_logits = []
        for stage, block_count in enumerate(STAGE_BLOCKS, start=1):
            for block in range(1, block_count + 1):
                x = getattr(self, f"block{stage}_{block}")(x)
            features = self.attentions[stage - 1](self.dilations[stage - 1](x))
            logit = self.conv_reduces[stage - 1](features)
            stage_logits.append(F.interpolate(logit, (height, width), mode="bilinear",
                                              align_corners=False))
        fused = self.classifier(torch.cat(stage_logits, dim=1))
        return [torch.sigmoid(logit) for logit in stage_logits + [fused]]


def load_pidinet(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> PiDiNetNetwork:
    """PiDiNetNetwork with the published `table5_pidinet.pth` from the annotators models folders."""
    return load_network(PiDiNetNetwork(), PIDINET_WEIGHTS, folders, device, dtype)


def pidinet_probability(rgb: np.ndarray, network: PiDiNetNetwork) -> np.ndarray:
    """HxW fused edge probability of a uint8 RGB image, at its own size."""
    height, width = rgb.shape[:2]
    padded = pad_to_multiple(rgb, 1, min_side=MIN_SIDE)  # a no-op unless a side is below it
    bgr_01 = padded[:, :, ::-1].astype(np.float32) / 255.0
    with torch.no_grad():
        fused = network(image_batch(bgr_01, network))[-1]
    return to_numpy(fused)[0, 0, :height, :width]


def pidinet(
    image: np.ndarray,
    network: PiDiNetNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    safe: bool = False,
    scribble: bool = False,
) -> np.ndarray:
    """PiDiNet soft-edge map (uint8 HxWx3, white edges on black) at the image's size.

    `safe=True` quantises the edge strength to three levels (v1.1 "softedge_pidisafe").
    `scribble=True` turns the edges into binary strokes (v1.1 "scribble_pidinet"), at the
    detect resolution, before the map is brought back to the image's size.
    """

    def detect(rgb: np.ndarray) -> np.ndarray:
        edges = probability_to_uint8(pidinet_probability(rgb, network), SAFE_STEPS if safe else 0)
        return soft_edges_to_scribble(edges) if scribble else edges

    restore = cv2.INTER_NEAREST if scribble else cv2.INTER_LINEAR
    return run_at_resolution(image, resolution, detect, restore_interpolation=restore)
