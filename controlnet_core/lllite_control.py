"""ControlNet-LLLite in ComfyUI's sampler: `LLLiteControl` adds attention patches, not residuals.

ComfyUI hands a control the step's `transformer_options`: the same dict the U-Net then receives
(samplers.py `_calc_cond_batch`). At each step `get_control` puts two patches into its "patches",
one for self-attention and one for cross-attention, and returns the previous control's residuals
unchanged, as Advanced-ControlNet does for LLLite. It puts a new "patches" dict with new lists
there: the ones already there may be shared with the model's options. The U-Net's transformer
blocks call the patches with the normalised hidden states before q, k and v are projected
(attention.py `BasicTransformerBlock`); `block` and `block_index` in their options say where they
are, and each patch adds the corrections of the modules that sit there (`lllite.Site`).

Our options map onto the modules:
- strength, start/end and the strength schedule weight the corrections; outside start/end (or
  where the schedule is 0) no patch is put in;
- control modes and block weights: a module takes the weight of the SDXL ControlNet residual at
  its depth of the U-Net (`Site.residual_index`); the cond-only modes correct the conditional
  rows only, and leave the unconditional rows exactly as they were;
- a mask (times the latent strengths, one per latent) is resized to each block's token grid and
  multiplied into the corrections.
Each module's condition tokens depend only on the image: they are computed once per run (per
latent size and hint tensor, so tiling nodes' tiles work as with our ControlNets).

Two LLLites on one model compose as their patches run in turn: the second corrects what the
first has corrected (so do kohya's and Advanced-ControlNet's), not a sum.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

import comfy.model_management as model_management
import comfy.utils

from . import control_modes, lllite
from .apply_options import ApplyOptions
from .comfy_control import (
    CENTER_CROP, HINT_UPSCALE_METHOD, LoadedModelControl, check_family, latent_size_guess, repeat_per_chunk,
)
from .errors import ControlNetError, FamilyMismatchError
from .lllite import ControlLLLite
from .loader import LoadedControlNet

KIND = "ControlNet-LLLite"


class LLLiteControl(LoadedModelControl):
    """A ControlNet-LLLite file loaded with ours, in a ComfyUI conditioning (CONTROL_NET)."""

    kind = KIND

    def __init__(self, loaded: LoadedControlNet, load_device: torch.device, patcher: Any = None):
        super().__init__(loaded, load_device, patcher)
        # each module's condition tokens per latent size and hint tensor (ModedControl._once_per_hint)
        self._tokens: dict[tuple[int, int, int], tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}

    # set up by the apply nodes

    def configure(self, image: torch.Tensor, options: ApplyOptions) -> LLLiteControl:
        if self.extra_args.get("control_type"):
            raise self._control_type_refused()
        return super().configure(image, options)

    def _check_hint(self, hint: torch.Tensor) -> None:
        expected = self.model.config.hint_channels
        if hint.shape[1] != expected:
            raise ControlNetError(f"the image has {hint.shape[1]} channels, this {KIND} takes {expected} (RGB)")

    def copy(self) -> LLLiteControl:
        return self._copy_options_to(LLLiteControl(self.loaded, self.load_device, self.patcher))

    # called by ComfyUI's sampler

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        check_family(self.loaded.family, model, kind=KIND)
        check_fits(self.model, model.diffusion_model, self.name)
        super().pre_run(model, percent_to_timestep_function)

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        """Bytes held beside the U-Net while it runs: every module's condition tokens, sized from
        the hint image (the latent is not known yet; the hint is resized to it)."""
        previous = super().inference_memory_requirements(dtype)
        if self.cond_hint_original is None:
            return previous
        latent = latent_size_guess(self.cond_hint_original)
        elements = sum(
            self.model.specs[name].cond_emb_dim * math.prod(lllite.token_grid(latent, site.level))
            for name, site in self.model.sites.items()
        )
        return previous + elements * self._hint_batch() * model_management.dtype_size(self.model.dtype)

    def cleanup(self) -> None:
        self._tokens = {}
        super().cleanup()

    # internals

    def _divisors(self) -> list[int]:
        return lllite.residual_divisors()

    def _control(
        self,
        x_noisy: torch.Tensor,
        sigma: torch.Tensor,
        cond: dict,
        rows: torch.Tensor | None,
        num_chunks: int,
        transformer_options: dict,
        previous: dict | None,
    ) -> dict | None:
        rows = None if rows is None else rows.to(x_noisy.device)  # once: the patches index with them at every block
        step = LLLiteStep(self.model, self._weights(), rows, self._step_tokens(x_noisy, rows, num_chunks),
                          self._step_masks(x_noisy, rows, num_chunks))
        patches = dict(transformer_options.get("patches", {}))
        for attention in ("attn1", "attn2"):
            key = f"{attention}_patch"
            patches[key] = [*patches.get(key, []), AttentionPatch(step, attention)]
        transformer_options["patches"] = patches
        return previous

    def _compute_dtype(self) -> torch.dtype:
        return self.model.compute_dtype or self.model.dtype

    def _step_tokens(self, x_noisy: torch.Tensor, rows: torch.Tensor | None, num_chunks: int) -> dict[str, torch.Tensor]:
        """Each module's condition tokens for this step's rows (all, or `rows`)."""
        per_chunk = x_noisy.shape[0] // num_chunks
        tokens = self._tokens_once_per_hint(x_noisy)
        out = {}
        for name, module_tokens in tokens.items():
            module_tokens = repeat_per_chunk(module_tokens, per_chunk, num_chunks)
            if module_tokens.shape[0] == 1:
                count = x_noisy.shape[0] if rows is None else rows.numel()
                out[name] = module_tokens.expand(count, -1, -1)
            else:
                out[name] = module_tokens if rows is None else module_tokens[rows]
        return out

    def _tokens_once_per_hint(self, x_noisy: torch.Tensor) -> dict[str, torch.Tensor]:
        latent = tuple(x_noisy.shape[-2:])

        def embed(source: torch.Tensor) -> dict[str, torch.Tensor]:
            hints = {}
            for level in self.model.levels():
                height, width = lllite.hint_size(latent, level)
                hint = comfy.utils.common_upscale(source, width, height, HINT_UPSCALE_METHOD, CENTER_CROP)
                hints[level] = hint.to(device=x_noisy.device, dtype=self._compute_dtype()) * 2.0 - 1.0  # kohya: [-1, 1]
            return self.model.embed_hint(hints.__getitem__)

        return self._once_per_hint(self._tokens, x_noisy, embed)

    def _step_masks(self, x_noisy: torch.Tensor, rows: torch.Tensor | None, num_chunks: int) -> dict[int, torch.Tensor]:
        """The mask (and uncond multiplier) at each level's token grid, as B×T×1 for this step's
        rows; {} without either."""
        per_chunk = x_noisy.shape[0] // num_chunks
        row_mask = self._row_mask(x_noisy, self._compute_dtype(), per_chunk, num_chunks)
        if row_mask is None:
            return {}
        masks = {}
        for level in self.model.levels():
            grid = lllite.token_grid(tuple(x_noisy.shape[-2:]), level)
            mask = control_modes.resized_mask(row_mask, grid)  # as for a ControlNet's residuals
            mask = mask.flatten(2).transpose(1, 2)
            if rows is not None and mask.shape[0] > 1:
                mask = mask[rows]
            masks[level] = mask
        return masks


class LLLiteStep:
    """What one step's patches apply: per module, the correction of the projection input x,
    weighted, masked, on `rows` of the batch (all when None; on the batch's device)."""

    def __init__(
        self,
        model: ControlLLLite,
        weights: list[float],
        rows: torch.Tensor | None,
        tokens: dict[str, torch.Tensor],
        masks: dict[int, torch.Tensor],
    ):
        self.model, self.weights, self.rows, self.tokens, self.masks = model, weights, rows, tokens, masks

    def corrected(self, name: str, x: torch.Tensor) -> torch.Tensor:
        site = self.model.sites[name]
        weight = self.weights[site.residual_index]
        if weight == 0.0:
            return x
        part = x if self.rows is None else x[self.rows]
        tokens = self.tokens[name]
        if tokens.shape[1] != part.shape[1]:
            raise ControlNetError(
                f"the U-Net's feature map at {site.describe()} has {part.shape[1]} positions, the {KIND}'s condition "
                f"has {tokens.shape[1]} there: a node that changes the U-Net's resolution inside the model (such as "
                "Kohya Deep Shrink) is in the way; remove it or the LLLite"
            )
        correction = self.model.module(name)(part.to(tokens.dtype), tokens) * weight
        mask = self.masks.get(site.level)
        if mask is not None:
            correction = correction * mask
        correction = correction.to(x.dtype)
        if self.rows is None:
            return x + correction
        return x.index_add(0, self.rows, correction)


class AttentionPatch:
    """ComfyUI's attn1_patch / attn2_patch: (n, context, value, extra_options) -> the inputs of
    to_q, to_k and to_v, corrected where a module sits at this block."""

    def __init__(self, step: LLLiteStep, attention: str):
        self.step, self.attention = step, attention

    def __call__(self, n: torch.Tensor, context: torch.Tensor, value: torch.Tensor, extra_options: dict) -> tuple:
        block = extra_options.get("block")
        if block is None:
            return n, context, value
        here = self.step.model.at_place.get((block[0], block[1], extra_options.get("block_index", 0), self.attention))
        if not here:
            return n, context, value
        inputs = {"q": n, "k": context, "v": value}
        corrected = {p: self.step.corrected(name, inputs[p]) for p, name in here.items()}
        inputs.update(corrected)
        return inputs["q"], inputs["k"], inputs["v"]


def check_fits(model: ControlLLLite, unet: torch.nn.Module, name: str) -> None:
    """Refuse, before sampling, an LLLite with a module where the U-Net has no such projection
    or one of another width."""
    for module_name, site in sorted(model.sites.items(), key=lambda item: item[1].order):
        projection = _projection(unet, site)
        if projection is None:
            raise FamilyMismatchError(
                f"'{name}' has a module for {site.describe()}, which this model's U-Net does not have: the {KIND} "
                "was made for another model"
            )
        width = model.specs[module_name].in_dim
        if projection.in_features != width:
            raise FamilyMismatchError(
                f"'{name}' corrects {width}-wide features at {site.describe()}, where this model's are "
                f"{projection.in_features} wide: the {KIND} was made for another model"
            )


def _projection(unet: torch.nn.Module, site: lllite.Site) -> torch.nn.Module | None:
    blocks = {"input": unet.input_blocks, "middle": [unet.middle_block], "output": unet.output_blocks}[site.block]
    try:
        transformer = blocks[site.index][1]
        attention = getattr(transformer.transformer_blocks[site.transformer], site.attention)
        return getattr(attention, f"to_{site.projection}")
    except (IndexError, AttributeError, TypeError):
        return None
