"""The OneFormer network (Jain et al., "OneFormer: One Transformer to Rule Universal Image
Segmentation", CVPR 2023) as ControlNet 1.1's seg annotator runs it: Swin-L backbone, a
multi-scale deformable-attention pixel decoder and a task-conditioned masked-attention
transformer decoder, in plain torch (no detectron2, no compiled deformable-attention op).

Published layout (lllyasviel/Annotators `150_16_swin_l_oneformer_coco_100ep.pth` and
`250_16_swin_l_oneformer_ade20k_160k.pth`, SHI-Labs/OneFormer's detectron2 checkpoints; the
code is ControlNet-v1-1-nightly `annotator/oneformer/oneformer/`):

* `backbone`: Swin-L (`swin_backbone.SwinBackbone`), four maps at strides 4, 8, 16, 32.
* `sem_seg_head.pixel_decoder` (`MSDeformAttnPixelDecoder`, Mask2Former's): the three coarse
  maps are projected (1x1 conv + GroupNorm) to `hidden` channels and refined together by six
  deformable-attention encoder layers (Zhu et al., "Deformable DETR", ICLR 2021: each token
  reads `DEFORMABLE_POINTS` bilinear samples per head and level around its own position); an
  FPN step adds the stride-4 map (`adapter_1`, `layer_1`); a 1x1 conv makes the per-pixel mask
  features.
* `sem_seg_head.predictor` (`ContrastiveMultiScaleMaskedTransformerDecoder`): the task
  ("the task is semantic", tokenised and fed as 77 numbers to `task_mlp`) becomes a task token;
  a two-layer DETR decoder (`class_transformer`) turns it and the learned query positions into
  the initial queries, then nine layers of masked cross-attention (each query reads only where
  its previous mask is on, over the three coarse maps in turn), self-attention and a
  feed-forward net. Each query ends as class logits (`class_embed`, one extra "no object"
  class) and a mask (`mask_embed` dotted with the mask features).
* `task_mlp`. The checkpoints also hold the training-only text encoder (`text_encoder`,
  `text_projector`, `prompt_ctx`), which is not built here (`TRAINING_ONLY_PREFIXES`).

Module names follow the published keys, so the files load strictly. Widths, depths and counts
are read from the weights (`OneFormerConfig.from_state_dict`); head counts and sampling points
cannot be, and come from the configs (`configs/*/Base-*-UnifiedSegmentation.yaml`,
`oneformer/config.py`). Dropout is training-only and left out.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .swin_backbone import SwinBackbone, SwinConfig, swin_config_from_state_dict
from .weights import drop_prefixes

TRAINING_ONLY_PREFIXES = ("text_encoder.", "text_projector.", "prompt_ctx.", "criterion.")

BACKBONE_PREFIX = "backbone."
PIXEL_DECODER_PREFIX = "sem_seg_head.pixel_decoder."
PREDICTOR_PREFIX = "sem_seg_head.predictor."

# Base-*-UnifiedSegmentation.yaml / oneformer/config.py.
ATTENTION_HEADS = 8          # MODEL.ONE_FORMER.NHEADS, also the deformable encoder's heads
DEFORMABLE_POINTS = 4        # SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS
GROUP_NORM_GROUPS = 32       # SEM_SEG_HEAD.NORM "GN": detectron2 get_norm -> GroupNorm(32, C)
TRANSFORMER_LEVELS = 3       # res3..res5 enter the deformable encoder and the decoder's rounds
# PositionEmbeddingSine(normalize=True): positions scaled to (0, 2*pi], DETR's temperature.
POSITION_TEMPERATURE = 10000
POSITION_SCALE = 2 * math.pi
POSITION_EPS = 1e-6
# Decoder masks: a query attends where sigmoid(mask logit) >= 0.5 at the previous layer.
MASK_ATTENTION_THRESHOLD = 0.5


@dataclass(frozen=True)
class OneFormerConfig:
    swin: SwinConfig
    classes: int                 # without the "no object" class
    queries: int
    hidden: int                  # conv_dim = mask_dim = hidden_dim (256 in both configs)
    task_tokens: int             # INPUT.TASK_SEQ_LEN, the task_mlp's input width (77)
    encoder_layers: int          # deformable encoder layers (6)
    encoder_feedforward: int     # 1024 ("use 1024 for deformable transformer encoder")
    query_layers: int            # class_transformer decoder layers (CLASS_DEC_LAYERS, 2)
    decoder_layers: int          # masked-attention layers (DEC_LAYERS - 1 = 9)
    decoder_feedforward: int     # DIM_FEEDFORWARD (2048)
    heads: int = ATTENTION_HEADS
    points: int = DEFORMABLE_POINTS

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor], heads: int = ATTENTION_HEADS,
                        points: int = DEFORMABLE_POINTS) -> "OneFormerConfig":
        """The widths and counts of a OneFormer checkpoint, read from its shapes and key names."""

        def count(pattern: str) -> int:
            found = {int(m.group(1)) for k in state_dict if (m := re.match(pattern, k))}
            return max(found) + 1 if found else 0

        class_embed = state_dict[PREDICTOR_PREFIX + "class_embed.weight"]
        return cls(
            swin=swin_config_from_state_dict(state_dict, BACKBONE_PREFIX),
            classes=class_embed.shape[0] - 1,
            queries=state_dict[PREDICTOR_PREFIX + "query_embed.weight"].shape[0],
            hidden=class_embed.shape[1],
            task_tokens=state_dict["task_mlp.layers.0.weight"].shape[1],
            encoder_layers=count(re.escape(PIXEL_DECODER_PREFIX) + r"transformer\.encoder\.layers\.(\d+)\."),
            encoder_feedforward=state_dict[PIXEL_DECODER_PREFIX + "transformer.encoder.layers.0.linear1.weight"].shape[0],
            query_layers=count(re.escape(PREDICTOR_PREFIX) + r"class_transformer\.decoder\.layers\.(\d+)\."),
            decoder_layers=count(re.escape(PREDICTOR_PREFIX) + r"transformer_ffn_layers\.(\d+)\."),
            decoder_feedforward=state_dict[PREDICTOR_PREFIX + "transformer_ffn_layers.0.linear1.weight"].shape[0],
            heads=heads,
            points=points,
        )


def network_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's weights without the training-only text encoder."""
    return drop_prefixes(state_dict, TRAINING_ONLY_PREFIXES)


