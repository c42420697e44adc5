"""TEED soft edges (comfyui_controlnet_aux's "TEED Preprocessor") and the TEED network, which
AnyLine (annotators/anyline.py) also runs, with MistoLine's MTEED weights.

TEED, "Tiny and Efficient Edge Detector" (Soria, Li, Rouhani & Sappa, "Tiny and Efficient Model
for the Edge Detection Generalization", ICCV 2023 workshops; github.com/xavysp/TEED), is a
58,910-parameter descendant of LDC. Every activation is Smish (Wang, Ren & Wang, Electronics
2022): x * tanh(ln(1 + sigmoid(x))). The layers, by their published key names:

  block_1      3x3 conv stride 2 (3 -> 16), Smish, 3x3 conv (16 -> 16), Smish        at 1/2
  block_2      3x3 conv (16 -> 32), Smish, 3x3 conv (32 -> 32), no activation        at 1/2
  side_1       1x1 conv stride 2 (16 -> 32) of block_1                                at 1/4
  pre_dense_3  1x1 conv (32 -> 48) of block_2 max-pooled (3x3, stride 2, padding 1)   at 1/4
  dblock_3     one dense layer: 0.5 * (conv2(Smish(conv1(Smish(pooled + side_1)))) + pre_dense_3),
               conv1 3x3 padded by 2 (32 -> 48), conv2 3x3 unpadded (48 -> 48)
  up_block_k   per halving of its input: 1x1 conv, Smish, transposed conv x2 (16 channels, 1 at the
               last); block_1 and block_2 once, dblock_3 twice: three one-channel side logits
  block_cat    "double fusion" of the three: depthwise 3x3 convs DWconv1 (3 -> 24, groups 3) on
               Smish(sides), DWconv2 (24 -> 24) on Smish of that; the fused logit is
               Smish(sum over channels of both)

Input, as comfyui_controlnet_aux feeds it: **RGB in 0..255, not normalised** (the TEED authors'
own test code reads BGR and subtracts a mean colour; the peers run the files without it), H and W
multiples of 4 (two halvings that must come back to the same size). The detector averages the
four logits (the fused one included), applies a sigmoid and, by default, quantises to
`safe_steps` = 2 steps (v1.1's safe_step), as comfyui_controlnet_aux's TEDDetector.

Weights: `7_model.pth` (the name of the TEED authors' epoch-7 checkpoint on BIPED + BRIND) from
bdsqlsz/qinglong_controlnet-lllite, folder Annotators, which comfyui_controlnet_aux's TEED node
loads; `MTEED.pth` (MistoLine's retrained TEED) from TheMistoAI/MistoLine, folder Anyline, which
its AnyLine node loads. The peer loads both strictly into its TED class as plain state dicts, so
they have this network's keys (no published file has been read here).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import load_network, probability_to_uint8, side_output_probability

# comfyui_controlnet_aux teed/__init__.py TEDDetector.from_pretrained(BDS_MODEL_NAME, "7_model.pth",
# subfolder="Annotators") and node_wrappers/anyline.py TEDDetector.from_pretrained("TheMistoAI/MistoLine",
# "MTEED.pth", subfolder="Anyline"): not lllyasviel/Annotators files (weights.py: owner/name/folder).
TEED_WEIGHTS = "7_model.pth"
MTEED_WEIGHTS = "MTEED.pth"
WEIGHTS_REPOS = {
    TEED_WEIGHTS: "bdsqlsz/qinglong_controlnet-lllite/Annotators",
    MTEED_WEIGHTS: "TheMistoAI/MistoLine/Anyline",
}

# TEDDetector.__call__(safe_steps=2); the TEED node's input: INT, default 2, max 10 (0 = off).
DEFAULT_SAFE_STEPS = 2
MAX_SAFE_STEPS = 10

# Channels (ted.py TED.__init__).
BLOCK_1_CHANNELS = 16
BLOCK_2_CHANNELS = 32
DENSE_CHANNELS = 48
UP_CHANNELS = 16            # UpConvBlock.constant_features: between two upsamplings
FUSION_CHANNELS_PER_SIDE = 8  # DoubleFusion: DWconv1 makes 8 channels of each side logit
SIDE_COUNT = 3
# dblock_3's conv1 pads by 2 and its conv2 not at all: the pair keeps the size.
DENSE_PADDING = 2
# The two halvings (block_1's stride, the max pool) must come back to whole pixels.
SIZE_MULTIPLE = 4


def smish(x: torch.Tensor) -> torch.Tensor:
    """Smish(x) = x * tanh(ln(1 + sigmoid(x))), written as the trained network computes it
    (log(1 + s), not log1p(s): the same function, rounded as the weights were trained)."""
    return x * torch.tanh(torch.log(1 + torch.sigmoid(x)))


class Smish(nn.Module):
    """`smish` as a layer, for the Sequential whose indices are published key names."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smish(x)


class DoubleConvBlock(nn.Module):
    """3x3 conv (optionally stride 2), Smish, 3x3 conv, then Smish unless `activate_output` is off."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, activate_output: bool = True):
        super().__init__()
        self.activate_output = activate_output
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(smish(self.conv1(x)))
        return smish(x) if self.activate_output else x


class PointwiseConv(nn.Module):
    """A 1x1 convolution (optionally stride 2), no activation: the skip connections."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DenseLayer(nn.Module):
    """0.5 * (conv2(Smish(conv1(Smish(x)))) + skip): conv1 pads by 2 and conv2 by nothing, so the
    output has x's size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=DENSE_PADDING)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.conv2(smish(self.conv1(smish(x)))) + skip)


class DenseBlock(nn.Module):
    """TEED's dense block holds one layer (published as dblock_3.denselayer1)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.denselayer1 = DenseLayer(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.denselayer1(x, skip)


