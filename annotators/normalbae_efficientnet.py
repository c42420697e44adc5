"""EfficientNet-B5 (the TensorFlow-ported "tf_efficientnet_b5_ap" weights layout), as the
NormalBAE and DSINE encoders use it: plain torch, no geffnet or timm at run time.

EfficientNet (Tan & Le, ICML 2019) is a stem conv, seven stages of mobile inverted-bottleneck
blocks with squeeze-and-excitation, and a 1x1 head conv. B5 is the B0 layout widened by 1.6 and
deepened by 2.2 (repeats rounded up, channels rounded to multiples of 8); `_STAGES` lists the
result. The "tf_" variants were trained in TensorFlow, so they need its "SAME" padding (for a
stride-2 conv: pad so the output is ceil(input / 2), the extra pixel going to the bottom/right)
and its BatchNorm epsilon of 1e-3.

Module names follow geffnet's `GenEfficientNet` so the published NormalBAE checkpoint loads
strictly: `conv_stem`, `bn1`, `blocks.<stage>.<block>.{conv_pw, bn1, conv_dw, bn2, se.conv_reduce,
se.conv_expand, conv_pwl, bn3}`, `conv_head`, `bn2`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

# TensorFlow's BatchNorm epsilon (geffnet BN_EPS_TF_DEFAULT), used by every tf_ EfficientNet.
TF_BATCH_NORM_EPS = 1e-3
# Squeeze-and-excitation squeezes to a quarter of the block's *input* channels ("se0.25").
SE_RATIO = 0.25
# Channels of the stem conv and of the head conv (B0's 32 and 1280, times 1.6).
STEM_CHANNELS = 48
HEAD_CHANNELS = 2048


class Stage(NamedTuple):
    """One stage of blocks; only its first block strides or changes the channel count."""
    depthwise_separable: bool  # B0's first stage: no expansion conv (expand ratio 1)
    repeats: int
    kernel_size: int
    stride: int
    expand_ratio: int
    out_channels: int


# EfficientNet-B0 (ds_r1_k3_s1_e1_c16, ir_r2_k3_s2_e6_c24, ir_r2_k5_s2_e6_c40, ir_r3_k3_s2_e6_c80,
# ir_r3_k5_s1_e6_c112, ir_r4_k5_s2_e6_c192, ir_r1_k3_s1_e6_c320) scaled to B5:
# repeats = ceil(r * 2.2), channels = c * 1.6 rounded to a multiple of 8.
_STAGES = (
    Stage(True, 3, 3, 1, 1, 24),
    Stage(False, 5, 3, 2, 6, 40),
    Stage(False, 5, 5, 2, 6, 64),
    Stage(False, 7, 3, 2, 6, 128),
    Stage(False, 7, 5, 1, 6, 176),
    Stage(False, 9, 5, 2, 6, 304),
    Stage(False, 3, 3, 1, 6, 512),
)
STAGE_CHANNELS = tuple(stage.out_channels for stage in _STAGES)


def tf_same_padding(size: int, kernel_size: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of one side so a conv gives ceil(size / stride) outputs, as
    TensorFlow's "SAME": the total is split with the odd pixel after."""
    out_size = -(-size // stride)
    total = max((out_size - 1) * stride + kernel_size - size, 0)
    return total // 2, total - total // 2


class TFSameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding computed from the input size at each call (a
    strided conv's padding depends on whether the size is even)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
        left, right = tf_same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
        return super().forward(F.pad(x, (left, right, top, bottom)))


def tf_conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
            groups: int = 1) -> nn.Conv2d:
    """A bias-free conv with "SAME" padding. At stride 1 with an odd kernel that is the usual
    symmetric kernel_size // 2, so a plain Conv2d does it without a per-call pad."""
    if stride == 1 and kernel_size % 2 == 1:
        return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                         groups=groups, bias=False)
    return TFSameConv2d(in_channels, out_channels, kernel_size, stride=stride, groups=groups,
                        bias=False)


def tf_batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=TF_BATCH_NORM_EPS)


