"""The convolution blocks OpenMMLab's CSP backbones are built from, with their checkpoint key names.

DWPose runs two such networks: YOLOX-L (mmdet's CSPDarknet, YOLOX's detector) finds the people,
RTMPose-l (CSPNeXt, RTMDet's backbone) places their keypoints. Both stack the same pieces, written
once here:

- `ConvBnAct` is mmcv's ConvModule: convolution without bias, BatchNorm, SiLU (mmdet calls it
  Swish). Keys `conv.weight`, `bn.*`.
- `DepthwiseSeparableConv`: a per-channel k×k ConvBnAct, then a 1×1 one (MobileNet).
- `CSPLayer` (Cross Stage Partial): split into a main path through a stack of bottleneck blocks
  and a 1×1 shortcut path, concatenate, optionally reweight the channels, fuse with a 1×1 conv.
  Its blocks are `DarknetBottleneck` (1×1 then 3×3, YOLOX) or `CSPNeXtBlock` (3×3 then a
  depthwise-separable 5×5, RTMPose).
- `SPPBottleneck`: spatial pyramid pooling (max pools of 5, 9, 13 concatenated), YOLOv3-SPP.

Sources: mmpose 1.3.2 `models/utils/csp_layer.py` and `models/backbones/csp_darknet.py`, which
equal mmdet 3.3.0's `models/layers/csp_layer.py` and `models/backbones/csp_darknet.py`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

# BatchNorm epsilons. mmcv's default (torch's) is what dw-ll_ucoco_384's config sets
# (norm_cfg=dict(type='SyncBN')); mmdet's YOLOX and CSP layers default to momentum 0.03, eps 1e-3.
TORCH_BN_EPS = 1e-5
YOLOX_BN_EPS = 1e-3

# SPPBottleneck's pooling windows (YOLOv3-SPP), the default of both backbones.
SPP_KERNEL_SIZES = (5, 9, 13)


class ConvBnAct(nn.Module):
    """mmcv ConvModule with norm and activation: conv (no bias) -> BatchNorm -> SiLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, eps: float = TORCH_BN_EPS) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.silu(self.bn(self.conv(x)))


class DepthwiseSeparableConv(nn.Module):
    """A k×k ConvBnAct on each channel alone, then a 1×1 ConvBnAct across channels."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 eps: float = TORCH_BN_EPS) -> None:
        super().__init__()
        self.depthwise_conv = ConvBnAct(in_channels, in_channels, kernel_size, stride,
                                        groups=in_channels, eps=eps)
        self.pointwise_conv = ConvBnAct(in_channels, out_channels, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class DarknetBottleneck(nn.Module):
    """1×1 then 3×3 ConvBnAct, plus the input (YOLOX's CSP block; expansion 1 inside CSPLayer)."""

    def __init__(self, channels: int, add_identity: bool, eps: float) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(channels, channels, 1, eps=eps)
        self.conv2 = ConvBnAct(channels, channels, 3, eps=eps)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPNeXtBlock(nn.Module):
    """3×3 ConvBnAct then a depthwise-separable 5×5, plus the input (RTMDet's CSP block)."""

    large_kernel = 5

    def __init__(self, channels: int, add_identity: bool, eps: float) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(channels, channels, 3, eps=eps)
        self.conv2 = DepthwiseSeparableConv(channels, channels, self.large_kernel, eps=eps)
        self.add_identity = add_identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class ChannelAttention(nn.Module):
    """Each channel times hard-sigmoid(1×1 conv of the channel means) (squeeze-and-excitation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = nn.functional.hardsigmoid(self.fc(x.mean(dim=(2, 3), keepdim=True)))
        return x * weights


class CSPLayer(nn.Module):
    """Cross Stage Partial layer: final_conv([blocks(main_conv(x)), short_conv(x)])."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, add_identity: bool,
                 cspnext_blocks: bool, channel_attention: bool, eps: float,
                 expand_ratio: float = 0.5) -> None:
        super().__init__()
        mid_channels = int(out_channels * expand_ratio)
        block = CSPNeXtBlock if cspnext_blocks else DarknetBottleneck
        self.main_conv = ConvBnAct(in_channels, mid_channels, 1, eps=eps)
        self.short_conv = ConvBnAct(in_channels, mid_channels, 1, eps=eps)
        self.final_conv = ConvBnAct(2 * mid_channels, out_channels, 1, eps=eps)
        self.blocks = nn.Sequential(*[block(mid_channels, add_identity, eps) for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid_channels) if channel_attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat((self.blocks(self.main_conv(x)), self.short_conv(x)), dim=1)
        if self.attention is not None:
            joined = self.attention(joined)
        return self.final_conv(joined)


class SPPBottleneck(nn.Module):
    """Halve the channels, concatenate stride-1 max pools of several sizes, fuse with a 1×1 conv."""

    def __init__(self, in_channels: int, out_channels: int, eps: float,
                 kernel_sizes: Sequence[int] = SPP_KERNEL_SIZES) -> None:
        super().__init__()
        mid_channels = in_channels // 2
        self.conv1 = ConvBnAct(in_channels, mid_channels, 1, eps=eps)
        self.poolings = nn.ModuleList(nn.MaxPool2d(size, stride=1, padding=size // 2) for size in kernel_sizes)
        self.conv2 = ConvBnAct(mid_channels * (len(kernel_sizes) + 1), out_channels, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.poolings], dim=1))
