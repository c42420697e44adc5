"""UniFormer-S backbone (Li et al., "UniFormer: Unifying Convolution and Self-attention for
Visual Recognition", 2022), the "global" variant ControlNet 1.0's seg annotator uses
(`upernet_global_small`: windows=False, hybrid=False).

Four stages; each starts with a patch embedding (a conv whose kernel equals its stride, then
LayerNorm) and ends with a LayerNorm whose output is one feature map of the pyramid:
  stage 1-2: convolution blocks ("local relation aggregation"): x += dwconv3x3(x);
             x += 1x1(dwconv5x5(1x1(BN(x)))); x += MLP of 1x1 convs (BN(x)).
  stage 3-4: attention blocks ("global relation aggregation"): x += dwconv3x3(x); then the
             usual pre-norm transformer block over all H*W tokens (multi-head self-attention
             and an MLP, LayerNorm eps 1e-6).
Attribute names follow the published state dict (`backbone.` prefix stripped): patch_embed1..4
(proj, norm), blocks1..4, norm1..4; in a block pos_embed, norm1, conv1, attn, conv2, norm2,
mlp.fc1/fc2 (convolution) or pos_embed, norm1, attn.qkv/proj, norm2, mlp.fc1/fc2 (attention).
Stochastic depth and dropout are training-only and left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .networks_common import TokenMlp

# upernet_global_small config (annotator/uniformer/exp/upernet_global_small/config.py).
EMBED_DIMS = (64, 128, 320, 512)
DEPTHS = (3, 4, 8, 3)
HEAD_DIM = 64
MLP_RATIO = 4
PATCH_SIZES = (4, 2, 2, 2)   # stage 1 embeds 4x4 pixels, later stages merge 2x2 tokens
ATTENTION_STAGES = (2, 3)    # stages 3 and 4 (0-based) use self-attention, 1 and 2 convolution
TOKEN_NORM_EPS = 1e-6        # UniFormer's norm_layer = partial(nn.LayerNorm, eps=1e-6)
# The patch embeddings build nn.LayerNorm(embed_dim) directly: torch's default eps, 1e-5.
PATCH_NORM_EPS = 1e-5


class ConvMlp(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv on a BxCxHxW map."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """UniFormer's local block: depthwise-conv position encoding, a depthwise 5x5 "attention"
    between two 1x1 convs, and a conv MLP; both branches after BatchNorm, both residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = nn.BatchNorm2d(dim)
        self.mlp = ConvMlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention over all tokens; heads of HEAD_DIM channels, qkv with bias,
    logits scaled by 1/sqrt(HEAD_DIM)."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, channels = tokens.shape
        # B x N x (q|k|v, head, head channel) -> (q|k|v) x B x head x N x head channel
        qkv = self.qkv(tokens).reshape(batch, count, 3, self.heads, channels // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        mixed = F.scaled_dot_product_attention(query, key, value)
        return self.proj(mixed.transpose(1, 2).reshape(batch, count, channels))


class AttentionBlock(nn.Module):
    """UniFormer's global block: depthwise-conv position encoding, then a pre-norm
    transformer block over the H*W tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim, eps=TOKEN_NORM_EPS)
        self.attn = SelfAttention(dim)
        self.norm2 = nn.LayerNorm(dim, eps=TOKEN_NORM_EPS)
        self.mlp = TokenMlp(dim, dim * MLP_RATIO)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        tokens = tokens + self.attn(self.norm1(tokens))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> channels (conv, kernel = stride), LayerNorm per position.
    Sides that do not divide by the patch size lose their remainder (conv floor)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=PATCH_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return channel_layer_norm(x, self.norm)


def channel_layer_norm(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """LayerNorm over the channels of a BxCxHxW map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class UniFormerBackbone(nn.Module):
    """Input Bx3xHxW normalised image; output the four stage maps at 1/4, 1/8, 1/16, 1/32
    with EMBED_DIMS channels."""

    def __init__(self):
        super().__init__()
        in_channels = 3
        for stage, (dim, depth, patch) in enumerate(zip(EMBED_DIMS, DEPTHS, PATCH_SIZES), start=1):
            block = AttentionBlock if stage - 1 in ATTENTION_STAGES else ConvBlock
            setattr(self, f"patch_embed{stage}", PatchEmbed(in_channels, dim, patch))
            setattr(self, f"blocks{stage}", nn.ModuleList(block(dim) for _ in range(depth)))
            setattr(self, f"norm{stage}", nn.LayerNorm(dim, eps=TOKEN_NORM_EPS))
            in_channels = dim

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in range(1, len(EMBED_DIMS) + 1):
            x = getattr(self, f"patch_embed{stage}")(x)
            for block in getattr(self, f"blocks{stage}"):
                x = block(x)
            # The normalised map is an output only; the next stage continues from x itself.
            features.append(channel_layer_norm(x, getattr(self, f"norm{stage}")))
        return features
