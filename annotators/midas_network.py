"""The MiDaS v3 DPT-Hybrid network (Ranftl et al., "Vision Transformers for Dense Prediction",
ICCV 2021) of ControlNet's depth and normal annotators, in plain torch.

Published layout (isl-org/MiDaS `DPTDepthModel(backbone="vitb_rn50_384", non_negative=True)`,
the file lllyasviel/Annotators ships as `dpt_hybrid-midas-501f0c75.pt`):

* `pretrained.model`: timm's `vit_base_resnet50_384` (the R50+ViT-B/16 hybrid of Dosovitskiy
  et al.). A BiT ResNetV2 trunk -- weight-standardised convs with TensorFlow "SAME" padding,
  GroupNorm(32), stages of 3, 4 and 9 bottlenecks -- makes 1024-channel features at 1/16; a
  1x1 conv turns them into 768-d tokens; a class token and bilinearly resized position
  embeddings are added; 12 pre-norm transformer blocks follow.
* `pretrained.act_postprocess3/4` ("reassemble"): tokens after blocks 8 and 11 -> feature maps
  at 1/16 and 1/32 (the class token is folded into every token by a learned projection).
  The maps at 1/4 and 1/8 are the outputs of ResNet stages 0 and 1.
* `scratch`: 3x3 convs to 256 channels, four RefineNet fusion blocks (coarse to fine, each
  upsampling x2), and a head that upsamples x2 again to the input size and ends in a ReLU
  (non-negative relative inverse depth: near is large).

Module and parameter names mirror the published keys so the file loads strictly; a few
children carry the published numeric names (`"0"`, `"3"`, `"4"`) because the original held
them in an nn.Sequential whose other slots have no parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dpt_blocks import CLASS_TOKENS, DPTDecoder, Reassemble
from .networks_common import TokenMlp

# --- BiT ResNetV2 trunk (timm vision_transformer_hybrid._resnetv2(layers=(3, 4, 9))) ----------
STEM_CHANNELS = 64
STEM_KERNEL = 7
STEM_STRIDE = 2
POOL_KERNEL = 3
POOL_STRIDE = 2
# (input channels, output channels, bottlenecks, stride of the first) of the three stages kept
# from ResNet-50; the fourth is cut, so the trunk ends at 1/16 with 1024 channels.
STAGES = ((64, 256, 3, 1), (256, 512, 4, 2), (512, 1024, 9, 2))
BOTTLENECK_RATIO = 4            # middle channels = output / 4 (timm bottle_ratio 0.25)
GROUP_NORM_GROUPS = 32          # timm GroupNormAct(num_groups=32)
GROUP_NORM_EPS = 1e-5           # GroupNormAct default
WEIGHT_STANDARDIZATION_EPS = 1e-8  # timm _resnetv2: partial(StdConv2dSame, eps=1e-8)

# --- ViT-B/16 (timm vit_base_r50_s16_384) ------------------------------------------------------
EMBED_DIM = 768
DEPTH = 12
HEADS = 12
MLP_RATIO = 4
LAYER_NORM_EPS = 1e-6           # timm ViT partial(nn.LayerNorm, eps=1e-6)
PATCH_STRIDE = 16               # token grid = input / 16 (the trunk's total stride)
PRETRAINED_GRID = 24            # pos_embed was trained at 384 / 16 = 24 x 24 tokens (+ 1 class)
IMAGENET_CLASSES = 1000         # the unused classifier head the published file still holds

# --- DPT (MiDaS dpt_depth.py / blocks.py / vit.py, backbone "vitb_rn50_384") ----------------
HOOKS = (8, 11)                 # transformer blocks read out for 1/16 and 1/32 (hooks[2:])
STAGE_CHANNELS = (256, 512, EMBED_DIM, EMBED_DIM)  # _make_scratch in_shape
FEATURES = 256                  # DPT `features`
# The trunk (1/16) and the stride-2 conv of the deepest reassemble (1/32) need sides that halve
# five times, so that each fusion block's x2 upsampling meets the next finer map exactly.
SIZE_MULTIPLE = 32


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) of one side: output = ceil(size / stride),
    the odd pixel going after (timm padding.get_same_padding / pad_same)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = tf_same_padding(x.shape[-2], kernel, stride)
    left, right = tf_same_padding(x.shape[-1], kernel, stride)
    return F.pad(x, (left, right, top, bottom), value=value)


class StandardizedConv2d(nn.Conv2d):
    """Conv without bias whose kernels are standardised (per output channel: zero mean, unit
    biased variance) at every call (Qiao et al. 2019, as BiT trains them), with 'SAME' padding.

    Stride 1 pads symmetrically inside the conv; larger strides pad the input first, the odd
    pixel at the end (timm StdConv2dSame does the same split, so results are bit-equal)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        self.dynamic_padding = stride > 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=0 if self.dynamic_padding else (kernel_size - 1) // 2, bias=False)

    def standardized_weight(self) -> torch.Tensor:
        # At least float32: the 1e-8 epsilon underflows in half precision.
        weight = self.weight.to(torch.promote_types(self.weight.dtype, torch.float32))
        flat = F.batch_norm(weight.reshape(1, self.out_channels, -1), None, None,
                            training=True, momentum=0.0, eps=WEIGHT_STANDARDIZATION_EPS)
        return flat.reshape_as(weight).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, self.standardized_weight(), None, self.stride, self.padding)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUP_NORM_GROUPS, channels, eps=GROUP_NORM_EPS)