class SqueezeExcite(nn.Module):
    """Channel gates from the global average: reduce (1x1) -> SiLU -> expand (1x1) -> sigmoid."""

    def __init__(self, channels: int, reduced_channels: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced_channels, 1)
        self.conv_expand = nn.Conv2d(reduced_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(F.silu(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class DepthwiseSeparableBlock(nn.Module):
    """Depthwise conv -> BN -> SiLU -> SE -> 1x1 conv -> BN (no activation), + input when the
    shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.has_residual = stride == 1 and in_channels == out_channels
        self.conv_dw = tf_conv(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.bn1 = tf_batch_norm(in_channels)
        self.se = SqueezeExcite(in_channels, int(in_channels * SE_RATIO))
        self.conv_pw = tf_conv(in_channels, out_channels, 1)
        self.bn2 = tf_batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(F.silu(self.bn1(self.conv_dw(x))))
        y = self.bn2(self.conv_pw(y))
        return y + x if self.has_residual else y


class InvertedResidualBlock(nn.Module):
    """1x1 expansion -> BN -> SiLU -> depthwise conv -> BN -> SiLU -> SE -> 1x1 projection -> BN,
    + input when the shape is kept (MobileNetV2's inverted bottleneck)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 expand_ratio: int):
        super().__init__()
        mid_channels = in_channels * expand_ratio  # already a multiple of 8 for every B5 stage
        self.has_residual = stride == 1 and in_channels == out_channels
        self.conv_pw = tf_conv(in_channels, mid_channels, 1)
        self.bn1 = tf_batch_norm(mid_channels)
        self.conv_dw = tf_conv(mid_channels, mid_channels, kernel_size, stride, groups=mid_channels)
        self.bn2 = tf_batch_norm(mid_channels)
        # geffnet sizes the squeeze from the block's input channels, not the expanded ones.
        self.se = SqueezeExcite(mid_channels, int(in_channels * SE_RATIO))
        self.conv_pwl = tf_conv(mid_channels, out_channels, 1)
        self.bn3 = tf_batch_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.silu(self.bn1(self.conv_pw(x)))
        y = self.se(F.silu(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_residual else y


def _stage(in_channels: int, stage: Stage) -> nn.Sequential:
    blocks = []
    for index in range(stage.repeats):
        block_in, stride = (in_channels, stage.stride) if index == 0 else (stage.out_channels, 1)
        if stage.depthwise_separable:
            blocks.append(DepthwiseSeparableBlock(block_in, stage.out_channels, stage.kernel_size,
                                                  stride))
        else:
            blocks.append(InvertedResidualBlock(block_in, stage.out_channels, stage.kernel_size,
                                                stride, stage.expand_ratio))
    return nn.Sequential(*blocks)


class EfficientNetB5(nn.Module):
    """The convolutional trunk of tf_efficientnet_b5_ap (no pooling or classifier).

    `forward` returns the output of every stage (1/2, 1/4, 1/8, 1/16, 1/16, 1/32, 1/32 of the
    input) and the head conv's output (1/32), which is what NormalBAE's decoder reads. The head
    BN `bn2` is kept for the checkpoint's keys but never applied: NormalBAE takes the head conv's
    output before it (its encoder collects every module's output and the decoder picks index 11,
    the head conv).
    """

    def __init__(self):
        super().__init__()
        self.conv_stem = tf_conv(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = tf_batch_norm(STEM_CHANNELS)
        stages, in_channels = [], STEM_CHANNELS
        for stage in _STAGES:
            stages.append(_stage(in_channels, stage))
            in_channels = stage.out_channels
        self.blocks = nn.Sequential(*stages)
        self.conv_head = tf_conv(in_channels, HEAD_CHANNELS, 1)
        self.bn2 = tf_batch_norm(HEAD_CHANNELS)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = F.silu(self.bn1(self.conv_stem(x)))
        stage_outputs = []
        for stage in self.blocks:
            x = stage(x)
            stage_outputs.append(x)
        return stage_outputs, self.conv_head(x)


class EfficientNetEncoder(nn.Module):
    """Holds the EfficientNet as `original_model`, the name NormalBAE's and DSINE's checkpoint
    keys use (both wrap geffnet's model the same way)."""

    def __init__(self):
        super().__init__()
        self.original_model = EfficientNetB5()

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return self.original_model(image)
