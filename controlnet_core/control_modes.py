"""How much of each ControlNet residual reaches the U-Net: control modes, block weights, masks.

Pure functions over lists of residuals (no ComfyUI). A ControlNet returns N residuals in
input-block order, the middle block last (N = 13 for SD1.x/SD2.x, 10 for SDXL); residual i is
multiplied by a weight w_i before it is added to the U-Net, and some modes give control to the
conditional rows of the classifier-free-guidance batch only.

| mode                      | w_i                              | rows            |
|---------------------------|----------------------------------|-----------------|
| balanced                  | s                                | cond and uncond |
| prompt_more_important     | s · 0.825^(N−1−i)                | cond and uncond |
| controlnet_more_important | s · 0.825^(N−1−i)  ("guess mode") | cond only       |
| cfg_resolution_weighting  | s · 64 / h_i                     | cond only       |

s is the strength, i = 0 the shallowest residual, i = N−1 the middle block (weight s), h_i the
side of residual i's feature map for a 512 px image (64, 32, 16, 8). In the two modes that control
both branches, an uncond multiplier u (Advanced-ControlNet's `uncond_multiplier`) further weights
the unconditional rows by u: u = 0 gives them no control (prompt_more_important with u = 0 is
controlnet_more_important).

A T2I-Adapter gives 4 features, finest first, that take the place of the residuals: the same
table holds, with A1111's adapter soft weights (0.25, 0.62, 0.825, 1.0) in place of 0.825^(N−1−i).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import ControlNetError

BALANCED = "balanced"
PROMPT_MORE_IMPORTANT = "prompt_more_important"
CONTROLNET_MORE_IMPORTANT = "controlnet_more_important"
CFG_RESOLUTION_WEIGHTING = "cfg_resolution_weighting"
CONTROL_MODES = (BALANCED, PROMPT_MORE_IMPORTANT, CONTROLNET_MORE_IMPORTANT, CFG_RESOLUTION_WEIGHTING)
COND_ONLY_MODES = (CONTROLNET_MORE_IMPORTANT, CFG_RESOLUTION_WEIGHTING)

# Guess mode in the original gradio demos (gradio_canny2image.py etc.):
# `control_scales = [strength * (0.825 ** float(12 - i)) for i in range(13)]`.
SOFT_WEIGHT_BASE = 0.825
# Paper §3.4, "CFG resolution weighting": w_i = 64 / h_i, where 64 is the latent side of a
# 512 px image (512 / 8, the VAE's downscale) and h_i the side of block i at that size.
CFG_RW_LATENT_SIDE = 64
# A1111 sd-webui-controlnet scripts/hook.py, soft injection for a T2I_Adapter:
# `control_scales = [param.weight * x for x in (0.25, 0.62, 0.825, 1.0)]`, one per feature.
ADAPTER_SOFT_WEIGHTS = (0.25, 0.62, 0.825, 1.0)

# Entries of the cond_or_uncond list ComfyUI passes in transformer_options (samplers.py).
COND, UNCOND = 0, 1


def soft_weights(num_residuals: int) -> list[float]:
    """0.825^(N−1−i): the middle block (last) keeps 1.0, shallower residuals fade."""
    return [SOFT_WEIGHT_BASE ** (num_residuals - 1 - i) for i in range(num_residuals)]


def resolution_weights(resolution_divisors: Sequence[int]) -> list[float]:
    """64 / h_i with h_i = 64 / divisor_i (divisor = how much smaller than the latent the
    residual is, from ControlNetConfig.output_resolution_divisors())."""
    return [CFG_RW_LATENT_SIDE / (CFG_RW_LATENT_SIDE / d) for d in resolution_divisors]


def is_cond_only(mode: str) -> bool:
    """True for modes that leave the unconditional branch without control."""
    check_mode(mode)
    return mode in COND_ONLY_MODES


def check_mode(mode: str) -> None:
    if mode not in CONTROL_MODES:
        raise ControlNetError(f"unknown control mode '{mode}'; choose one of {', '.join(CONTROL_MODES)}")


def mode_weights(
    mode: str,
    strength: float,
    resolution_divisors: Sequence[int],
    block_weights: Sequence[float] | None = None,
    soft: Sequence[float] | None = None,
) -> list[float]:
    """Per-residual weights w_i for a mode, times the user's block weights when given. `soft`:
    the soft weights of the two soft modes when not a ControlNet's 0.825^(N−1−i)."""
    check_mode(mode)
    n = len(resolution_divisors)
    if mode == BALANCED:
        base = [1.0] * n
    elif mode in (PROMPT_MORE_IMPORTANT, CONTROLNET_MORE_IMPORTANT):
        base = soft_weights(n) if soft is None else list(soft)
        if len(base) != n:
            raise ControlNetError(f"{len(base)} soft weights for {n} residuals")
    else:
        base = resolution_weights(resolution_divisors)
    if block_weights is not None:
        if len(block_weights) != n:
            raise ControlNetError(f"{len(block_weights)} block weights given, this control has {n} residuals")
        base = [b * u for b, u in zip(base, block_weights)]
    return [strength * w for w in base]


