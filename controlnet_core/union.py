"""ControlNet Union / ProMax (xinsir `controlnet-union-sdxl-1.0`): one SDXL ControlNet, many
condition types.

It is an ordinary SDXL ControlNet plus a small "which condition is this" front end:

1. the active condition types become a multi-hot vector; its sinusoidal embedding goes through
   `control_add_embedding` and is added to the time embedding;
2. every condition image goes through the shared hint encoder; its spatial mean plus the
   type's `task_embedding` row is one token; one more token is the spatial mean of conv_in(x);
3. the tokens pass through `transformer_layes` (a CLIP-style block; the name is misspelled in
   the published files and kept), and `spatial_ch_projs` turns each condition's token into a
   per-channel offset: fused = Σ_i (encoded_hint_i + offset_i);
4. the ControlNet runs as usual with conv_in(x) + fused in place of conv_in(x) + encoded_hint.

Numerics follow diffusers' `ControlNetUnionModel`, itself a copy of xinsir's training code
(`ControlNetPlus/models/controlnet_union.py`). ComfyUI's port differs: it uses only the first
condition, drops the sample token and attends across tokens (see `FusionAttention`).

Module names: the shared ControlNet parts keep the original `cldm.py` names of `ControlNet`, so
the diffusers -> original table in `formats.py` maps them; the union modules keep the names
they have in the published files, except `attn.in_proj_weight`/`_bias`, which become a Linear
`attn.in_proj` (so a host's `ops.Linear` can cast it, as ComfyUI does).

Residual order: as `ControlNet.forward`, input-block order with the middle residual last.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import ControlNetConfig, config_from_state_dict
from .errors import ControlNetFormatError
from .files import WeightFile, assign_weights
from .formats import diffusers_to_original_keys
from .model import TORCH_OPS, ControlNet, timestep_embedding

# Condition types and their indices (xinsir's model card; ComfyUI comfy/cldm/control_types.py).
UNION_CONTROL_TYPES = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,  # ProMax only
    "repaint": 7,  # ProMax only (inpaint / outpaint)
}
PROMAX_ONLY_TYPES = (UNION_CONTROL_TYPES["tile"], UNION_CONTROL_TYPES["repaint"])
# Heads of the fusion block: not visible in the weights. xinsir's and diffusers' `num_trans_head`
# default, hard-coded in ComfyUI (comfy/cldm/cldm.py).
UNION_FUSION_HEADS = 8
QUICK_GELU_SCALE = 1.702  # CLIP's QuickGELU: x * sigmoid(1.702 x)
MLP_MULT = 4  # CLIP block MLP width (c_fc: dim -> 4 dim)

# Modules only a union file has, under the names the published files use.
UNION_MODULES = ("task_embedding", "transformer_layes.", "spatial_ch_projs.", "control_add_embedding.")
# File name -> our name, for the one union weight stored differently (nn.MultiheadAttention's
# packed q/k/v projection is a plain Parameter pair in the file, a Linear here).
_PACKED_QKV = re.compile(r"(transformer_layes\.\d+\.attn)\.in_proj_(weight|bias)")
_FUSION_LAYER = re.compile(r"transformer_layes\.(\d+)\.ln_1\.weight")


@dataclass(frozen=True)
class UnionSpec:
    """The union front end's shape, read off its weights."""

    num_control_types: int  # task_embedding rows: 6 (Union) or 8 (ProMax)
    token_channels: int  # width of the condition tokens (= the ControlNet's model_channels)
    fusion_layers: int  # CLIP-style blocks in transformer_layes
    control_type_embed_dim: int  # sinusoidal width per control type (256 in the published files)
    fusion_heads: int = UNION_FUSION_HEADS


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(QUICK_GELU_SCALE * x)


class FusionAttention(nn.Module):
    """Self-attention of the fusion block, with the quirk the weights were trained with.

    xinsir's code feeds a (batch, tokens, channels) tensor to `nn.MultiheadAttention` built
    without `batch_first`, which reads the first axis as the sequence: each token position
    attends across the *batch*, never to the other tokens. diffusers keeps this; ComfyUI attends
    across tokens. We reproduce the reference (and the training run)."""

    def __init__(self, dim: int, heads: int, ops: Any, **kw: Any):
        super().__init__()
        self.heads = heads
        self.in_proj = ops.Linear(dim, 3 * dim, **kw)  # q, k, v stacked, as nn.MultiheadAttention packs them
        self.out_proj = ops.Linear(dim, dim, **kw)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        seq = tokens.transpose(0, 1)  # (tokens, batch, C): one batch-long sequence per token position
        n, length, channels = seq.shape
        q, k, v = (
            t.reshape(n, length, self.heads, channels // self.heads).transpose(1, 2)
            for t in self.in_proj(seq).chunk(3, dim=-1)
        )
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, channels)
        return self.out_proj(out).transpose(0, 1)


