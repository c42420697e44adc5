"""The DPT decoder (Ranftl et al., "Vision Transformers for Dense Prediction", 2021; util/blocks.py
and backbones/utils.py in isl-org/MiDaS and DepthAnything/Depth-Anything-V2): the fusion stage
that the MiDaS, Depth Anything and ZoeDepth networks share, and the readout/reassemble stages and
depth head that MiDaS's DPT-Hybrid and MiDaS v3.1's BEiT-L (ZoeDepth's core) share. Parameter
names are the published ones (resConfUnit1, out_conv, act_postprocess<i>.3, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FINEST_UPSAMPLE = 2  # FeatureFusionBlock without size=: scale_factor 2
CLASS_TOKENS = 1     # DPT `start_index = 1`: one class token before the patch tokens
HEAD_HIDDEN = 32     # DPTDepthModel head_features_2
HEAD_HIDDEN_END = 4  # output_conv[:4] ends in the ReLU after the 32-channel conv (ZoeDepth hooks it)


class ResidualConvUnit(nn.Module):
    """x + conv2(relu(conv1(relu(x)))), 3x3 convs with bias (no batch norm: use_bn=False)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """FeatureFusionBlock: add the refined skip map, refine, upsample bilinearly
    (align_corners=True) to `size` -- the next finer map's size -- or x2 for the finest, 1x1 conv.
    The coarsest block has no skip; its resConfUnit1 is unused but published."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None,
                size: torch.Size | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=FINEST_UPSAMPLE, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class ReadoutProjection(nn.Module):
    """Each patch token concatenated with the class token -> Linear -> GELU (DPT readout
    "project", backbones/utils.py ProjectReadout); the class token itself is dropped."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * embed_dim, embed_dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, CLASS_TOKENS:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, readout], dim=-1))


class Reassemble(nn.Module):
    """Tokens after one transformer block -> feature map (DPT `act_postprocess<i>`): readout
    projection, tokens to the (h/16, w/16) grid, 1x1 conv to `out_channels`, then `resize` (a
    transposed conv up, a stride-2 conv down, or nothing). Children keep the published indices
    0, 3, 4 (slots 1 and 2 were the parameter-free transpose and unflatten)."""

    def __init__(self, embed_dim: int, out_channels: int, resize: nn.Module | None = None):
        super().__init__()
        self.add_module("0", ReadoutProjection(embed_dim))
        self.add_module("3", nn.Conv2d(embed_dim, out_channels, 1))
        if resize is not None:
            self.add_module("4", resize)

    def forward(self, tokens: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
        x = self._modules["0"](tokens).transpose(1, 2)
        x = x.unflatten(2, (grid_height, grid_width))
        x = self._modules["3"](x)
        if "4" in self._modules:
            x = self._modules["4"](x)
        return x


@dataclass
class DecodedLevels:
    """What the MiDaS decoder computes on the way to its depth (ZoeDepth reads all of it)."""

    coarsest: torch.Tensor              # layer4_rn's output, 1/32 of the input
    fused: list[torch.Tensor]           # refinenet4, 3, 2, 1 outputs: 1/16, 1/8, 1/4, 1/2
    head_features: torch.Tensor         # the head's last hidden activation (32 channels, input size)
    depth: torch.Tensor                 # relative inverse depth, B x H x W


class DPTFusion(nn.Module):
    """The part of DPT's `scratch` before the depth head, the same in MiDaS and Depth Anything:
    per-level 3x3 convs to `features` channels (no bias), then fusion coarse to fine, each block
    upsampling to the next finer map's size, the finest x2. Subclasses add their own head as
    siblings of these layers, so the published names stay flat (`scratch.layer1_rn`,
    `scratch.output_conv`, ...)."""

    def __init__(self, in_channels: tuple[int, ...], features: int):
        super().__init__()
        for level, channels in enumerate(in_channels, start=1):
            setattr(self, f"layer{level}_rn", nn.Conv2d(channels, features, 3, padding=1, bias=False))
        for level in range(1, len(in_channels) + 1):
            setattr(self, f"refinenet{level}", FusionBlock(features))

    def fuse(self, levels: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Four maps, finest first -> (the coarsest at `features` channels, the outputs of
        refinenet4, 3, 2, 1: coarsest first, the last one the finest)."""
        maps = [getattr(self, f"layer{i}_rn")(x) for i, x in enumerate(levels, start=1)]
        path4 = self.refinenet4(maps[3], size=maps[2].shape[2:])
        path3 = self.refinenet3(path4, maps[2], size=maps[1].shape[2:])
        path2 = self.refinenet2(path3, maps[1], size=maps[0].shape[2:])
        path1 = self.refinenet1(path2, maps[0])
        return maps[3], [path4, path3, path2, path1]


class DPTDecoder(DPTFusion):
    """MiDaS's `scratch` (dpt_depth.py DPT + DPTDepthModel, non_negative=True): the fusion stage
    (DPTFusion) and the depth head: 3x3 conv, x2 bilinear, 3x3 conv to 32, ReLU, 1x1 conv, ReLU
    (relative inverse depth is never below zero). `output_conv` keeps the published Sequential
    indices 0, 2, 4."""

    def __init__(self, in_channels: tuple[int, ...], features: int):
        super().__init__(in_channels, features)
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, 3, padding=1),
            nn.Upsample(scale_factor=FINEST_UPSAMPLE, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, HEAD_HIDDEN, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN, 1, 1),
            nn.ReLU(),
        )

    def decode(self, levels: list[torch.Tensor]) -> DecodedLevels:
        coarsest, fused = self.fuse(levels)
        head_features = self.output_conv[:HEAD_HIDDEN_END](fused[-1])
        depth = self.output_conv[HEAD_HIDDEN_END:](head_features).squeeze(1)
        return DecodedLevels(coarsest, fused, head_features, depth)

    def forward(self, levels: list[torch.Tensor]) -> torch.Tensor:
        return self.decode(levels).depth
