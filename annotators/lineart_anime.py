"""Anime line art (v1.1 "lineart_anime").

The network is a pix2pix U-Net generator (Isola et al., "Image-to-Image Translation with
Conditional Adversarial Networks", CVPR 2017): eight stride-2 4x4 convs down to 1/256 of the
size, eight transposed convs back up, each level's input concatenated to its output (the skip
connections). Instance norm without learned scale; biases in every conv. It maps RGB in -1..1
to dark lines on white in -1..1 (tanh).

The network needs sides that are multiples of 256, so the image is resized (cubic) to the next
multiple, and the drawing resized back (cubic); then inverted to white lines on black, as
controlnet-aux and A1111 do.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import InstanceNorm2d, image_batch, load_network, to_numpy

# https://huggingface.co/lllyasviel/Annotators/blob/main/netG.pth (v1.1 annotator/lineart_anime)
LINEART_ANIME_WEIGHTS = "netG.pth"

# v1.1: UnetGenerator(3, 1, num_downs=8, ngf=64, InstanceNorm2d(affine=False), no dropout).
DOWNSAMPLINGS = 8
BASE_CHANNELS = 64
# Channels of each level from the outside in, as multiples of BASE_CHANNELS; the innermost
# levels stay at 8x (the pix2pix layout).
LEVEL_WIDTHS = (1, 2, 4) + (8,) * (DOWNSAMPLINGS - 3)
INPUT_CHANNELS = 3                   # RGB
OUTPUT_CHANNELS = 1                  # the drawing
SIZE_MULTIPLE = 2 ** DOWNSAMPLINGS   # 256: the innermost level is 1x1 at this size
LEAKY_SLOPE = 0.2                    # pix2pix encoder LeakyReLU
# -1..1 <-> 0..255 (v1.1: x / 127.5 - 1 in, y * 127.5 + 127.5 out).
HALF_RANGE = 127.5


def _norm(channels: int) -> InstanceNorm2d:
    return InstanceNorm2d(channels)  # = nn.InstanceNorm2d(affine=False), faster channels-last


class UnetLevel(nn.Module):
    """One U-Net level, held in `model` (an nn.Sequential whose indices are the published key
    names): down conv -> inner level -> up conv, and (except outermost) the input concatenated
    in front of the result."""

    def __init__(self, outer_channels: int, inner_channels: int, inner: "UnetLevel | None",
                 in_channels: int | None = None, outermost: bool = False):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer_channels, inner_channels, 4, stride=2, padding=1)
        if outermost:
            # The inner level returns its input and its output side by side: 2x channels.
            up = nn.ConvTranspose2d(2 * inner_channels, outer_channels, 4, stride=2, padding=1)
            layers = [down, inner, nn.ReLU(True), up, nn.Tanh()]
        elif inner is None:  # innermost: no norm on the 1x1 bottleneck
            up = nn.ConvTranspose2d(inner_channels, outer_channels, 4, stride=2, padding=1)
            layers = [nn.LeakyReLU(LEAKY_SLOPE, True), down,
                      nn.ReLU(True), up, _norm(outer_channels)]
        else:
            up = nn.ConvTranspose2d(2 * inner_channels, outer_channels, 4, stride=2, padding=1)
            layers = [nn.LeakyReLU(LEAKY_SLOPE, True), down, _norm(inner_channels),
                      inner, nn.ReLU(True), up, _norm(outer_channels)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        # The in-place LeakyReLU that opens `model` also rewrites x, so the skip carries the
        # activated input. pix2pix behaves so and the weights were trained with it: keep it.
        return torch.cat([x, self.model(x)], dim=1)


class AnimeLineartNetwork(nn.Module):
    """Input 1x3xHxW RGB in -1..1 (H, W multiples of 256); output 1x1xHxW lines in -1..1."""

    def __init__(self):
        super().__init__()
        depth_channels = [BASE_CHANNELS * width for width in LEVEL_WIDTHS]  # depths 1..8
        # Built from the innermost level out: the level at depth k maps depth k-1 to depth k.
        level = None
        for k in reversed(range(1, DOWNSAMPLINGS)):
            level = UnetLevel(depth_channels[k - 1], depth_channels[k], level)
        self.model = UnetLevel(OUTPUT_CHANNELS, depth_channels[0], level,
                               in_channels=INPUT_CHANNELS, outermost=True)

    def forward(self, rgb_11: torch.Tensor) -> torch.Tensor:
        return self.model(rgb_11)


def load_lineart_anime(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> AnimeLineartNetwork:
    """AnimeLineartNetwork with the published `netG.pth` from the annotators models folders."""
    return load_network(AnimeLineartNetwork(), LINEART_ANIME_WEIGHTS, folders, device, dtype)


def lineart_anime(
    image: np.ndarray,
    network: AnimeLineartNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Anime line-art map (uint8 HxWx3, white lines on black) at the image's size."""

    def detect(rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        net_height = SIZE_MULTIPLE * int(np.ceil(height / SIZE_MULTIPLE))
        net_width = SIZE_MULTIPLE * int(np.ceil(width / SIZE_MULTIPLE))
        resized = cv2.resize(rgb, (net_width, net_height), interpolation=cv2.INTER_CUBIC)
        with torch.no_grad():
            drawing = network(image_batch(resized.astype(np.float32) / HALF_RANGE - 1.0, network,
                                          channels_last=True))
        drawing_255 = to_numpy(drawing)[0, 0] * HALF_RANGE + HALF_RANGE
        back = cv2.resize(drawing_255, (width, height), interpolation=cv2.INTER_CUBIC)
        return back.clip(0, 255).astype(np.uint8)  # v1.1: clipped and truncated (astype)

    drawing = run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_LINEAR)
    return 255 - drawing  # inverted after the resize back, as in lineart.py
