"""Tiny ControlNet configs in the three families' shapes, with random weights.

diffusers-style: small widths (multiples of 64, so heads are 64 channels wide as our loader and
ComfyUI assume for non-standard widths), the real block topology:
12 input blocks + middle for SD1.x/SD2.x (4 levels), 9 + middle for SDXL (3 levels).
"""

from __future__ import annotations

import torch

# Keyword arguments for diffusers.ControlNetModel.
DIFFUSERS_CONFIGS = {
    "SD1.x": dict(
        block_out_channels=(64, 128, 128, 128),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        cross_attention_dim=32,
        attention_head_dim=[1, 2, 2, 2],  # diffusers' name for head counts: 64-channel heads
        layers_per_block=2,
    ),
    "SD2.x": dict(
        block_out_channels=(64, 128, 128, 128),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        cross_attention_dim=48,
        attention_head_dim=[1, 2, 2, 2],  # 64-channel heads, as SD2.x
        use_linear_projection=True,
        layers_per_block=2,
        conditioning_embedding_out_channels=(8, 16, 32, 32),
    ),
    "SDXL": dict(
        block_out_channels=(64, 128, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        transformer_layers_per_block=[0, 1, 2],
        cross_attention_dim=64,
        attention_head_dim=[1, 2, 2],
        use_linear_projection=True,
        layers_per_block=2,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,  # pooled text (32) + 6 size ids x 8
        conditioning_embedding_out_channels=(16, 32, 48, 64),
    ),
}
SDXL_POOLED_DIM = 32
LATENT = 16  # latent side; the hint is 8x larger


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere, zero convolutions included (so residuals are non-trivial).

    Norm scales stay near 1 and weights are scaled by fan-in so activations keep unit size
    through the depth of the network."""
    gen = torch.Generator().manual_seed(seed)
    for name, sub in sorted(module.named_modules()):
        for pname, p in sorted(sub.named_parameters(recurse=False)):
            if isinstance(sub, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and pname == "weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif p.ndim == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5)
    return module


def inputs(family: str, batch: int = 2, seed: int = 1, context_dim: int | None = None):
    """x, hint, timesteps, context (and SDXL text_embeds, time_ids) for a tiny config."""
    gen = torch.Generator().manual_seed(seed)
    cfg = DIFFUSERS_CONFIGS[family]
    ctx = context_dim or cfg["cross_attention_dim"]
    x = torch.randn(batch, 4, LATENT, LATENT, generator=gen)
    hint = torch.rand(batch, 3, LATENT * 8, LATENT * 8, generator=gen)
    t = torch.tensor([981.0, 21.0][:batch])
    context = torch.randn(batch, 7, ctx, generator=gen)
    extra = {}
    if family == "SDXL":
        extra = {
            "text_embeds": torch.randn(batch, SDXL_POOLED_DIM, generator=gen),
            "time_ids": torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * batch),
        }
    return x, hint, t, context, extra
