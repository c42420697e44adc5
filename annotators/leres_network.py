"""The LeReS depth network (Yin et al., "Learning to Recover 3D Scene Shape from a Single Image",
CVPR 2021; github.com/aim-uofa/AdelaiDepth, LeReS/lib): a ResNeXt-101 32x8d trunk and LeReS's
top-down decoder, as `res101.pth` (lllyasviel/Annotators) holds it. The published file keeps the
weights under its 'depth_model' entry with DataParallel's "module." prefix; without it the keys
are this module tree's:

  depth_model.encoder_modules.encoder   ResNeXt-101 32x8d (He et al. 2016 / Xie et al. 2017,
      torchvision's layout without the classifier): 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max
      pool, then four layers of 3, 4, 23 and 3 bottlenecks (1x1 conv, grouped 3x3 conv carrying the
      stride, 1x1 conv, each with BN; 32 groups of 8 x 2^i channels), giving features at 1/4, 1/8,
      1/16 and 1/32 with 256, 512, 1024 and 2048 channels.
  depth_model.decoder_modules           from 1/32 up: FTB (2048 -> 512), 3x3 conv to 256, x2; then
      three FFMs, each FTB(features) + the coarser result, FTB, x2 (1/16 -> 1/8 -> 1/4 -> 1/2);
      then AO: 3x3 conv 256 -> 128, BN, ReLU, 3x3 conv to 1, x2. Every x2 is bilinear with
      align_corners=True.

FTB ("feature transfer block") is conv1 followed by a residual branch (ReLU, 3x3 conv, BN, ReLU,
3x3 conv) and a ReLU. The original's branch starts with an in-place ReLU that also rectifies the
tensor the sum adds it to, so the block computes relu(r + branch(r)) with r = relu(conv1(x)):
written out here, since the trained weights expect it.

The input is 1x3xHxW with H and W multiples of 32 (each of the decoder's x2 must land on the next
feature's size); the output is 1x1xHxW relative depth (far is large).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torchvision resnext101_32x8d: Bottleneck blocks per layer, groups and width per group.
RESNEXT101_BLOCKS = (3, 4, 23, 3)
RESNEXT_GROUPS = 32
RESNEXT_WIDTH_PER_GROUP = 8
BASE_WIDTH = 64            # ResNet's 64-channel stem and its width unit for bottleneck widths
BOTTLENECK_EXPANSION = 4   # a bottleneck's output has 4x its planes
STEM_CHANNELS = 64
LAYER_PLANES = (64, 128, 256, 512)
STEM_KERNEL = 7

# network_auxi.py Decoder: channels of the trunk's four features and of the decoder at each scale.
FEATURE_CHANNELS = tuple(planes * BOTTLENECK_EXPANSION for planes in LAYER_PLANES)  # 256 .. 2048
DECODER_CHANNELS = (256, 256, 256, 512)
UPSAMPLE_FACTOR = 2
# The trunk halves the size five times (stem conv, max pool, layers 2-4).
SIZE_MULTIPLE = 32


def upsample(x: torch.Tensor) -> torch.Tensor:
    """x2 bilinear with align_corners=True (nn.Upsample(scale_factor=2) in the original)."""
    return F.interpolate(x, scale_factor=UPSAMPLE_FACTOR, mode="bilinear", align_corners=True)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=bias)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride is on the grouped 3x3 conv."""

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        width = planes * RESNEXT_WIDTH_PER_GROUP // BASE_WIDTH * RESNEXT_GROUPS
        out_channels = planes * BOTTLENECK_EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups=RESNEXT_GROUPS)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


def residual_layer(in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """`blocks` bottlenecks; the first changes the size and width, its shortcut a strided 1x1 conv + BN."""
    out_channels = planes * BOTTLENECK_EXPANSION
    downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(out_channels))
    return nn.Sequential(Bottleneck(in_channels, planes, stride, downsample),
                         *[Bottleneck(out_channels, planes) for _ in range(blocks - 1)])


