"""ISNet (Qin et al., "Highly Accurate Dichotomous Image Segmentation", ECCV 2022), as SkyTNT's
anime-segmentation trains it (`isnetis.ckpt`): the character mask comfyui_controlnet_aux's Anime
Face Segmentor uses to whiten the background ("remove_background_using_abg").

ISNet is U^2-Net's layout. A stride-2 3x3 conv is followed by six stages of residual U-blocks
(RSU), each stage halving the size with 2x2 max pooling (ceil mode). Five decoder stages then
upsample (bilinear, align_corners=False) and join the encoder stage of the same size. An RSU of
depth L is itself a small U-Net: a 3x3 conv-BN-ReLU "in", L - 1 convs with pooling between all
but the last, a dilation-2 conv at the bottom, then L - 1 decoder convs each reading the skip of
its level. Its output is added to its "in" conv. The "F" variant (RSU4F) pools nowhere and
dilates 1, 2, 4, 8 instead. Only the first side output (the finest) is the mask. The other five
side convolutions are in the file and are loaded, but not run.

The original reads stage 1 from the first conv's output, not from the max pooling after it
(computed and unused there, so left out here): stage 1 runs at half the input size.

Keys as in `isnetis.ckpt` under `net.` (ISNetDIS: conv_in, stage1..6, stage5d..1d, side1..6, each
RSU's rebnconvin / rebnconv<i> / rebnconv<i>d with conv_s1 and bn_s1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STEM_CHANNELS = 64
# (stage, depth, in, mid, out, dilated): ISNetDIS.__init__'s stages, encoder then decoder.
ENCODER_STAGES = (
    ("stage1", 7, 64, 32, 64, False),
    ("stage2", 6, 64, 32, 128, False),
    ("stage3", 5, 128, 64, 256, False),
    ("stage4", 4, 256, 128, 512, False),
    ("stage5", 4, 512, 256, 512, True),
    ("stage6", 4, 512, 256, 512, True),
)
DECODER_STAGES = (
    ("stage5d", 4, 1024, 256, 512, True),
    ("stage4d", 4, 1024, 128, 256, False),
    ("stage3d", 5, 512, 64, 128, False),
    ("stage2d", 6, 256, 32, 64, False),
    ("stage1d", 7, 128, 16, 64, False),
)
# Side outputs: the decoder stages' (and stage 6's) widths, finest first; side1 is the mask.
SIDE_CHANNELS = (64, 64, 128, 256, 512, 512)
BOTTOM_DILATION = 2  # an RSU's bottom conv


def upsample_like(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)


def pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 2, stride=2, ceil_mode=True)


class REBNCONV(nn.Module):
    """3x3 conv (dilated), BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
        self.bn_s1 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn_s1(self.conv_s1(x)))


class RSU(nn.Module):
    """A residual U-block of `depth` levels (RSU7..RSU4), or RSU4F when `dilated`."""

    def __init__(self, depth: int, in_channels: int, mid_channels: int, out_channels: int, dilated: bool):
        super().__init__()
        self.depth, self.dilated = depth, dilated
        # RSU-L: dilation 1 everywhere but the bottom; RSU4F: 1, 2, 4, 8 down and back up.
        self.dilations = [2 ** level for level in range(depth)] if dilated else [1] * (depth - 1) + [BOTTOM_DILATION]
        self.rebnconvin = REBNCONV(in_channels, out_channels)
        for level in range(1, depth + 1):
            setattr(self, f"rebnconv{level}",
                    REBNCONV(out_channels if level == 1 else mid_channels, mid_channels, self.dilations[level - 1]))
        for level in range(depth - 1, 0, -1):
            setattr(self, f"rebnconv{level}d",
                    REBNCONV(2 * mid_channels, out_channels if level == 1 else mid_channels, self.dilations[level - 1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.rebnconvin(x)
        x, skips = x_in, []
        for level in range(1, self.depth):
            x = getattr(self, f"rebnconv{level}")(x)
            skips.append(x)
            if not self.dilated and level < self.depth - 1:
                x = pool(x)
        x = getattr(self, f"rebnconv{self.depth}")(x)
        for level in range(self.depth - 1, 0, -1):
            x = getattr(self, f"rebnconv{level}d")(torch.cat([x, skips[level - 1]], dim=1))
            if not self.dilated and level > 1:
                x = upsample_like(x, skips[level - 2])
        return x + x_in


class ISNet(nn.Module):
    """Input Bx3xHxW RGB in 0..1; output Bx1xHxW mask logits (sigmoid: the character's mask)."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1)
        for name, *layout in ENCODER_STAGES + DECODER_STAGES:
            setattr(self, name, RSU(*layout))
        for index, channels in enumerate(SIDE_CHANNELS, start=1):
            setattr(self, f"side{index}", nn.Conv2d(channels, 1, 3, padding=1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(image)
        encoded = []
        for index, (name, *_) in enumerate(ENCODER_STAGES):
            x = getattr(self, name)(x if index == 0 else pool(x))
            encoded.append(x)
        for (name, *_), skip in zip(DECODER_STAGES, reversed(encoded[:-1])):
            x = getattr(self, name)(torch.cat([upsample_like(x, skip), skip], dim=1))
        return upsample_like(self.side1(x), image)
