"""Swin Transformer backbone (Liu et al., "Swin Transformer: Hierarchical Vision Transformer using
Shifted Windows", ICCV 2021), as OneFormer's detectron2 `D2SwinTransformer` builds it
(annotator/oneformer/oneformer/modeling/backbone/swin.py in lllyasviel/ControlNet-v1-1-nightly).

The image is cut into patch_size x patch_size patches (a conv whose kernel equals its stride, then
LayerNorm), then four stages of pre-norm transformer blocks run on the token map. A block attends
within non-overlapping window_size x window_size windows, with a learned bias per head indexed by
the relative offset of the two tokens; every odd block first rolls the map by window_size // 2 so
that windows straddle the previous block's borders, and masks pairs of tokens that the roll
brought together from opposite edges. Between stages a patch merging layer concatenates each 2x2
neighbourhood (LayerNorm, then a linear map to twice the channels). Each stage's output, before
merging, is LayerNormed into one feature map: strides 4, 8, 16, 32 (detectron2's res2..res5).
Maps whose sides do not divide by the patch, window or 2 are zero-padded on the right and bottom,
and cropped back after the window attention.

Attribute names follow the published OneFormer checkpoints with their `backbone.` prefix stripped:
patch_embed.proj / .norm; layers.{i}.blocks.{j}.norm1, .attn.relative_position_bias_table,
.attn.relative_position_index (a persistent buffer, stored in the checkpoint), .attn.qkv,
.attn.proj, .norm2, .mlp.fc1 / fc2; layers.{i}.downsample.norm / .reduction (no bias) for all
but the last stage; norm0..norm3 on the outputs.

The configuration is read from the weights (`swin_config_from_state_dict`); the published
Swin-L models (configs/*/oneformer_swin_large_*.yaml) have embed_dim 192, depths (2, 2, 18, 2),
heads (6, 12, 24, 48), window 12, patch 4, MLP ratio 4, qkv bias, no absolute position
embedding. Dropout and stochastic depth are training-only and left out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .networks_common import TokenMlp
from .weights import BadWeightsError

IN_CHANNELS = 3
NORM_EPS = 1e-5            # nn.LayerNorm's default, which the original uses throughout
# The original's shifted-window mask: a large negative logit rather than -inf, kept for parity.
MASKED_LOGIT = -100.0
MERGE_FACTOR = 2           # patch merging: 2x2 tokens -> one, channels x2
REGIONS_PER_SIDE = 3       # a shifted map's rows (and columns) come from 3 regions, see shift_mask


@dataclass(frozen=True)
class SwinConfig:
    embed_dim: int                 # channels of stage 1; stage i has embed_dim * 2**i
    depths: tuple[int, ...]        # blocks per stage
    num_heads: tuple[int, ...]     # attention heads per stage
    window_size: int
    patch_size: int = 4
    mlp_ratio: int = 4


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a BxHxWxC map on the bottom and right to sides divisible by `multiple`."""
    height, width = x.shape[1:3]
    return F.pad(x, (0, 0, 0, -width % multiple, 0, -height % multiple))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """BxHxWxC (sides divisible by `window`) -> (B * windows) x window^2 x C, windows row-major."""
    batch, height, width, channels = x.shape
    x = x.view(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_merge(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """Inverse of window_partition: (B * windows) x window^2 x C -> BxHxWxC."""
    channels = windows.shape[-1]
    x = windows.view(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """window^2 x window^2 table row for each (query, key) pair of a window's tokens: the offset
    (dy, dx) in [-(w-1), w-1]^2 of query minus key, as (dy + w - 1) * (2w - 1) + (dx + w - 1)."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    dy = rows[:, None] - rows[None, :] + window - 1
    dx = cols[:, None] - cols[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def shift_mask(height: int, width: int, window: int, shift: int, dtype: torch.dtype,
               device: torch.device) -> torch.Tensor:
    """windows x window^2 x window^2 additive mask for a padded height x width map rolled by
    -shift: 0 between tokens from the same region of the unrolled map, MASKED_LOGIT otherwise.
    Along each axis the regions are [0, side - window), [side - window, side - shift) and
    [side - shift, side): after the roll the last window holds tokens from both ends."""

    def regions(side: int) -> torch.Tensor:
        index = torch.arange(side, device=device)
        return (index >= side - window).long() + (index >= side - shift).long()

    region = regions(height)[:, None] * REGIONS_PER_SIDE + regions(width)[None, :]
    region = window_partition(region[None, :, :, None], window).squeeze(-1)   # windows x window^2
    different = region[:, :, None] != region[:, None, :]
    return torch.zeros(different.shape, dtype=dtype, device=device).masked_fill(different, MASKED_LOGIT)


class WindowAttention(nn.Module):
    """Multi-head self-attention within each window, plus a learned per-head bias looked up by
    relative position."""

    def __init__(self, dim: int, heads: int, window: int):
        super().__init__()
        self.heads = heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        # Persistent, as in the original: the published checkpoints carry it.
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B * windows) x N x C tokens; `mask` is None or windows x N x N (added to the logits)."""
        count, tokens, channels = windows.shape
        # (B * windows) x N x (q|k|v, head, head channel) -> (q|k|v) x (B * windows) x head x N x ch
        qkv = self.qkv(windows).reshape(count, tokens, 3, self.heads, channels // self.heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias_table[self.relative_position_index]   # N x N x head
        bias = bias.permute(2, 0, 1).contiguous().unsqueeze(0)                     # 1 x head x N x N
        if mask is not None:
            # Windows are ordered image-major, so the mask repeats for every image of the batch
            # (expand: no copy for a single image).
            bias = bias + mask.unsqueeze(1)                                        # windows x head x N x N
            bias = bias.expand(count // mask.shape[0], *bias.shape).reshape(count, *bias.shape[1:])
        # softmax(q k^T / sqrt(head channels) + bias) v, the original's attention in one call.
        mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype))
        return self.proj(mixed.transpose(1, 2).reshape(count, tokens, channels))


class SwinBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention on a BxHxWxC map."""

    def __init__(self, dim: int, heads: int, window: int, shift: int, mlp_ratio: int):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        self.mlp = TokenMlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, height, width, channels = x.shape
        # Padded after the norm, so the padding tokens are zeros.
        mixed = pad_to_multiple(self.norm1(x), self.window)
        padded_height, padded_width = mixed.shape[1:3]
        if self.shift:
            mixed = torch.roll(mixed, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(mixed, self.window), mask if self.shift else None)
        mixed = window_merge(windows, self.window, padded_height, padded_width)
        if self.shift:
            mixed = torch.roll(mixed, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + mixed[:, :height, :width]
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """BxHxWxC -> Bx(H/2)x(W/2)x2C: each 2x2 neighbourhood concatenated (odd sides zero-padded),
    LayerNorm, linear map without bias."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(MERGE_FACTOR ** 2 * dim, eps=NORM_EPS)
        self.reduction = nn.Linear(MERGE_FACTOR ** 2 * dim, MERGE_FACTOR * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_to_multiple(x, MERGE_FACTOR)
        # The original's order x0, x1, x2, x3: (even row, even col), (odd, even), (even, odd), (odd, odd).
        neighbours = [x[:, row::2, col::2] for col in (0, 1) for row in (0, 1)]
        return self.reduction(self.norm(torch.cat(neighbours, dim=-1)))


class SwinStage(nn.Module):
    """The original's BasicLayer: `depth` blocks, odd ones shifted by window // 2, then (all but
    the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: int, merge: bool):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.ModuleList(
            SwinBlock(dim, heads, window, self.shift if index % 2 else 0, mlp_ratio) for index in range(depth)
        )
        self.downsample = PatchMerging(dim) if merge else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """BxHxWxC -> (this stage's output, the next stage's input)."""
        height, width = x.shape[1:3]
        # One mask for all shifted blocks, on the map padded to whole windows.
        mask = shift_mask(math.ceil(height / self.window) * self.window, math.ceil(width / self.window) * self.window,
                          self.window, self.shift, x.dtype, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """Bx3xHxW -> BxhxwxC: patches (right / bottom zero-padded to whole patches) projected by a
    conv with kernel = stride, then LayerNorm."""

    def __init__(self, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(IN_CHANNELS, dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(dim, eps=NORM_EPS)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[2:]
        image = F.pad(image, (0, -width % self.patch_size, 0, -height % self.patch_size))
        return self.norm(self.proj(image).permute(0, 2, 3, 1))


class SwinBackbone(nn.Module):
    """Input Bx3xHxW normalised image (any size); output the four stage maps at strides 4, 8, 16,
    32 with embed_dim * (1, 2, 4, 8) channels (sides rounded up)."""

    def __init__(self, config: SwinConfig):
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config.embed_dim, config.patch_size)
        stages = len(config.depths)
        dims = [config.embed_dim * MERGE_FACTOR ** index for index in range(stages)]
        self.layers = nn.ModuleList(
            SwinStage(dim, depth, heads, config.window_size, config.mlp_ratio, merge=index < stages - 1)
            for index, (dim, depth, heads) in enumerate(zip(dims, config.depths, config.num_heads))
        )
        for index, dim in enumerate(dims):
            setattr(self, f"norm{index}", nn.LayerNorm(dim, eps=NORM_EPS))

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Bx3xHxW -> four BxC_ixH_ixW_i maps (strides 4, 8, 16, 32; detectron2's res2..res5),
        each after its norm{i}."""
        x = self.patch_embed(image)
        features = []
        for index, stage in enumerate(self.layers):
            output, x = stage(x)
            # The normalised map is an output only; the next stage continues from the merged x.
            features.append(getattr(self, f"norm{index}")(output).permute(0, 3, 1, 2).contiguous())
        return features


BLOCK_KEY = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.norm1\.weight")


def swin_config_from_state_dict(state_dict: dict[str, torch.Tensor], prefix: str = "") -> SwinConfig:
    """Read embed_dim (patch_embed.proj.weight), patch size, depths (count of blocks per layer),
    num_heads (relative_position_bias_table.shape[1]) and window_size (table rows = (2w-1)^2)
    from the weights; `prefix` is what precedes the backbone's own names ("backbone.")."""
    projection = state_dict.get(f"{prefix}patch_embed.proj.weight")
    if projection is None:
        raise BadWeightsError(f"no Swin backbone in these weights: '{prefix}patch_embed.proj.weight' is missing")
    embed_dim, patch_size = projection.shape[0], projection.shape[-1]

    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        found = BLOCK_KEY.fullmatch(key[len(prefix):]) if key.startswith(prefix) else None
        if found:
            blocks.setdefault(int(found[1]), set()).add(int(found[2]))
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise BadWeightsError(f"Swin stages in these weights are not numbered 0..n-1: {sorted(blocks)}")
    depths = tuple(len(blocks[stage]) for stage in range(len(blocks)))

    tables = [state_dict[f"{prefix}layers.{stage}.blocks.0.attn.relative_position_bias_table"]
              for stage in range(len(depths))]
    num_heads = tuple(table.shape[1] for table in tables)
    side = math.isqrt(tables[0].shape[0])   # 2w - 1
    if side * side != tables[0].shape[0] or side % 2 == 0:
        raise BadWeightsError(f"Swin relative position table has {tables[0].shape[0]} rows, not (2w-1)^2")
    hidden = state_dict[f"{prefix}layers.0.blocks.0.mlp.fc1.weight"].shape[0]
    return SwinConfig(embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=(side + 1) // 2,
                      patch_size=patch_size, mlp_ratio=hidden // embed_dim)