# --- shared pieces -------------------------------------------------------------------------------

def sine_positions(feature_map: torch.Tensor) -> torch.Tensor:
    """DETR's normalised sine position embedding (PositionEmbeddingSine(C/2, normalize=True)) of a
    BxCxHxW map, with no padding mask: C channels, the y half first, sin/cos interleaved."""
    batch, channels, height, width = feature_map.shape
    half = channels // 2
    device = feature_map.device
    dtype = torch.promote_types(feature_map.dtype, torch.float32)  # half precision would blur positions
    ys = torch.arange(1, height + 1, dtype=dtype, device=device) / (height + POSITION_EPS) * POSITION_SCALE
    xs = torch.arange(1, width + 1, dtype=dtype, device=device) / (width + POSITION_EPS) * POSITION_SCALE
    frequencies = POSITION_TEMPERATURE ** (2 * (torch.arange(half, dtype=dtype, device=device) // 2) / half)

    def embed(positions: torch.Tensor) -> torch.Tensor:  # (n,) -> (n, half), sin/cos interleaved
        angles = positions[:, None] / frequencies
        return torch.stack((angles[:, 0::2].sin(), angles[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = embed(ys)[:, None, :].expand(height, width, half)
    pos_x = embed(xs)[None, :, :].expand(height, width, half)
    pos = torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)
    return pos[None].expand(batch, -1, -1, -1).to(feature_map.dtype)


class MLP(nn.Module):
    """Linear layers with ReLU between them (OneFormer's `MLP`)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, layers: int):
        super().__init__()
        widths = [in_dim] + [hidden] * (layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class ConvGroupNorm(nn.Conv2d):
    """detectron2 `Conv2d(..., bias=False, norm=GroupNorm)`: conv, then `.norm`, optional ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, relu: bool):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = nn.GroupNorm(GROUP_NORM_GROUPS, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(super().forward(x))
        return F.relu(x) if self.relu else x


# --- pixel decoder -------------------------------------------------------------------------------

def deformable_attention_core(values: Sequence[torch.Tensor], locations: torch.Tensor,
                              weights: torch.Tensor) -> torch.Tensor:
    """Multi-scale deformable attention (ms_deform_attn_core_pytorch): `values[l]` is the level-l
    map per head, (B*heads)xDxH_lxW_l; `locations` BxQxheadsxLxPx2 in 0..1 (x, y); `weights`
    BxQxheadsxLxP. Each query's output is the weighted sum of its bilinear samples (zero outside
    the map), (B, Q, heads*D)."""
    batch, queries, heads, levels, points, _ = locations.shape
    grids = 2 * locations - 1  # grid_sample's -1..1, align_corners=False
    sampled = []
    for level, value in enumerate(values):
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*heads, Q, P, 2)
        sampled.append(F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    samples = torch.stack(sampled, dim=-2).flatten(-2)  # (B*heads, D, Q, L*P)
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (samples * weights).sum(-1).view(batch, -1, queries)  # (B, heads*D, Q)
    return out.transpose(1, 2)


class DeformableAttention(nn.Module):
    """Deformable DETR's MSDeformAttn, for reference points given as (x, y) in 0..1."""

    def __init__(self, dim: int, levels: int, heads: int, points: int):
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, tokens: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        batch, queries, dim = query.shape
        head_dim = dim // self.heads
        value = self.value_proj(tokens)
        level_values = []
        for level_tokens, (height, width) in zip(value.split([h * w for h, w in shapes], dim=1), shapes):
            # (B, HW, heads*D) -> (B*heads, D, H, W)
            level_values.append(level_tokens.transpose(1, 2).reshape(batch * self.heads, head_dim, height, width))
        offsets = self.sampling_offsets(query).view(batch, queries, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(batch, queries, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(batch, queries, self.heads, self.levels, self.points)
        # Offsets are in pixels of each level: divide by (W, H).
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(deformable_attention_core(level_values, locations, weights))


class DeformableEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU feed-forward net."""

    def __init__(self, dim: int, feedforward: int, levels: int, heads: int, points: int):
        super().__init__()
        self.self_attn = DeformableAttention(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, feedforward)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, reference_points: torch.Tensor,
                shapes: Sequence[tuple[int, int]]) -> torch.Tensor:
        tokens = self.norm1(tokens + self.self_attn(tokens + positions, reference_points, tokens, shapes))
        return self.norm2(tokens + self.linear2(F.relu(self.linear1(tokens))))


class DeformableEncoder(nn.Module):
    """MSDeformAttnTransformerEncoderOnly: the key names `level_embed`, `encoder.layers`."""

    def __init__(self, config: OneFormerConfig):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(TRANSFORMER_LEVELS, config.hidden))
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(config.hidden, config.encoder_feedforward, TRANSFORMER_LEVELS,
                                   config.heads, config.points)
            for _ in range(config.encoder_layers))

    @staticmethod
    def reference_points(shapes: Sequence[tuple[int, int]], batch: int, like: torch.Tensor) -> torch.Tensor:
        """Each token's own centre, (x, y) in 0..1 of its level, the same for every level (no
        padding mask, so every valid ratio is 1): BxNxLx2."""
        dtype = torch.promote_types(like.dtype, torch.float32)
        centres = []
        for height, width in shapes:
            y, x = torch.meshgrid(torch.linspace(0.5, height - 0.5, height, dtype=dtype, device=like.device) / height,
                                  torch.linspace(0.5, width - 0.5, width, dtype=dtype, device=like.device) / width,
                                  indexing="ij")
            centres.append(torch.stack((x.reshape(-1), y.reshape(-1)), -1))
        points = torch.cat(centres, 0)
        return points[None, :, None, :].expand(batch, -1, len(shapes), -1)

    def forward(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The projected maps (coarsest first) -> the same maps after the encoder."""
        batch = maps[0].shape[0]
        shapes = [tuple(m.shape[-2:]) for m in maps]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)
        positions = torch.cat([(sine_positions(m).flatten(2).transpose(1, 2) + self.level_embed[level])
                               for level, m in enumerate(maps)], 1)
        reference_points = self.reference_points(shapes, batch, tokens).to(tokens.dtype)
        for layer in self.encoder.layers:
            tokens = layer(tokens, positions, reference_points, shapes)
        levels = tokens.split([h * w for h, w in shapes], dim=1)
        return [t.transpose(1, 2).reshape(batch, -1, h, w) for t, (h, w) in zip(levels, shapes)]


class PixelDecoder(nn.Module):
    """MSDeformAttnPixelDecoder: four backbone maps -> (mask features at stride 4, the three
    encoded maps coarsest first)."""

    def __init__(self, config: OneFormerConfig, in_channels: Sequence[int]):
        super().__init__()
        hidden = config.hidden
        # res5, res4, res3 (coarsest first), as the original orders them.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden, 1), nn.GroupNorm(GROUP_NORM_GROUPS, hidden))
            for c in reversed(in_channels[1:]))
        self.transformer = DeformableEncoder(config)
        self.mask_features = nn.Conv2d(hidden, hidden, 1)
        # One extra FPN level, stride 4 (log2(8) - log2(COMMON_STRIDE 4) = 1).
        self.adapter_1 = ConvGroupNorm(in_channels[0], hidden, 1, relu=False)
        self.layer_1 = ConvGroupNorm(hidden, hidden, 3, relu=True)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        coarse = list(reversed(features[1:]))
        encoded = self.transformer([proj(f) for proj, f in zip(self.input_proj, coarse)])
        lateral = self.adapter_1(features[0])
        fine = self.layer_1(lateral + F.interpolate(encoded[-1], size=lateral.shape[-2:], mode="bilinear",
                                                    align_corners=False))
        return self.mask_features(fine), encoded


# --- transformer decoder -------------------------------------------------------------------------

class QueryDecoderLayer(nn.Module):
    """DETR's post-norm TransformerDecoderLayer: self-attention, cross-attention, feed-forward."""

    def __init__(self, dim: int, heads: int, feedforward: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.linear1 = nn.Linear(dim, feedforward)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, target: torch.Tensor, memory: torch.Tensor, memory_positions: torch.Tensor,
                query_positions: torch.Tensor) -> torch.Tensor:
        q = k = target + query_positions
        target = self.norm1(target + self.self_attn(q, k, target, need_weights=False)[0])
        attended = self.multihead_attn(target + query_positions, memory + memory_positions, memory,
                                       need_weights=False)[0]
        target = self.norm2(target + attended)
        return self.norm3(target + self.linear2(F.relu(self.linear1(target))))


class QueryTransformer(nn.Module):
    """OneFormer's `class_transformer` (DETR Transformer with no encoder layers): keys
    `decoder.layers`, `decoder.norm`."""

    def __init__(self, config: OneFormerConfig):
        super().__init__()
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(QueryDecoderLayer(config.hidden, config.heads, config.decoder_feedforward)
                                            for _ in range(config.query_layers))
        self.decoder.norm = nn.LayerNorm(config.hidden)

    def forward(self, target: torch.Tensor, memory: torch.Tensor, memory_positions: torch.Tensor,
                query_positions: torch.Tensor) -> torch.Tensor:
        for layer in self.decoder.layers:
            target = layer(target, memory, memory_positions, query_positions)
        return self.decoder.norm(target)


class AttentionSublayer(nn.Module):
    """Mask2Former's post-norm Self/CrossAttentionLayer: x = norm(x + attention(...))."""

    def __init__(self, dim: int, heads: int, attribute: str):
        super().__init__()
        self.attribute = attribute  # "self_attn" or "multihead_attn", the published key
        setattr(self, attribute, nn.MultiheadAttention(dim, heads))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        attention = getattr(self, self.attribute)
        return self.norm(x + attention(query, key, value, attn_mask=mask, need_weights=False)[0])


class FeedForwardSublayer(nn.Module):
    """Mask2Former's post-norm FFNLayer."""

    def __init__(self, dim: int, feedforward: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, feedforward)
        self.linear2 = nn.Linear(feedforward, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class MaskedTransformerDecoder(nn.Module):
    """ContrastiveMultiScaleMaskedTransformerDecoder at inference: (encoded maps, mask features,
    task token) -> (class logits BxQx(K+1), mask logits BxQxHxW at the mask features' size)."""

    def __init__(self, config: OneFormerConfig):
        super().__init__()
        hidden, heads = config.hidden, config.heads
        self.heads = heads
        self.class_transformer = QueryTransformer(config)
        self.transformer_self_attention_layers = nn.ModuleList(
            AttentionSublayer(hidden, heads, "self_attn") for _ in range(config.decoder_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            AttentionSublayer(hidden, heads, "multihead_attn") for _ in range(config.decoder_layers))
        self.transformer_ffn_layers = nn.ModuleList(
            FeedForwardSublayer(hidden, config.decoder_feedforward) for _ in range(config.decoder_layers))
        self.decoder_norm = nn.LayerNorm(hidden)
        self.query_embed = nn.Embedding(config.queries, hidden)
        self.level_embed = nn.Embedding(TRANSFORMER_LEVELS, hidden)
        # input_proj is an identity here: the encoded maps already have `hidden` channels
        # (in_channels == hidden_dim and ENFORCE_INPUT_PROJ False), so it has no weights.
        self.class_input_proj = nn.Conv2d(hidden, hidden, 1)
        self.class_embed = nn.Linear(hidden, config.classes + 1)
        self.mask_embed = MLP(hidden, hidden, hidden, 3)

    def predict(self, queries: torch.Tensor, mask_features: torch.Tensor,
                attention_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """forward_prediction_heads: class logits, mask logits, and where each query may not
        attend at the next layer ((B*heads)xQx(h*w), True = blocked)."""
        normed = self.decoder_norm(queries).transpose(0, 1)  # (B, Q, C)
        class_logits = self.class_embed(normed)
        mask_logits = torch.einsum("bqc,bchw->bqhw", self.mask_embed(normed), mask_features)
        resized = F.interpolate(mask_logits, size=tuple(attention_size), mode="bilinear", align_corners=False)
        blocked = resized.sigmoid().flatten(2) < MASK_ATTENTION_THRESHOLD
        blocked = blocked.unsqueeze(1).expand(-1, self.heads, -1, -1).flatten(0, 1)
        return class_logits, mask_logits, blocked

    def forward(self, encoded: Sequence[torch.Tensor], mask_features: torch.Tensor,
                task: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = mask_features.shape[0]
        sizes = [m.shape[-2:] for m in encoded]
        memories = [(m.flatten(2) + self.level_embed.weight[i][None, :, None]).permute(2, 0, 1)
                    for i, m in enumerate(encoded)]  # (HW, B, C)
        positions = [sine_positions(m).flatten(2).permute(2, 0, 1) for m in encoded]
        query_positions = self.query_embed.weight[:, None, :].expand(-1, batch, -1)  # (Q, B, C)

        # Initial queries: the task token (USE_TASK_NORM) decoded against the mask features, with
        # the roles the original gives them: the sine positions of the mask features are the
        # memory and their projection is its position embedding.
        task = self.decoder_norm(task)[None]  # (1, B, C)
        memory = sine_positions(mask_features).flatten(2).permute(2, 0, 1)
        memory_positions = self.class_input_proj(mask_features).flatten(2).permute(2, 0, 1)
        first = self.class_transformer(task.expand(query_positions.shape[0] - 1, -1, -1), memory,
                                       memory_positions, query_positions[:-1])
        queries = torch.cat([first, task], 0)  # the task token itself is the last query

        class_logits, mask_logits, blocked = self.predict(queries, mask_features, sizes[0])
        for i, (cross, self_attention, ffn) in enumerate(zip(self.transformer_cross_attention_layers,
                                                             self.transformer_self_attention_layers,
                                                             self.transformer_ffn_layers)):
            level = i % TRANSFORMER_LEVELS
            # A query whose mask is empty everywhere attends everywhere (instead of nowhere).
            blocked = blocked & ~blocked.all(-1, keepdim=True)
            memory = memories[level]
            queries = cross(queries, queries + query_positions, memory + positions[level], memory, blocked)
            q = queries + query_positions
            queries = self_attention(queries, q, q, queries)
            queries = ffn(queries)
            class_logits, mask_logits, blocked = self.predict(queries, mask_features,
                                                              sizes[(i + 1) % TRANSFORMER_LEVELS])
        return class_logits, mask_logits


class SemSegHead(nn.Module):
    def __init__(self, config: OneFormerConfig, in_channels: Sequence[int]):
        super().__init__()
        self.pixel_decoder = PixelDecoder(config, in_channels)
        self.predictor = MaskedTransformerDecoder(config)


class OneFormerNetwork(nn.Module):
    """Input: Bx3xHxW normalised image (sides multiples of 32) and the task's token ids (BxT);
    output: class logits BxQx(K+1) and mask logits BxQx(H/4)x(W/4)."""

    def __init__(self, config: OneFormerConfig):
        super().__init__()
        self.config = config
        self.backbone = SwinBackbone(config.swin)
        widths = [config.swin.embed_dim * 2 ** i for i in range(len(config.swin.depths))]
        self.sem_seg_head = SemSegHead(config, widths)
        self.task_mlp = MLP(config.task_tokens, config.hidden, config.hidden, 2)

    def forward(self, image: torch.Tensor, task_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        task = self.task_mlp(task_tokens.to(image.dtype))
        features = self.backbone(image)
        mask_features, encoded = self.sem_seg_head.pixel_decoder(features)
        return self.sem_seg_head.predictor(encoded, mask_features, task)


def build_oneformer(state_dict: dict[str, torch.Tensor]) -> OneFormerNetwork:
    """An empty OneFormerNetwork shaped for `state_dict` (a checkpoint's network weights)."""
    return OneFormerNetwork(OneFormerConfig.from_state_dict(state_dict))