class UpsampleBlock(nn.Module):
    """`halvings` x (1x1 conv, Smish, transposed conv doubling the size): back to the input's
    size, UP_CHANNELS wide between steps and one channel (the side logit) at the end."""

    def __init__(self, in_channels: int, halvings: int):
        super().__init__()
        # Kernel 2^halvings with padding (kernel - 2) / 2 doubles exactly: out = 2 * in.
        kernel = 2 ** halvings
        layers: list[nn.Module] = []
        for step in range(halvings):
            out_channels = 1 if step == halvings - 1 else UP_CHANNELS
            layers += [nn.Conv2d(in_channels, out_channels, 1), Smish(),
                       nn.ConvTranspose2d(out_channels, out_channels, kernel, stride=2, padding=(kernel - 2) // 2)]
            in_channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class DoubleFusion(nn.Module):
    """The three side logits -> the fused logit, by two depthwise 3x3 convs (see the module
    docstring)."""

    def __init__(self):
        super().__init__()
        width = SIDE_COUNT * FUSION_CHANNELS_PER_SIDE
        self.DWconv1 = nn.Conv2d(SIDE_COUNT, width, 3, padding=1, groups=SIDE_COUNT)
        self.DWconv2 = nn.Conv2d(width, width, 3, padding=1, groups=width)

    def forward(self, sides: torch.Tensor) -> torch.Tensor:
        first = self.DWconv1(smish(sides))
        second = self.DWconv2(smish(first))
        return smish((second + first).sum(dim=1, keepdim=True))


class TEEDNetwork(nn.Module):
    """Input 1x3xHxW RGB in 0..255 (H, W multiples of 4); output the three side logits and the
    fused one (last), each 1x1xHxW."""

    def __init__(self):
        super().__init__()
        self.block_1 = DoubleConvBlock(3, BLOCK_1_CHANNELS, stride=2)
        self.block_2 = DoubleConvBlock(BLOCK_1_CHANNELS, BLOCK_2_CHANNELS, activate_output=False)
        self.dblock_3 = DenseBlock(BLOCK_2_CHANNELS, DENSE_CHANNELS)
        self.side_1 = PointwiseConv(BLOCK_1_CHANNELS, BLOCK_2_CHANNELS, stride=2)
        self.pre_dense_3 = PointwiseConv(BLOCK_2_CHANNELS, DENSE_CHANNELS)
        self.up_block_1 = UpsampleBlock(BLOCK_1_CHANNELS, 1)
        self.up_block_2 = UpsampleBlock(BLOCK_2_CHANNELS, 1)
        self.up_block_3 = UpsampleBlock(DENSE_CHANNELS, 2)
        self.block_cat = DoubleFusion()

    def forward(self, rgb_255: torch.Tensor) -> list[torch.Tensor]:
        block_1 = self.block_1(rgb_255)
        block_2 = self.block_2(block_1)
        pooled = F.max_pool2d(block_2, kernel_size=3, stride=2, padding=1)
        block_3 = self.dblock_3(pooled + self.side_1(block_1), self.pre_dense_3(pooled))
        sides = [self.up_block_1(block_1), self.up_block_2(block_2), self.up_block_3(block_3)]
        return sides + [self.block_cat(torch.cat(sides, dim=1))]


def load_teed(
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    mteed: bool = False,
) -> TEEDNetwork:
    """TEEDNetwork with `7_model.pth` or, when `mteed`, MistoLine's `MTEED.pth`, from the
    annotators models folders (directly or as comfyui_controlnet_aux's ckpts/<repo>/<folder>/<file>)."""
    file_name = MTEED_WEIGHTS if mteed else TEED_WEIGHTS
    return load_network(TEEDNetwork(), file_name, folders, device, dtype, repo=WEIGHTS_REPOS[file_name])


def teed_probability(rgb: np.ndarray, network: TEEDNetwork) -> np.ndarray:
    """HxW float64 edge probability of a uint8 RGB image, at its own size: the sigmoid of the
    mean of the four logits. Sides that are not multiples of 4 are padded by repeating the last
    row and column (comfyui_controlnet_aux pads with the edge too) and cropped back."""
    return side_output_probability(rgb, network, multiple=SIZE_MULTIPLE)


def teed(
    image: np.ndarray,
    network: TEEDNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    safe_steps: int = DEFAULT_SAFE_STEPS,
) -> np.ndarray:
    """TEED soft-edge map (uint8 HxWx3, white edges on black) at the image's size.

    `safe_steps` quantises the edge strength to safe_steps + 1 levels (2: {0, 0.5, 1}, v1.1's
    safe_step); 0 keeps every level. With MTEED weights this is AnyLine's edge layer.
    """
    if safe_steps < 0:
        raise ValueError(f"safe_steps must be 0 (not quantised) or more, got {safe_steps}")
    return run_at_resolution(
        image, resolution, lambda rgb: probability_to_uint8(teed_probability(rgb, network), safe_steps),
        restore_interpolation=cv2.INTER_LINEAR)