class Stem(nn.Module):
    """7x7/2 conv, GroupNorm, ReLU, 3x3/2 max pool: 1/4 of the input size."""

    def __init__(self):
        super().__init__()
        self.conv = StandardizedConv2d(3, STEM_CHANNELS, STEM_KERNEL, STEM_STRIDE)
        self.norm = group_norm(STEM_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm(self.conv(x)))
        # 'SAME' max pooling pads with -inf so the padding never wins.
        x = pad_same(x, POOL_KERNEL, POOL_STRIDE, value=-math.inf)
        return F.max_pool2d(x, POOL_KERNEL, POOL_STRIDE)


class Projection(nn.Module):
    """The shortcut of a stage's first bottleneck: 1x1 conv (with the stage's stride), norm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv = StandardizedConv2d(in_channels, out_channels, 1, stride)
        self.norm = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation ResNet bottleneck (1x1, 3x3 with the stride, 1x1), timm `Bottleneck`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        middle = out_channels // BOTTLENECK_RATIO
        if in_channels != out_channels or stride != 1:
            self.downsample = Projection(in_channels, out_channels, stride)
        else:
            self.downsample = None
        self.conv1 = StandardizedConv2d(in_channels, middle, 1)
        self.norm1 = group_norm(middle)
        self.conv2 = StandardizedConv2d(middle, middle, 3, stride)
        self.norm2 = group_norm(middle)
        self.conv3 = StandardizedConv2d(middle, out_channels, 1)
        self.norm3 = group_norm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class Stage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, count: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(*[
            Bottleneck(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(count)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetTrunk(nn.Module):
    """BiT ResNetV2-50 without its last stage. Returns every stage's output (1/4, 1/8, 1/16)."""

    def __init__(self):
        super().__init__()
        self.stem = Stem()
        self.stages = nn.ModuleList([Stage(*spec) for spec in STAGES])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class HybridEmbedding(nn.Module):
    """ResNet trunk, then a 1x1 conv from its 1024 channels to the token width."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNetTrunk()
        self.proj = nn.Conv2d(STAGES[-1][1], EMBED_DIM, 1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(EMBED_DIM, 3 * EMBED_DIM)
        self.proj = nn.Linear(EMBED_DIM, EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, HEADS, width // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head width)) v
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, width))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(EMBED_DIM, eps=LAYER_NORM_EPS)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(EMBED_DIM, eps=LAYER_NORM_EPS)
        self.mlp = TokenMlp(EMBED_DIM, MLP_RATIO * EMBED_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def resize_position_embedding(embedding: torch.Tensor, grid_height: int,
                              grid_width: int) -> torch.Tensor:
    """[1, 1 + 24*24, D] -> [1, 1 + h*w, D]: the grid part bilinearly resized (half-pixel
    centres, DPT `_resize_pos_embed`), the class token's embedding kept."""
    class_part, grid = embedding[:, :CLASS_TOKENS], embedding[0, CLASS_TOKENS:]
    side = int(math.sqrt(grid.shape[0]))
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_height, grid_width), mode="bilinear")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, -1)
    return torch.cat([class_part, grid], dim=1)