class FusionBlock(nn.Module):
    """CLIP's ResidualAttentionBlock: pre-norm attention, then a QuickGELU MLP."""

    def __init__(self, dim: int, heads: int, ops: Any, **kw: Any):
        super().__init__()
        self.attn = FusionAttention(dim, heads, ops, **kw)
        self.ln_1 = ops.LayerNorm(dim, **kw)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", ops.Linear(dim, dim * MLP_MULT, **kw))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", ops.Linear(dim * MLP_MULT, dim, **kw))
        self.ln_2 = ops.LayerNorm(dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ControlTypeEmbedding(nn.Module):
    """Multi-hot control-type vector -> time-embedding offset (diffusers' TimestepEmbedding)."""

    def __init__(self, in_dim: int, out_dim: int, ops: Any, **kw: Any):
        super().__init__()
        self.linear_1 = ops.Linear(in_dim, out_dim, **kw)
        self.linear_2 = ops.Linear(out_dim, out_dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UnionControlNet(ControlNet):
    """An SDXL `ControlNet` that takes one or more (condition image, control type) pairs."""

    def __init__(
        self,
        cfg: ControlNetConfig,
        union: UnionSpec,
        ops: Any = TORCH_OPS,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__(cfg, ops=ops, dtype=dtype, device=device)
        if union.token_channels != cfg.model_channels:
            raise ControlNetFormatError(
                f"union tokens are {union.token_channels} wide but the ControlNet is {cfg.model_channels} wide"
            )
        kw = {"dtype": dtype, "device": device}
        self.union = union
        emb_dim = cfg.time_embed_dim or cfg.model_channels * 4  # as ControlNet.__init__
        self.task_embedding = nn.Parameter(torch.empty(union.num_control_types, union.token_channels, **kw))
        self.transformer_layes = nn.ModuleList(
            FusionBlock(union.token_channels, union.fusion_heads, ops, **kw) for _ in range(union.fusion_layers)
        )
        self.spatial_ch_projs = ops.Linear(union.token_channels, cfg.model_channels, **kw)
        self.control_add_embedding = ControlTypeEmbedding(
            union.control_type_embed_dim * union.num_control_types, emb_dim, ops, **kw
        )

    def control_type_embedding(self, types: Sequence[int], batch: int) -> torch.Tensor:
        """Embedding of the multi-hot vector of active types: each of its 0/1 entries gets the
        same sinusoidal embedding as a timestep would, the N embeddings are concatenated."""
        multi_hot = torch.zeros(self.union.num_control_types, device=self.task_embedding.device)
        multi_hot[list(types)] = 1.0
        sinusoids = timestep_embedding(multi_hot, self.union.control_type_embed_dim).reshape(1, -1)
        return self.control_add_embedding(sinusoids.to(self.dtype)).expand(batch, -1)

    def fuse_conditions(
        self, sample: torch.Tensor | None, hints: Sequence[torch.Tensor], types: Sequence[int], scales: Sequence[float]
    ) -> torch.Tensor:
        """Σ_i (encoded hint_i + per-channel offset from its token), to add to conv_in(x) (the
        `sample`; None: the hints' batch, no sample token)."""
        batch = max(hint.shape[0] for hint in hints) if sample is None else sample.shape[0]
        weighted = len(hints) > 1  # diffusers scales inside the fusion only with several conditions
        encoded, tokens = [], []
        for hint, control_type, scale in zip(hints, types, scales):
            condition = self.encode_hint(hint.to(self.dtype)).expand(batch, -1, -1, -1)
            token = condition.mean(dim=(2, 3)) + self.task_embedding[control_type]
            encoded.append(condition * scale if weighted else condition)
            tokens.append(token * scale if weighted else token)
        # The sample token, as in the reference. With the batch-axis attention it cannot reach
        # the condition tokens, but it is part of the reference computation.
        if sample is not None:
            tokens.append(sample.mean(dim=(2, 3)))
        x = torch.stack(tokens, dim=1)  # (batch, tokens, channels)
        for layer in self.transformer_layes:
            x = layer(x)
        fused = torch.zeros_like(encoded[0])
        for i, (condition, scale) in enumerate(zip(encoded, scales)):
            offset = self.spatial_ch_projs(x[:, i])[..., None, None]
            fused = fused + condition + (offset * scale if weighted else offset)
        return fused

    def encode_condition(self, hint: torch.Tensor, control_types: Sequence[int] = ()) -> torch.Tensor:
        """What `forward` adds to conv_in(x) for one hint image batch (B×3×H×W, 0..1) of the given
        control types: `encode_conditions` with that hint for each type. With no control type
        (ComfyUI's "auto", or no Set Union ControlNet Type), the hint goes through the hint
        encoder alone, as in ComfyUI."""
        if not control_types:
            return self.encode_hint(hint.to(self.dtype))
        return self.encode_conditions([hint] * len(control_types), control_types)

    def encode_conditions(
        self, hints: Sequence[torch.Tensor], control_types: Sequence[int], weights: Sequence[float] | None = None
    ) -> torch.Tensor:
        """What `forward` adds to conv_in(x) for several conditions: hint k (B_k×3×H×W, 0..1; B_k
        is 1 or the largest batch) of control type k, weighted by `weights[k]` inside the fusion
        when there are several (diffusers' conditioning_scale; with one condition a weight
        scales the residuals, which is the caller's job here). Image i of the batch is fused
        with image i of the other hints only. Depends on the images alone, so callers may cache
        it and pass it as `forward`'s `encoded_hint`, with the same `control_types`.

        The sample token never reaches the condition tokens (the fusion attends across the
        batch, token position by token position), so it is left out. Fusing each image alone
        keeps an image's control independent of the others in its batch, as in ComfyUI's port;
        the reference mixes distinct images of one batch (`forward` keeps that)."""
        self.check_types(control_types)
        weights = [1.0] * len(hints) if weights is None else list(weights)
        if not hints or len(control_types) != len(hints) or len(weights) != len(hints):
            raise ValueError(f"{len(hints)} hints, {len(control_types)} control types and {len(weights)} weights: give one of each per condition")
        batch = max(hint.shape[0] for hint in hints)
        if any(hint.shape[0] not in (1, batch) for hint in hints):
            raise ValueError(f"hint batches of {[hint.shape[0] for hint in hints]} images: each must have 1 or {batch}")
        hints = [hint.to(self.dtype) for hint in hints]

        def image(hint: torch.Tensor, i: int) -> torch.Tensor:
            return hint[i : i + 1] if hint.shape[0] > 1 else hint

        return torch.cat([self.fuse_conditions(None, [image(h, i) for h in hints], control_types, weights) for i in range(batch)])

    def forward(  # type: ignore[override]  # conditions replace ControlNet's single hint
        self,
        x: torch.Tensor,
        conditions: Sequence[tuple[torch.Tensor, int]] | None,
        timesteps: torch.Tensor,
        context: torch.Tensor | None,
        y: torch.Tensor | None = None,
        scales: Sequence[float] | None = None,
        encoded_hint: torch.Tensor | None = None,
        control_types: Sequence[int] = (),
    ) -> list[torch.Tensor]:
        """Residuals in input-block order plus the middle one (as `ControlNet.forward`).

        `conditions`: (hint image B×3×H×W in 0..1 at 8x latent size, control type index) pairs;
        indices as in `UNION_CONTROL_TYPES`. `scales` (one per condition, default 1) follow
        diffusers: with one condition they scale the residuals, with several they weight each
        condition inside the fusion.

        Or, instead of `conditions`, a cached `encoded_hint = encode_condition(hint, control_types)`
        and those `control_types`. `context` may then have k times the rows of `x`, as for
        `ControlNet.forward`.
        """
        if encoded_hint is not None:
            self.check_types(control_types)
            type_embedding = self.control_type_embedding(control_types, timesteps.shape[0])
            return super().forward(x, None, timesteps, context, y, encoded_hint=encoded_hint, extra_embedding=type_embedding)
        if not conditions:
            raise ValueError("a ControlNet Union needs at least one (hint, control type) condition")
        hints = [hint for hint, _ in conditions]
        types = [int(control_type) for _, control_type in conditions]
        scales = [1.0] * len(conditions) if scales is None else list(scales)
        if len(scales) != len(conditions):
            raise ValueError(f"{len(scales)} scales for {len(conditions)} conditions")
        self.check_types(types)

        emb = self.time_embedding(timesteps, y) + self.control_type_embedding(types, x.shape[0])
        context = context.to(self.dtype) if context is not None else None
        h = self.input_blocks[0](x.to(self.dtype), emb, context)  # conv_in
        outs = self.residuals_from(h + self.fuse_conditions(h, hints, types, scales), emb, context)
        if len(conditions) == 1 and scales[0] != 1.0:
            outs = [o * scales[0] for o in outs]
        return outs

    def check_types(self, types: Sequence[int]) -> None:
        """Refuse control type indices this model has no embedding for, naming them."""
        names = {index: name for name, index in UNION_CONTROL_TYPES.items()}
        for t in types:
            if not 0 <= t < self.union.num_control_types:
                hint = " Tile and repaint need the ProMax model (8 types)." if t in PROMAX_ONLY_TYPES else ""
                raise ValueError(
                    f"control type {names.get(t, '?')} ({t}) is out of range: this ControlNet Union knows "
                    f"{self.union.num_control_types} types.{hint}"
                )


# --- loading ----------------------------------------------------------------------------------


def union_sources(file_keys: Sequence[str]) -> dict[str, str]:
    """{our key: file key} for a diffusers-format union file; the shared ControlNet part goes
    through the diffusers -> original table, the union modules keep their names."""
    sources = diffusers_to_original_keys(file_keys)
    for key in file_keys:
        if key.startswith(UNION_MODULES):
            sources[_PACKED_QKV.sub(r"\1.in_proj.\2", key)] = key
    return sources


def union_spec(shapes: dict[str, Sequence[int]], source: str = "the file") -> UnionSpec:
    """The union front end's shape from the file's (diffusers-named) shapes."""
    for key in ("task_embedding", "control_add_embedding.linear_1.weight"):
        if key not in shapes:
            raise ControlNetFormatError(f"{source} has no '{key}': it is not a ControlNet Union/ProMax")
    num_types, token_channels = (int(n) for n in shapes["task_embedding"])
    type_embed_total = int(shapes["control_add_embedding.linear_1.weight"][1])
    if type_embed_total % num_types:
        raise ControlNetFormatError(
            f"{source}: control_add_embedding takes {type_embed_total} inputs, not a multiple of {num_types} types"
        )
    layers = {int(m.group(1)) for k in shapes for m in [_FUSION_LAYER.fullmatch(k)] if m}
    return UnionSpec(num_types, token_channels, len(layers), type_embed_total // num_types)


def load_union(
    weights: WeightFile,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    ops: Any = TORCH_OPS,
    heads: dict | None = None,
) -> UnionControlNet:
    """Load a diffusers-format ControlNet Union/ProMax file. `heads` is the attention head split
    (`{"head_channels": 64}` or `{"num_heads": n}`) when a config.json says it; default: the
    family's (64-channel heads for SDXL)."""
    source = f"'{os.path.basename(weights.path)}'"
    sources = union_sources(list(weights.shapes))
    shared = {ours: weights.shapes[theirs] for ours, theirs in sources.items() if not ours.startswith(UNION_MODULES)}
    cfg = config_from_state_dict(shared, heads, source)
    spec = union_spec(weights.shapes, source)
    with torch.device("meta"):
        model = UnionControlNet(cfg, spec, ops=ops, dtype=dtype)

    # Strict both ways: a weight we would silently drop means a model we do not understand.
    used = {sources[key] for key in model.state_dict() if key in sources}
    leftover = sorted(set(weights.shapes) - used)
    if leftover:
        raise ControlNetFormatError(
            f"{source} has weights a ControlNet Union does not have ({', '.join(leftover[:3])}"
            f"{', ...' if len(leftover) > 3 else ''}): it is another model or was converted wrongly"
        )

    def read(key: str) -> torch.Tensor:
        if key not in sources:
            # Union weights: name them as the file would; shared ones by their original name.
            raise KeyError(key.replace(".attn.in_proj.", ".attn.in_proj_") if key.startswith(UNION_MODULES) else key)
        return weights[sources[key]]

    return assign_weights(model, read, dtype, device, source, "ControlNet Union")