def scale_residuals(residuals: Sequence[torch.Tensor], weights: Sequence[float]) -> list[torch.Tensor]:
    return [r * w for r, w in zip(residuals, weights)]


def mask_residuals(residuals: Sequence[torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """Multiply each residual by `mask` (B×1×H×W or 1×1×H×W, any H×W of the latent's aspect
    ratio) resized to that residual's size."""
    out = []
    for r in residuals:
        out.append(r * resized_mask(mask, r.shape[-2:]).to(device=r.device, dtype=r.dtype))
    return out


def resized_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """`mask` (B×1×H×W) at `size`, bilinearly (the mask itself when it has that size, or one value
    per row, B×1×1×1, which broadcasts: any resize of a constant is that constant)."""
    if tuple(mask.shape[-2:]) in (tuple(size), (1, 1)):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)


def cond_rows(batch_size: int, cond_or_uncond: Sequence[int]) -> torch.Tensor:
    """Row indices of the conditional chunks: the batch is len(cond_or_uncond) equal chunks in
    that order (0 = cond, 1 = uncond)."""
    chunk = batch_size // len(cond_or_uncond)
    rows = [torch.arange(k * chunk, (k + 1) * chunk) for k, kind in enumerate(cond_or_uncond) if kind == COND]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long)


def uncond_row_factors(cond_or_uncond: Sequence[int], per_chunk: int, uncond_multiplier: float) -> torch.Tensor:
    """One factor per row of a batch of len(cond_or_uncond) chunks of `per_chunk` rows, as B×1×1×1:
    1 on the conditional rows, `uncond_multiplier` on the others (as the rows the cond-only modes
    leave without control)."""
    factors = [1.0 if kind == COND else uncond_multiplier for kind in cond_or_uncond]
    return torch.tensor(factors).repeat_interleave(per_chunk).view(-1, 1, 1, 1)


def zero_uncond_rows(residuals: Sequence[torch.Tensor], cond_or_uncond: Sequence[int]) -> list[torch.Tensor]:
    """Exact zeros on the unconditional rows, residuals unchanged on the conditional rows."""
    out = []
    for r in residuals:
        keep = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
        keep[cond_rows(r.shape[0], cond_or_uncond).to(r.device)] = True
        out.append(torch.where(keep.view(-1, 1, 1, 1), r, torch.zeros((), dtype=r.dtype, device=r.device)))
    return out


def scatter_rows(residuals: Sequence[torch.Tensor], rows: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Residuals computed for `rows` only, placed in a full batch of zeros."""
    out = []
    for r in residuals:
        full = torch.zeros((batch_size, *r.shape[1:]), dtype=r.dtype, device=r.device)
        full[rows.to(r.device)] = r
        out.append(full)
    return out


# --- block weights: user text or a named preset ----------------------------------------------

def _deepest_only(divisors: Sequence[int]) -> list[float]:
    return [1.0 if d == max(divisors) else 0.0 for d in divisors]


def _shallowest_only(divisors: Sequence[int]) -> list[float]:
    return [1.0 if d == min(divisors) else 0.0 for d in divisors]


# Presets are rules over the residuals' resolutions, so they fit every family's residual count.
BLOCK_WEIGHT_PRESETS = {
    "middle block only": lambda divisors: [0.0] * (len(divisors) - 1) + [1.0],
    "without middle block": lambda divisors: [1.0] * (len(divisors) - 1) + [0.0],
    "lowest resolution only": _deepest_only,
    "highest resolution only": _shallowest_only,
}


MIDDLE_BLOCK_PRESETS = ("middle block only", "without middle block")


def parse_block_weights(text: str, resolution_divisors: Sequence[int], ends_at_middle_block: bool = True) -> list[float] | None:
    """None for empty text; a preset's weights for a preset name; else exactly N comma-separated
    floats (N = number of residuals). `ends_at_middle_block`: whether the last residual is the
    middle block's (a ControlNet's, an SDXL T2I-Adapter's; not an SD1.x T2I-Adapter's). Raises
    ControlNetError with a message a user can act on."""
    text = text.strip()
    if not text:
        return None
    n = len(resolution_divisors)
    preset = BLOCK_WEIGHT_PRESETS.get(text.lower())
    if preset is not None and text.lower() in MIDDLE_BLOCK_PRESETS and not ends_at_middle_block:
        others = [name for name in BLOCK_WEIGHT_PRESETS if name not in MIDDLE_BLOCK_PRESETS]
        raise ControlNetError(
            f"block_weights '{text}': this control adds nothing at the middle block (its {n} outputs follow input "
            f"blocks); choose {' or '.join(others)}, or give {n} numbers"
        )
    if preset is not None:
        return preset(resolution_divisors)
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise ControlNetError(
            f"block_weights '{text}' is neither {n} comma-separated numbers nor a preset "
            f"({', '.join(BLOCK_WEIGHT_PRESETS)})"
        ) from None
    if len(values) != n:
        order = f"{n - 1} input blocks, shallowest first, then the middle block" if ends_at_middle_block else (
            f"{n} input blocks, shallowest first"
        )
        raise ControlNetError(f"block_weights has {len(values)} numbers; this control has {n} residuals ({order}): give {n}")
    return values