class ResNeXtTrunk(nn.Module):
    """ResNeXt-101 32x8d without its pooling and classifier: returns the four layers' outputs."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, STEM_KERNEL, stride=2, padding=STEM_KERNEL // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        in_channels = STEM_CHANNELS
        for index, (planes, count) in enumerate(zip(LAYER_PLANES, RESNEXT101_BLOCKS)):
            self.add_module(f"layer{index + 1}", residual_layer(in_channels, planes, count, 1 if index == 0 else 2))
            in_channels = planes * BOTTLENECK_EXPANSION

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        features = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            features.append(x)
        return features


class EncoderModules(nn.Module):
    """The original's DepthNet wrapper around the trunk (published keys: encoder_modules.encoder.*)."""

    def __init__(self):
        super().__init__()
        self.encoder = ResNeXtTrunk()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)


class FeatureTransferBlock(nn.Module):
    """FTB: r = relu(conv1(x)); relu(r + branch(r)), branch = ReLU, 3x3 conv, BN, ReLU, 3x3 conv
    (see the module docstring for why the first ReLU also applies to r)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, bias=True)
        # Sequential, so the indices are the published key names (1, 2 and 4 hold weights).
        self.conv_branch = nn.Sequential(nn.ReLU(), conv3x3(channels, channels, bias=True), nn.BatchNorm2d(channels),
                                         nn.ReLU(), conv3x3(channels, channels, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rectified = F.relu(self.conv1(x))
        return F.relu(rectified + self.conv_branch(rectified))


class FeatureFusionModule(nn.Module):
    """FFM: FTB(features) + the coarser decoder output, another FTB, x2."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.ftb1 = FeatureTransferBlock(in_channels, mid_channels)
        self.ftb2 = FeatureTransferBlock(mid_channels, out_channels)

    def forward(self, features: torch.Tensor, coarser: torch.Tensor) -> torch.Tensor:
        return upsample(self.ftb2(self.ftb1(features) + coarser))


class AdaptiveOutput(nn.Module):
    """AO: 3x3 conv to half the channels, BN, ReLU, 3x3 conv to one channel, x2."""

    def __init__(self, in_channels: int):
        super().__init__()
        half = in_channels // 2
        self.adapt_conv = nn.Sequential(conv3x3(in_channels, half, bias=True), nn.BatchNorm2d(half), nn.ReLU(),
                                        conv3x3(half, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upsample(self.adapt_conv(x))


class Decoder(nn.Module):
    """LeReS's decoder: the four trunk features (1/4 .. 1/32) -> depth at the input's size."""

    def __init__(self):
        super().__init__()
        self.conv = FeatureTransferBlock(FEATURE_CHANNELS[3], DECODER_CHANNELS[3])
        self.conv1 = conv3x3(DECODER_CHANNELS[3], DECODER_CHANNELS[2], bias=True)
        self.ffm2 = FeatureFusionModule(FEATURE_CHANNELS[2], DECODER_CHANNELS[2], DECODER_CHANNELS[2])
        self.ffm1 = FeatureFusionModule(FEATURE_CHANNELS[1], DECODER_CHANNELS[1], DECODER_CHANNELS[1])
        self.ffm0 = FeatureFusionModule(FEATURE_CHANNELS[0], DECODER_CHANNELS[0], DECODER_CHANNELS[0])
        self.outconv = AdaptiveOutput(DECODER_CHANNELS[0])

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = upsample(self.conv1(self.conv(features[3])))  # 1/32 -> 1/16
        x = self.ffm2(features[2], x)                      # -> 1/8
        x = self.ffm1(features[1], x)                      # -> 1/4
        x = self.ffm0(features[0], x)                      # -> 1/2
        return self.outconv(x)                             # -> 1/1


class DepthModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder_modules = EncoderModules()
        self.decoder_modules = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder_modules(self.encoder_modules(x))


class LeReSNetwork(nn.Module):
    """Input 1x3xHxW (H, W multiples of 32; the normalisation is the annotator's, annotators/leres.py);
    output 1x1xHxW relative depth, far is large."""

    def __init__(self):
        super().__init__()
        self.depth_model = DepthModel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(
                f"LeReS needs sides that are multiples of {SIZE_MULTIPLE}, got {height}x{width}; "
                "pad the image (annotators.leres does)")
        return self.depth_model(x)
