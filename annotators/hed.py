"""HED soft edges (the ControlNet "hed" / v1.1 "softedge" condition) and HED scribbles.

The network is lllyasviel's Apache-2.0 re-training of HED (Xie & Tu, "Holistically-Nested Edge
Detection", ICCV 2015) used by ControlNet v1.1 (annotator/hed): a VGG-like stack of five conv
blocks; after each block a 1x1 "projection" predicts an edge logit at that block's scale.
The five logits are resized to the input size, averaged and squashed by a sigmoid.

Unlike the original HED it takes **RGB in 0..255, not normalised**; it subtracts a learned
per-channel mean (`norm`) itself.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import (SAFE_STEPS, load_network, max_pool_2x2, probability_to_uint8,
                              side_output_probability, soft_edges_to_scribble)

# https://huggingface.co/lllyasviel/Annotators/blob/main/ControlNetHED.pth (v1.1 annotator/hed)
HED_WEIGHTS = "ControlNetHED.pth"

# (input channels, output channels, 3x3 convs) of block1..block5 (v1.1 ControlNetHED_Apache2).
_BLOCKS = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
# Four 2x2 max pools between the blocks: a shorter side would pool away to nothing, so smaller
# images (only reachable with resolution=None; detect sizes are at least 64) are padded to it.
MIN_SIDE = 2 ** (len(_BLOCKS) - 1)


class HEDBlock(nn.Module):
    """3x3 convs with ReLU, then a 1x1 projection of the features to one edge logit."""

    def __init__(self, in_channels: int, out_channels: int, conv_count: int):
        super().__init__()
        self.convs = nn.Sequential(*[
            nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1)
            for i in range(conv_count)])
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x), inplace=True)  # conv's fresh output: no copy
        return x, self.projection(x)


class HEDNetwork(nn.Module):
    """Input 1x3xHxW RGB in 0..255; output the five side logits, at scales 1, 1/2 .. 1/16."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # learned mean colour
        for index, (in_channels, out_channels, conv_count) in enumerate(_BLOCKS, start=1):
            setattr(self, f"block{index}", HEDBlock(in_channels, out_channels, conv_count))

    def forward(self, rgb_255: torch.Tensor) -> list[torch.Tensor]:
        x = rgb_255 - self.norm
        side_logits = []
        for index in range(1, len(_BLOCKS) + 1):
            if index > 1:
                x = max_pool_2x2(x)  # every block after the first halves
            x, logit = getattr(self, f"block{index}")(x)
            side_logits.append(logit)
        return side_logits


def load_hed(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> HEDNetwork:
    """HEDNetwork with the published `ControlNetHED.pth` from the annotators models folders."""
    return load_network(HEDNetwork(), HED_WEIGHTS, folders, device, dtype)


def hed_probability(rgb: np.ndarray, network: HEDNetwork) -> np.ndarray:
    """HxW float64 edge probability of a uint8 RGB image, at its own size (no resizing): the
    sigmoid of the mean of the five side logits, each brought to full size bilinearly (v1.1).
    Sides below MIN_SIDE are padded for the network and cropped back."""
    return side_output_probability(rgb, network, min_side=MIN_SIDE)


def hed(
    image: np.ndarray,
    network: HEDNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    safe: bool = False,
    scribble: bool = False,
) -> np.ndarray:
    """HED soft-edge map (uint8 HxWx3, white edges on black) at the image's size.

    `safe=True` quantises the edge strength to three levels (v1.1 "softedge_hedsafe").
    `scribble=True` turns the edges into binary strokes (v1.1 "scribble_hed"), at the detect
    resolution, before the map is brought back to the image's size.
    """

    def detect(rgb: np.ndarray) -> np.ndarray:
        edges = probability_to_uint8(hed_probability(rgb, network), SAFE_STEPS if safe else 0)
        return soft_edges_to_scribble(edges) if scribble else edges

    # Nearest keeps scribbles binary; soft edges are resampled linearly as v1.1 does.
    restore = cv2.INTER_NEAREST if scribble else cv2.INTER_LINEAR
    return run_at_resolution(image, resolution, detect, restore_interpolation=restore)
