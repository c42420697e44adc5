"""Line art, realistic and coarse (v1.1 "lineart_realistic" / "lineart_coarse").

The network is the generator of "Learning to generate line drawings that convey geometry and
semantics" (Chan, Durand & Isola, CVPR 2022; informative-drawings), a ResNet-style image
translator: 7x7 conv, two stride-2 convs down, three residual blocks, two transposed convs up,
7x7 conv and a sigmoid. It draws dark lines on white in 0..1 from RGB in 0..1.

ControlNet's line-art models were trained on the inverse (white lines on black), so the map is
inverted, as v1.1 does (`1 - x / 255` on the hint) and controlnet-aux / A1111 (`255 - x`).
`sk_model.pth` is the detailed ("realistic") drawing style, `sk_model2.pth` the coarse one.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import (InstanceNorm2d, SingleChannelConv2d, image_batch, load_network,
                              pad_to_multiple, to_numpy)

# https://huggingface.co/lllyasviel/Annotators/blob/main/sk_model.pth (v1.1 annotator/lineart)
LINEART_WEIGHTS = "sk_model.pth"
# https://huggingface.co/lllyasviel/Annotators/blob/main/sk_model2.pth (the coarse style)
LINEART_COARSE_WEIGHTS = "sk_model2.pth"

# v1.1 annotator/lineart: Generator(input_nc=3, output_nc=1, n_residual_blocks=3).
BASE_CHANNELS = 64
RESIDUAL_BLOCKS = 3
EDGE_KERNEL = 7     # the first and last convs (reflection-padded by 3)
# Two stride-2 convs down and two x2 transposed convs up: sides must be multiples of 4 to
# come back at the same size.
SIZE_MULTIPLE = 4
# The residual blocks run at 1/4 size, where their reflection padding and instance norm need at
# least 2 pixels a side: smaller images (resolution=None only) are padded up to this.
MIN_SIDE = 2 * SIZE_MULTIPLE


class ResidualBlock(nn.Module):
    """x + (reflect-pad, 3x3 conv, instance norm, ReLU, reflect-pad, 3x3 conv, instance norm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), InstanceNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartNetwork(nn.Module):
    """Input 1x3xHxW RGB in 0..1 (H, W multiples of 4); output 1x1xHxW dark-on-light lines."""

    def __init__(self):
        super().__init__()
        c = BASE_CHANNELS
        # The Sequential indices are part of the published key names (model0.1.weight, ...).
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(EDGE_KERNEL // 2), nn.Conv2d(3, c, EDGE_KERNEL),
            InstanceNorm2d(c), nn.ReLU(inplace=True))
        self.model1 = nn.Sequential(  # down: 64 -> 128 -> 256 channels, /4 resolution
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), InstanceNorm2d(2 * c),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1), InstanceNorm2d(4 * c),
            nn.ReLU(inplace=True))
        self.model2 = nn.Sequential(*[ResidualBlock(4 * c) for _ in range(RESIDUAL_BLOCKS)])
        self.model3 = nn.Sequential(  # up: 256 -> 128 -> 64 channels, x4 resolution
            nn.ConvTranspose2d(4 * c, 2 * c, 3, stride=2, padding=1, output_padding=1),
            InstanceNorm2d(2 * c), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * c, c, 3, stride=2, padding=1, output_padding=1),
            InstanceNorm2d(c), nn.ReLU(inplace=True))
        self.model4 = nn.Sequential(
            nn.ReflectionPad2d(EDGE_KERNEL // 2), SingleChannelConv2d(c, EDGE_KERNEL), nn.Sigmoid())

    def forward(self, rgb_01: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb_01)))))


def load_lineart(
    folders: Sequence[str],
    coarse: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> LineartNetwork:
    """LineartNetwork with `sk_model.pth` (realistic) or, when `coarse`, `sk_model2.pth`."""
    file_name = LINEART_COARSE_WEIGHTS if coarse else LINEART_WEIGHTS
    return load_network(LineartNetwork(), file_name, folders, device, dtype)


def lineart(
    image: np.ndarray,
    network: LineartNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Line-art map (uint8 HxWx3, white lines on black) at the image's size.

    Realistic or coarse is chosen by the network passed in: `load_lineart(folders, coarse=True)`.
    """

    def detect(rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        rgb_01 = pad_to_multiple(rgb, SIZE_MULTIPLE, min_side=MIN_SIDE).astype(np.float32) / 255.0
        with torch.no_grad():
            drawing = to_numpy(network(image_batch(rgb_01, network, channels_last=True))
                               )[0, 0, :height, :width]
        # v1.1: x255, clipped, truncated (astype): dark lines on white.
        return (drawing * 255.0).clip(0, 255).astype(np.uint8)

    drawing = run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_LINEAR)
    # Inverted after the resize back, as v1.1 inverts the hint (1 - x / 255): inverting before
    # would round the resize's exact halves the other way.
    return 255 - drawing
