"""The ControlNet (Zhang & Agrawala 2023) for the Stable Diffusion U-Net family.

    y_c = F(x; Θ) + Z(F(x + Z(c; Θz1); Θc); Θz2)

`ControlNet` is the trainable copy F(·; Θc) of the U-Net encoder (time embedding, input blocks,
middle block), the hint encoder that turns the condition image c into a latent-sized feature
map, and the zero convolutions Z that produce one residual per encoder block plus one for the
middle block. Module names follow the original `cldm/cldm.py`, so original-layout checkpoints
load with no renaming; layer classes come from an `ops` namespace (torch.nn by default) so a
host can supply its own weight-casting layers.

Residual order (documented contract): `forward` returns a list in input-block order,
`[zero_convs[0](h_0), ..., zero_convs[N-1](h_{N-1}), middle_block_out(h_mid)]`; residual i is
added to the U-Net skip connection of input block i, the last one after the middle block.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import BlockSpec, ControlNetConfig
from .cpu_conv import large_kernel_conv2d

TORCH_OPS = SimpleNamespace(Linear=nn.Linear, Conv2d=nn.Conv2d, GroupNorm=nn.GroupNorm, LayerNorm=nn.LayerNorm)
GROUP_NORM_GROUPS = 32  # GroupNorm32 in the original code
TRANSFORMER_NORM_EPS = 1e-6  # SpatialTransformer's GroupNorm
FEED_FORWARD_MULT = 4


def with_large_kernel_convs(ops: Any) -> SimpleNamespace:
    """The host's layers, its Conv2d running large kernels on small CPU maps as a matrix
    product (cpu_conv: the same convolution, without oneDNN's per-call copy of the kernel)."""
    return SimpleNamespace(
        Linear=ops.Linear, Conv2d=large_kernel_conv2d(ops.Conv2d), GroupNorm=ops.GroupNorm, LayerNorm=ops.LayerNorm
    )


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos, sin] of (fractional) timesteps, as in the original code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def repeat_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` with its batch tiled to `rows` rows (row i of the result is row i mod its batch);
    itself when it has them already."""
    if tensor.shape[0] == rows:
        return tensor
    return tensor.repeat(rows // tensor.shape[0], *([1] * (tensor.ndim - 1)))


def zero_module(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int, ops: Any, **kw: Any):
        super().__init__()
        self.in_layers = nn.Sequential(
            ops.GroupNorm(GROUP_NORM_GROUPS, channels, **kw), nn.SiLU(), ops.Conv2d(channels, out_channels, 3, padding=1, **kw)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), ops.Linear(emb_channels, out_channels, **kw))
        self.out_layers = nn.Sequential(
            ops.GroupNorm(GROUP_NORM_GROUPS, out_channels, **kw),
            nn.SiLU(),
            nn.Dropout(0.0),
            ops.Conv2d(out_channels, out_channels, 3, padding=1, **kw),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else ops.Conv2d(channels, out_channels, 1, **kw)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[..., None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int, out_channels: int, ops: Any, **kw: Any):
        super().__init__()
        self.op = ops.Conv2d(channels, out_channels, 3, stride=2, padding=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, ops: Any, **kw: Any):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = ops.Linear(query_dim, inner, bias=False, **kw)
        self.to_k = ops.Linear(context_dim, inner, bias=False, **kw)
        self.to_v = ops.Linear(context_dim, inner, bias=False, **kw)
        self.to_out = nn.Sequential(ops.Linear(inner, query_dim, **kw), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, n, _ = q.shape
        q, k, v = (t.reshape(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, ops: Any, **kw: Any):
        super().__init__()
        self.proj = ops.Linear(dim_in, dim_out * 2, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, ops: Any, **kw: Any):
        super().__init__()
        inner = dim * FEED_FORWARD_MULT
        self.net = nn.Sequential(GEGLU(dim, inner, ops, **kw), nn.Dropout(0.0), ops.Linear(inner, dim, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, ops: Any, **kw: Any):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head, ops, **kw)
        self.ff = FeedForward(dim, ops, **kw)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head, ops, **kw)
        self.norm1 = ops.LayerNorm(dim, **kw)
        self.norm2 = ops.LayerNorm(dim, **kw)
        self.norm3 = ops.LayerNorm(dim, **kw)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        # the first use of the context: rows given once for several contexts are tiled here
        # (ControlNet.forward)
        x = repeat_rows(x, context.shape[0])
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(
        self, channels: int, depth: int, cfg: ControlNetConfig, ops: Any, **kw: Any
    ):
        super().__init__()
        heads, dim_head = cfg.heads_for(channels)
        inner = heads * dim_head
        self.use_linear = cfg.use_linear_projection
        self.norm = ops.GroupNorm(GROUP_NORM_GROUPS, channels, eps=TRANSFORMER_NORM_EPS, **kw)
        if self.use_linear:
            self.proj_in = ops.Linear(channels, inner, **kw)
            self.proj_out = ops.Linear(inner, channels, **kw)
        else:
            self.proj_in = ops.Conv2d(channels, inner, 1, **kw)
            self.proj_out = ops.Conv2d(inner, channels, 1, **kw)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, cfg.context_dim, ops, **kw) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        # contiguous: the transposed view is channels-last in memory, and a channels-last input
        # makes every later convolution re-lay-out its weights at each call (profiled on CPU:
        # a fifth of the forward time at SD1.5 width)
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w).contiguous()
        if not self.use_linear:
            x = self.proj_out(x)
        return x + repeat_rows(x_in, x.shape[0])  # x has the context's rows now


class TimestepEmbedSequential(nn.Sequential):
    """Runs its layers in order, giving each the inputs it needs."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, repeat_rows(emb, x.shape[0]))
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


def hint_encoder(cfg: ControlNetConfig, ops: Any, **kw: Any) -> nn.Sequential:
    """Condition image (8x latent size) -> latent-sized features. Checkpoints follow the code, not
    the paper's text: 3x3 convs with SiLU, a same-width conv then a stride-2 widening conv per
    step, and a zero conv to model_channels."""
    widths = cfg.hint_encoder_channels
    layers: list[nn.Module] = [ops.Conv2d(cfg.hint_channels, widths[0], 3, padding=1, **kw), nn.SiLU()]
    for c_in, c_out in zip(widths[:-1], widths[1:]):
        layers += [ops.Conv2d(c_in, c_in, 3, padding=1, **kw), nn.SiLU()]
        layers += [ops.Conv2d(c_in, c_out, 3, padding=1, stride=2, **kw), nn.SiLU()]
    layers.append(zero_module(ops.Conv2d(widths[-1], cfg.model_channels, 3, padding=1, **kw)))
    return nn.Sequential(*layers)


class ControlNet(nn.Module):
    def __init__(
        self,
        cfg: ControlNetConfig,
        ops: Any = TORCH_OPS,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        ops = with_large_kernel_convs(ops)
        self.config = cfg
        # The dtype forward computes in; None: the weights' dtype. A host that stores weights in
        # a smaller dtype than it computes in (ComfyUI's manual_cast) sets it and supplies layers
        # (`ops`) that cast each weight to their input's dtype.
        self.compute_dtype: torch.dtype | None = None
        mc = cfg.model_channels
        emb_dim = cfg.time_embed_dim or mc * 4
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim, **kw), nn.SiLU(), ops.Linear(emb_dim, emb_dim, **kw))
        if cfg.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(ops.Linear(cfg.adm_in_channels, emb_dim, **kw), nn.SiLU(), ops.Linear(emb_dim, emb_dim, **kw))
            )
        self.input_hint_block = hint_encoder(cfg, ops, **kw)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(ops.Conv2d(cfg.in_channels, mc, 3, padding=1, **kw))])
        self.zero_convs = nn.ModuleList([self._zero_conv(mc, ops, kw)])
        ch = mc
        for block in cfg.input_blocks:
            self.input_blocks.append(self._encoder_block(block, ch, emb_dim, ops, kw))
            ch = block.out_channels
            self.zero_convs.append(self._zero_conv(ch, ops, kw))

        middle: list[nn.Module] = [ResBlock(ch, emb_dim, ch, ops, **kw)]
        if cfg.middle_transformer_depth is not None:
            middle.append(SpatialTransformer(ch, cfg.middle_transformer_depth, cfg, ops, **kw))
        middle.append(ResBlock(ch, emb_dim, ch, ops, **kw))
        self.middle_block = TimestepEmbedSequential(*middle)
        self.middle_block_out = self._zero_conv(ch, ops, kw)

    def _encoder_block(self, block: BlockSpec, ch: int, emb_dim: int, ops: Any, kw: dict) -> TimestepEmbedSequential:
        if block.kind == "down":
            return TimestepEmbedSequential(Downsample(ch, block.out_channels, ops, **kw))
        layers: list[nn.Module] = [ResBlock(ch, emb_dim, block.out_channels, ops, **kw)]
        if block.transformer_depth:
            layers.append(SpatialTransformer(block.out_channels, block.transformer_depth, self.config, ops, **kw))
        return TimestepEmbedSequential(*layers)

    @staticmethod
    def _zero_conv(channels: int, ops: Any, kw: dict) -> nn.Sequential:
        return nn.Sequential(zero_module(ops.Conv2d(channels, channels, 1, **kw)))

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    @property
    def dtype(self) -> torch.dtype:
        """The dtype inputs are cast to and outputs come in (ComfyUI's wrappers read `.dtype`)."""
        return self.compute_dtype or self.weight_dtype

    def encode_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """Z(c; Θz1) before it is added: depends only on the image, so callers may cache it."""
        if self.config.bgr_hint:
            hint = hint.flip(1)
        return self.input_hint_block(hint)

    def time_embedding(self, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(self.dtype))
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ValueError("this ControlNet (SDXL-style) needs `y`, the pooled text + size embedding")
            emb = emb + self.label_emb(y.to(emb.dtype))
        return emb

    def forward(
        self,
        x: torch.Tensor,
        hint: torch.Tensor | None,
        timesteps: torch.Tensor,
        context: torch.Tensor | None,
        y: torch.Tensor | None = None,
        encoded_hint: torch.Tensor | None = None,
        extra_embedding: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Residuals in input-block order plus the middle one (see module docstring).

        Pass `encoded_hint` (from `encode_hint`) instead of `hint` to reuse a cached encoding.
        `extra_embedding` is added to the time embedding (a Union's control-type embedding).

        `context` may have k times the rows of `x` (and of `timesteps`, `y`, the hint): the
        inputs are then the same for k contexts, as CFG's cond and uncond rows of one latent
        are. Everything before the first cross-attention is the same for those rows, so it runs
        once; the rows are tiled there (row i of the result pairs with context row i, input row
        i mod len(x)), and the residuals have the context's rows.
        """
        if context is not None and context.shape[0] % x.shape[0]:
            raise ValueError(
                f"context has {context.shape[0]} rows and x {x.shape[0]}: give as many context rows as x rows, "
                "or a multiple of them"
            )
        guided_hint = self.encode_hint(hint) if encoded_hint is None else encoded_hint
        emb = self.time_embedding(timesteps, y)
        if extra_embedding is not None:
            emb = emb + extra_embedding
        context = context.to(self.dtype) if context is not None else None
        h = self.input_blocks[0](x.to(self.dtype), emb, context)
        return self.residuals_from(h + guided_hint, emb, context)  # x + Z(c; Θz1) enters after conv_in

    def residuals_from(self, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor | None) -> list[torch.Tensor]:
        """Run the trainable copy from conv_in(x) + encoded condition; one zero conv per block."""
        outs = [self.zero_convs[0](h)]
        for block, zero_conv in zip(self.input_blocks[1:], self.zero_convs[1:]):
            h = block(h, emb, context)
            outs.append(zero_conv(h))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h))
        rows = h.shape[0] if context is None else context.shape[0]
        outs = [repeat_rows(o, rows) for o in outs]  # those from before the first cross-attention
        if self.config.global_average_pooling:
            outs = [o.mean(dim=(2, 3), keepdim=True) for o in outs]
        return outs