class HybridViT(nn.Module):
    """R50+ViT-B/16. `forward` returns the ResNet maps at 1/4 and 1/8 and the token sequences
    after blocks 8 and 11 (class token first); the final norm and classifier are not used by
    DPT but are part of the published file."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, EMBED_DIM))
        self.pos_embed = nn.Parameter(torch.zeros(1, CLASS_TOKENS + PRETRAINED_GRID ** 2, EMBED_DIM))
        self.patch_embed = HybridEmbedding()
        self.blocks = nn.ModuleList([TransformerBlock() for _ in range(DEPTH)])
        self.norm = nn.LayerNorm(EMBED_DIM, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(EMBED_DIM, IMAGENET_CLASSES)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        batch, _, height, width = x.shape
        quarter, eighth, sixteenth = self.patch_embed.backbone(x)
        tokens = self.patch_embed.proj(sixteenth).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + resize_position_embedding(
            self.pos_embed, height // PATCH_STRIDE, width // PATCH_STRIDE)
        outputs = [quarter, eighth]
        for index, block in enumerate(self.blocks[:max(HOOKS) + 1]):
            tokens = block(tokens)
            if index in HOOKS:
                outputs.append(tokens)
        return outputs


class Encoder(nn.Module):
    """`pretrained`: the hybrid ViT and its two reassemble stages (the 1/4 and 1/8 maps come
    from the ResNet directly; DPT's act_postprocess1/2 are identities without parameters)."""

    def __init__(self):
        super().__init__()
        self.model = HybridViT()
        self.act_postprocess3 = Reassemble(EMBED_DIM, EMBED_DIM)
        self.act_postprocess4 = Reassemble(EMBED_DIM, EMBED_DIM, nn.Conv2d(EMBED_DIM, EMBED_DIM, 3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        grid = (x.shape[2] // PATCH_STRIDE, x.shape[3] // PATCH_STRIDE)
        quarter, eighth, tokens_mid, tokens_last = self.model(x)
        return [quarter, eighth, self.act_postprocess3(tokens_mid, *grid),
                self.act_postprocess4(tokens_last, *grid)]


class MiDaSNetwork(nn.Module):
    """MiDaS DPT-Hybrid. Input Bx3xHxW RGB scaled to -1..1, H and W multiples of 32; output
    BxHxW relative inverse depth (>= 0, larger is nearer, arbitrary scale)."""

    def __init__(self):
        super().__init__()
        self.pretrained = Encoder()
        self.scratch = DPTDecoder(STAGE_CHANNELS, FEATURES)
        # Convolution kernels channels-last, as annotators.midas feeds the image: oneDNN then
        # skips re-laying out every kernel at every call (14% less convolution time at
        # 512x768 on the CPU). Loading weights into the network keeps this layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        height, width = rgb.shape[-2:]
        if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
            raise ValueError(
                f"MiDaS needs sides that are multiples of {SIZE_MULTIPLE}, got {height}x{width}; "
                "pad the image (annotators.midas does this for you)")
        return self.scratch(self.pretrained(rgb))
