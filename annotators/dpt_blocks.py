"""The DPT decoder's fusion blocks (Ranftl et al., "Vision Transformers for Dense Prediction",
2021; util/blocks.py in isl-org/MiDaS and DepthAnything/Depth-Anything-V2), shared by the MiDaS
and Depth Anything networks. Parameter names are the published ones (resConfUnit1, out_conv, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FINEST_UPSAMPLE = 2  # FeatureFusionBlock without size=: scale_factor 2


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
