"""The ComfyUI side of the core: the one module in controlnet_core that imports ComfyUI.

ComfyUI samples with a control object stored in each conditioning's options
(`cond[1]["control"]`). At sampling time it calls `pre_run(model, percent_to_sigma)` once,
`get_control(x_noisy, sigma, cond, batched_number, transformer_options)` at every step, and
`cleanup()` at the end; `get_models()` hands it ModelPatchers to load next to the U-Net; each
control calls the one before it (`previous_controlnet`) and adds its residuals to those.
`SuiteControl` implements that protocol for our `ControlNet`, with the control modes, block
weights and masks of `control_modes`, and does no work twice:

- the hint image is resized and run through the hint encoder once per sampling run (cached per
  latent size, dropped in cleanup), not at every step;
- modes that leave the unconditional branch without control run the ControlNet on the
  conditional rows only;
- CFG's cond and uncond rows of one latent differ only in their text context: the model runs
  what precedes its first cross-attention once for both;
- a step outside start/end, or where a strength schedule (`schedule`) is at 0, returns the
  previous control's residuals and runs nothing;
- residuals are weighted, and summed with the previous control's, in place (no copies).

ControlNet Union files run in `SuiteControl` too: the control type ComfyUI's Set Union ControlNet
Type node puts in `extra_args` is fused with the hint once per run (`UnionControlNet.encode_condition`);
several (image, control type, weight) conditions are fused in one pass, as xinsir's multi-condition
mode (`UnionCondition`, `configure_union`, `UnionControlNet.encode_conditions`).

Tiling nodes hand a control each tile's part of the hint in one of two ways, which ComfyUI's
built-in ControlNet and Advanced-ControlNet both follow, and so do ours:
- Ultimate SD Upscale samples the tiles one by one: it copies the control and replaces
  `cond_hint_original` with the tile's crop of the hint image;
- Tiled Diffusion batches tiles: before each call it sets `cond_hint` to the hint already at the
  latent's pixel size, cropped per tile, one row per latent row.
So everything spatial a control reads rides in `cond_hint_original`: a Union's conditions are
packed side by side along its channels (`pack_condition_images`). A mask cannot follow the
tiles, and Tiled Diffusion's batches mix the rows of CFG's branches; those cases are refused.

bench/sampling.py measures these against ComfyUI's built-in ControlNet;
tests/host/test_performance_paths.py checks they give what the plain path gives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

import comfy.controlnet
import comfy.model_management as model_management
import comfy.model_patcher
import comfy.ops
import comfy.supported_models_base
import comfy.utils

from . import control_modes, formats, schedule
from .apply_options import ApplyOptions
from .config import SD1, SD2, SDXL, STANDARD_CONTEXT_DIM
from .errors import ControlNetError, FamilyMismatchError
from .files import find_diffusers_weights, open_weights
from .loader import LoadedControlNet, load_controlnet
from .union import UNION_CONTROL_TYPES, UnionControlNet

# An SD VAE latent pixel covers 8×8 image pixels; the hint is resized to 8× the latent, with the
# same method and centre crop as ComfyUI's built-in ControlNet (comfy/controlnet.py), so a hint
# means the same to both.
LATENT_TO_PIXELS = 8
HINT_UPSCALE_METHOD = "nearest-exact"
MASK_UPSCALE_METHOD = "bilinear"
CENTER_CROP = "center"
# adm_in_channels of SDXL base (pooled CLIP-G 1280 + 6 size embeddings × 256) and refiner.
SDXL_ADM_CHANNELS = 2816
SDXL_REFINER_ADM_CHANNELS = 2560
SDXL_REFINER = "SDXL refiner"
SDXL_LEVELS = 3  # SDXL's U-Net has three resolution levels, SD1.x/SD2.x four
CFG_BRANCHES = 2  # a memory estimate's batch: the cond and the uncond rows of each image


# --- model family -----------------------------------------------------------------------------

def unet_family(unet_config: dict) -> str | None:
    """SD1.x, SD2.x, SDXL (or "SDXL refiner") of a ComfyUI U-Net config; None for models that
    are not Stable Diffusion U-Nets (Flux, SD3, video models ...). Narrow test models follow the
    same structural rule as ControlNetConfig.family."""
    context_dim = unet_config.get("context_dim")
    adm = unet_config.get("adm_in_channels")
    if context_dim is None or "channel_mult" not in unet_config:
        return None
    if adm == SDXL_ADM_CHANNELS:
        return SDXL
    if adm == SDXL_REFINER_ADM_CHANNELS:
        return SDXL_REFINER
    if context_dim == STANDARD_CONTEXT_DIM[SD1] and adm is None:
        return SD1
    if context_dim == STANDARD_CONTEXT_DIM[SD2]:
        return SD2
    if adm is not None and len(unet_config["channel_mult"]) == SDXL_LEVELS:
        return SDXL
    return SD2 if unet_config.get("use_linear_in_transformer") else SD1


def check_family(control_family: str, base_model: Any, kind: str = "ControlNet", also_fits: Sequence[str] = ()) -> None:
    """Refuse a control (a `kind`) made for another base family than the model being sampled;
    `also_fits` names other families whose U-Net it fits."""
    model_config = getattr(base_model, "model_config", None)
    unet_config = getattr(model_config, "unet_config", None) or {}
    family = unet_family(unet_config)
    if family == control_family or family in also_fits:
        return
    if family is None:
        raise FamilyMismatchError(
            f"this {kind} is for {control_family}, the model is {type(model_config).__name__}, which is not a "
            f"Stable Diffusion 1.x/2.x/XL U-Net: ControlNet Suite's {kind}s work with those models only"
        )
    raise FamilyMismatchError(f"this {kind} is for {control_family}, the model is {family}: pick a {kind} made for {family}")


# --- loading ----------------------------------------------------------------------------------

def load_control(path: str, model: Any = None) -> comfy.controlnet.ControlBase:
    """Load a ControlNet file (or diffusers folder) for ComfyUI, in the dtype ComfyUI's model
    management picks for the device. `model` (a ModelPatcher) is needed for "difference" files
    and Control-LoRAs, which are built from its U-Net weights."""
    weights = open_weights(find_diffusers_weights(path) if os.path.isdir(path) else path)
    try:
        layout = formats.detect_layout(weights.shapes)
    except ControlNetError:
        layout = None  # load_controlnet below raises the same error, naming the file
    if layout == formats.T2I_ADAPTER:
        # The core loads adapters, but SuiteControl drives ControlNets only; ComfyUI's own loader
        # makes their control object, and our apply nodes give it every option through
        # foreign_control.
        return comfy.controlnet.load_controlnet(path)

    load_device = model_management.get_torch_device()
    dtype = model_management.unet_dtype(
        model_params=-1,  # as ComfyUI's ControlNet loader: prefer the smaller dtype
        supported_dtypes=comfy.supported_models_base.BASE.supported_inference_dtypes,
        weight_dtype=_stored_dtype(weights),
    )
    # As comfy.controlnet does: weights stay in `dtype`; where the device cannot compute in it
    # (fp16 on a CPU, bf16 on older GPUs, fp8) ComfyUI's manual_cast layers cast each weight to
    # the compute dtype as it is used.
    compute_dtype = model_management.unet_manual_cast(dtype, load_device)
    needs_base = layout in (formats.DIFFERENCE, formats.CONTROL_LORA)
    base_unet = model.model.diffusion_model.state_dict() if model is not None and needs_base else None
    loaded = load_controlnet(
        path,
        dtype=dtype,
        device=model_management.unet_offload_device(),
        ops=comfy.ops.pick_operations(dtype, compute_dtype, load_device=load_device),
        base_unet=base_unet,
    )
    loaded.model.compute_dtype = compute_dtype
    if layout == formats.LLLITE:
        from .lllite_control import LLLiteControl  # it builds on this module

        return LLLiteControl(loaded, load_device)
    return SuiteControl(loaded, load_device)


def _stored_dtype(weights: Any) -> torch.dtype | None:
    """The dtype the file stores its weights in (read from its smallest floating tensor)."""
    for key in sorted(weights.shapes, key=lambda k: torch.Size(weights.shapes[k]).numel()):
        tensor = weights[key]
        if tensor.is_floating_point():
            return tensor.dtype
    return None


# --- the control object -----------------------------------------------------------------------

class ModedControl(comfy.controlnet.ControlBase):
    """A control with our control mode, mask and block weights: what SuiteControl, LLLiteControl
    and the wrappers in foreign_control share. Subclasses compute the weighted residuals of the rows
    a step runs (`_residuals`; LLLiteControl, which adds none, replaces `_control` instead) and say
    how many residuals at which resolutions (`_divisors`); a
    control whose outputs are not a ControlNet's (input blocks, then the middle block) says
    where they go (`_layout`, `_ends_at_middle_block`) and how the soft modes weight them
    (`soft_weights`)."""

    soft_weights: Sequence[float] | None = None  # None: a ControlNet's 0.825^(N−1−i)

    def __init__(self):
        super().__init__()
        self.control_mode = control_modes.BALANCED
        self.block_weights: list[float] | None = None
        self.mask: torch.Tensor | None = None  # B×1×H×W at the hint image's size
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}  # per latent size and batch, once per run
        self._hint_set: torch.Tensor | None = None  # the hint as set, to tell a tiling node's crop from it
        self.strength_schedule: schedule.StrengthSchedule | None = None
        self.latent_strengths: schedule.LatentStrengths | None = None  # ride with the mask: one factor per latent
        self._sigma_schedule: schedule.SigmaSchedule | None = None  # the schedule on the model's sigmas, for the run
        self._step_multiplier = 1.0  # the schedule's multiplier at the step being run
        self.uncond_multiplier = 1.0  # the unconditional rows' share (0: the cond-only path)
        self._step_chunks: Sequence[int] = ()  # cond_or_uncond of the step being run

    # set up by the apply nodes

    def configure(self, image: torch.Tensor, options: ApplyOptions) -> ModedControl:
        """Set the hint (ComfyUI IMAGE, B×H×W×C in 0..1) and how to apply it; returns self.
        Everything checkable without the latent is checked here, before sampling."""
        hint = image.movedim(-1, 1)
        self._check_hint(hint)
        self.set_cond_hint(hint, options.strength, options.percent_range)
        self.control_mode = options.control_mode
        self.block_weights = control_modes.parse_block_weights(
            options.block_weights, self._divisors(), self._ends_at_middle_block()
        )
        self.mask = None if options.mask is None else fit_mask(options.mask, hint.shape[-2:])
        self.strength_schedule = options.strength_schedule
        self.latent_strengths = options.latent_strengths
        self.uncond_multiplier = options.uncond_multiplier
        if 0.0 < self.uncond_multiplier < 1.0 and self._pools_globally():
            raise ControlNetError(
                f"uncond_multiplier {self.uncond_multiplier} has nothing to scale: this is a global-pooling ControlNet "
                "(such as v1.1 shuffle), which gives the unconditional branch no control in every mode. Set "
                "uncond_multiplier to 1"
            )
        return self

    def set_cond_hint(self, cond_hint: torch.Tensor, *args: Any, **kwargs: Any) -> ModedControl:
        self._hint_set = cond_hint
        return super().set_cond_hint(cond_hint, *args, **kwargs)

    def _check_hint(self, hint: torch.Tensor) -> None:
        """Refuse a hint (B×C×H×W) the model cannot take, with a message that says why."""

    def _hint_batch(self) -> int:
        """Images in the hint batch (1 or one per latent, or a divisor of the latent batch)."""
        return self.cond_hint_original.shape[0]

    def _copy_options_to(self, c: ModedControl) -> ModedControl:
        self.copy_to(c)
        c.control_mode, c.block_weights, c.mask = self.control_mode, self.block_weights, self.mask
        c.strength_schedule, c.latent_strengths = self.strength_schedule, self.latent_strengths
        c.uncond_multiplier = self.uncond_multiplier
        c._hint_set = self._hint_set
        return c

    # called by ComfyUI's sampler: once when sampling starts, then at every step

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        super().pre_run(model, percent_to_timestep_function)
        if self.strength_schedule is not None:
            self._sigma_schedule = schedule.SigmaSchedule(self.strength_schedule, percent_to_timestep_function)

    def get_control(
        self, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict, batched_number: int, transformer_options: dict
    ) -> dict | None:
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
        # before start/end: a schedule with guaranteed steps counts the steps outside them too
        self._step_multiplier = self._scheduled_multiplier(t, transformer_options)
        if self.timestep_range is not None and not (self.timestep_range[1] <= t[0] <= self.timestep_range[0]):
            return previous  # outside start/end: nothing to run
        if self._step_multiplier == 0.0:
            return previous  # the strength schedule is at 0: nothing to run
        tile_hint = self._tile_hint(x_noisy)
        self._check_tiling(tile_hint)

        batch = x_noisy.shape[0]
        chunks = transformer_options.get("cond_or_uncond") or [control_modes.COND] * batched_number
        self._step_chunks = chunks
        rows = None  # None: every row of the batch
        if self._cond_only():
            rows = control_modes.cond_rows(batch, chunks)
            if rows.numel() == 0:
                return previous  # an unconditional-only batch gets no control
        per_chunk = batch // len(chunks)
        if tile_hint is None or tile_hint.shape[0] != batch:  # Tiled Diffusion's: one row per latent row
            check_batch("hint", self._hint_batch() if tile_hint is None else tile_hint.shape[0], per_chunk)
        if self.mask is not None:
            check_batch("mask", self.mask.shape[0], per_chunk)
        return self._control(x_noisy, t, cond, rows, len(chunks), transformer_options, previous)

    def cleanup(self) -> None:
        self._masks = {}
        self._sigma_schedule = None
        super().cleanup()

    def _scheduled_multiplier(self, sigma: torch.Tensor, transformer_options: dict) -> float:
        """The strength schedule's multiplier at this step (1 without a schedule)."""
        if self.strength_schedule is None:
            return 1.0
        if self._sigma_schedule is None:
            raise ControlNetError(
                "this control has a strength schedule, and sampling started without telling it the model's sigmas "
                "(pre_run was not called): the node that samples does not set controls up as ComfyUI's samplers do. "
                "Sample with a ComfyUI sampler node, or remove the strength schedule"
            )
        sample_sigmas = transformer_options.get("sample_sigmas")  # set by ComfyUI's samplers
        if sample_sigmas is None or not self.strength_schedule.counts_steps:
            return self._sigma_schedule.multiplier(float(sigma[0]))
        return self._sigma_schedule.multiplier(float(sigma[0]), float(sample_sigmas.max()))

    # tiling nodes (see the module's docstring)

    def _tile_hint(self, x_noisy: torch.Tensor) -> torch.Tensor | None:
        """The hint a tiling node set for this call (Tiled Diffusion's `cond_hint`, at the
        latent's pixel size), or None. ComfyUI's ControlNet keeps its own resized hint in
        `cond_hint` and uses it when its size fits, so a node may set it; our controls never set it."""
        hint = self.cond_hint
        pixels = tuple(side * self.compression_ratio for side in x_noisy.shape[-2:])
        return hint if hint is not None and tuple(hint.shape[-2:]) == pixels else None

    def _hint_source(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """The hint images this call uses (B×C×H×W): a tiling node's for this call, or
        `cond_hint_original`, which Ultimate SD Upscale replaces with each tile's crop."""
        tile_hint = self._tile_hint(x_noisy)
        return self.cond_hint_original if tile_hint is None else tile_hint

    def _once_per_hint(self, cache: dict, x_noisy: torch.Tensor, compute: Callable[[torch.Tensor], Any]) -> Any:
        """`compute(hint)` for this call's hint images (`_hint_source`), once per latent size and
        hint tensor in a run, so each of a tiling node's tile hints gets its own. `cache` maps
        (height, width, id(hint)) to (hint, result): keeping the hint keeps its id its own."""
        source = self._hint_source(x_noisy)
        key = (*x_noisy.shape[-2:], id(source))
        if key not in cache:
            cache[key] = (source, compute(source))
        return cache[key][1]

    def _hint_replaced(self) -> bool:
        """Whether `cond_hint_original` holds other images than the hint that was set (Ultimate SD
        Upscale's crop). Images of the hint that was set (a clone, or some of its batch: packs
        that clone conditionings or sample a batch image by image) are taken as the hint from then on."""
        hint, hint_set = self.cond_hint_original, self._hint_set
        if hint is hint_set:
            return False
        comparable = hint_set is not None and (hint.shape[1:], hint.device) == (hint_set.shape[1:], hint_set.device)
        if comparable and all(any(torch.equal(image, image_set) for image_set in hint_set) for image in hint):
            self._hint_set = hint
            return False
        return True

    def _check_tiling(self, tile_hint: torch.Tensor | None) -> None:
        """Refuse what cannot follow a tiling node's tiles, rather than apply it to the wrong place."""
        if tile_hint is not None and self.latent_strengths is not None:
            raise ControlNetError(
                "this control has latent strengths, and Tiled Diffusion batches the tiles of the latents together in an "
                "order that does not tell the latents apart: remove the latent strengths, or use Ultimate SD Upscale, "
                "which samples the latent batch tile by tile"
            )
        if self.mask is not None and (tile_hint is not None or self._hint_replaced()):
            raise ControlNetError(
                "this control has a mask, and a tiling node (such as Ultimate SD Upscale or Tiled Diffusion) has cut its "
                "image into tiles: the mask cannot follow the tiles, so every tile would get the whole mask. Remove the "
                "mask from this control, or sample without tiles"
            )
        if tile_hint is not None and self._pools_globally():
            raise ControlNetError(
                "this is a global-pooling ControlNet (such as v1.1 shuffle), which runs on the conditional rows only, "
                "and Tiled Diffusion batches the rows of several tiles together in an order that does not tell them "
                "apart: sample it without Tiled Diffusion (Ultimate SD Upscale, which samples tile by tile, takes it)"
            )
        if tile_hint is not None and self.uncond_multiplier != 1.0:
            raise ControlNetError(
                f"this control has uncond_multiplier {self.uncond_multiplier}, and Tiled Diffusion batches the rows of "
                "several tiles together in an order that does not tell the conditional rows from the unconditional "
                "ones: set uncond_multiplier to 1 with Tiled Diffusion (Ultimate SD Upscale, which samples tile by "
                "tile, takes it)"
            )
        if tile_hint is not None and control_modes.is_cond_only(self.control_mode):
            raise ControlNetError(
                f"control mode '{self.control_mode}' runs the control on the conditional rows only, and Tiled "
                "Diffusion batches the rows of several tiles together in an order that does not tell them apart: use "
                "balanced or prompt_more_important with Tiled Diffusion (Ultimate SD Upscale, which samples tile by "
                "tile, takes every mode)"
            )

    def _cond_only(self) -> bool:
        """Whether the control goes to the conditional rows of CFG's batch only: in the cond-only
        modes, and in every mode for a global-pooling ControlNet (v1.1 shuffle), which "must be put
        only on the conditional side of cfg scale" (ControlNet 1.1's README; A1111 and diffusers
        do so; ComfyUI's built-in apply node does not); and with an uncond multiplier of 0."""
        return control_modes.is_cond_only(self.control_mode) or self._pools_globally() or self.uncond_multiplier == 0.0

    def _pools_globally(self) -> bool:
        """Whether every residual is its spatial mean (global average pooling)."""
        return False

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
        """This step's control dict for the U-Net, the previous control's included, once the step
        is known to run: our residuals for `rows` (all rows when None) added to the previous ones."""
        residuals = self._residuals(x_noisy, sigma, cond, rows, num_chunks)
        if rows is not None:
            residuals = control_modes.scatter_rows(residuals, rows, x_noisy.shape[0])
        return merge_with_previous(self._layout(residuals), previous)

    def _residuals(
        self, x_noisy: torch.Tensor, sigma: torch.Tensor, cond: dict, rows: torch.Tensor | None, num_chunks: int
    ) -> list[torch.Tensor]:
        """Weighted (and masked) residuals for `rows` of the batch (all rows when None)."""
        raise NotImplementedError

    def _masked(
        self, residuals: list[torch.Tensor], x_noisy: torch.Tensor, dtype: torch.dtype, per_chunk: int, num_chunks: int
    ) -> list[torch.Tensor]:
        """`residuals` (for `num_chunks` chunks of `per_chunk` rows) times the mask, when there is
        one (`_row_mask`), resized to each residual."""
        mask = self._row_mask(x_noisy, dtype, per_chunk, num_chunks)
        return residuals if mask is None else control_modes.mask_residuals(residuals, mask)

    def _row_mask(
        self, x_noisy: torch.Tensor, dtype: torch.dtype, per_chunk: int, num_chunks: int
    ) -> torch.Tensor | None:
        """The mask and latent strengths at the latent's size (`_latent_mask`) for `num_chunks`
        chunks of `per_chunk` rows, times the uncond multiplier on the unconditional rows (when all
        of the step's chunks run: not on the cond-only path); None when every factor is 1."""
        factors = None
        if self.uncond_multiplier != 1.0 and not self._cond_only():
            factors = control_modes.uncond_row_factors(self._step_chunks, per_chunk, self.uncond_multiplier)
            factors = factors.to(device=x_noisy.device, dtype=dtype)
        if not self._has_mask():
            return factors
        mask = repeat_per_chunk(self._latent_mask(x_noisy, dtype, per_chunk), per_chunk, num_chunks)
        return mask if factors is None else mask * factors

    def _has_mask(self) -> bool:
        """Whether the control has a mask or latent strengths (which go with the mask)."""
        return self.mask is not None or self.latent_strengths is not None

    def _latent_mask(self, x_noisy: torch.Tensor, dtype: torch.dtype, per_chunk: int) -> torch.Tensor:
        """The mask resized to the latent (B×1×H×W), times the latent strengths for a batch of
        `per_chunk` latents (then one row per latent; without a mask, per_chunk×1×1×1), once per
        latent size and batch in a run."""
        height, width = x_noisy.shape[-2:]
        key = (height, width, per_chunk)
        if key not in self._masks:
            mask = torch.ones(1, 1, 1, 1)
            if self.mask is not None:
                mask = comfy.utils.common_upscale(self.mask, width, height, MASK_UPSCALE_METHOD, CENTER_CROP)
            if self.latent_strengths is not None:
                strengths = torch.tensor(self.latent_strengths.for_batch(per_chunk), dtype=mask.dtype)
                mask = repeat_per_chunk(mask, per_chunk, 1) * strengths.view(-1, 1, 1, 1)
            self._masks[key] = mask.to(device=x_noisy.device, dtype=dtype)
        return self._masks[key]

    def _divisors(self) -> list[int]:
        """For each residual, how many times smaller than the latent it is."""
        raise NotImplementedError

    def _weights(self) -> list[float]:
        """w_i of each residual: the mode's, times the strength (and the strength schedule's
        multiplier at this step) and the block weights."""
        return control_modes.mode_weights(
            self.control_mode, self.strength * self._step_multiplier, self._divisors(), self.block_weights, self.soft_weights
        )

    def _ends_at_middle_block(self) -> bool:
        """Whether the last residual is added after the middle block (the rest after input blocks)."""
        return True

    def _layout(self, residuals: list[torch.Tensor]) -> dict:
        """The residuals in ComfyUI's control dict: a ControlNet's one per input block ('output',
        shallowest first), then the middle block's."""
        return {"input": [], "middle": [residuals[-1]], "output": list(residuals[:-1])}


class LoadedModelControl(ModedControl):
    """A control running a model our loader loaded: SuiteControl, and lllite_control's LLLiteControl."""

    kind = "ControlNet"  # what the refusals call the model

    def __init__(self, loaded: LoadedControlNet, load_device: torch.device, patcher: Any = None):
        super().__init__()
        self.loaded = loaded
        self.load_device = load_device
        # The ModelPatcher lets ComfyUI load our model with the U-Net, offload it, and run it in
        # low-VRAM modes; copies share it.
        self.patcher = patcher or comfy.model_patcher.ModelPatcher(
            loaded.model, load_device=load_device, offload_device=model_management.unet_offload_device()
        )

    @property
    def model(self):
        return self.loaded.model

    @property
    def name(self) -> str:
        """The file's name, as messages give it."""
        return os.path.basename(self.loaded.path)

    def get_models(self) -> list:
        return super().get_models() + [self.patcher]

    def configure_union(self, conditions: Sequence[UnionCondition], options: ApplyOptions) -> LoadedModelControl:
        """Union conditions: only SuiteControl running a ControlNet Union takes them."""
        raise self._union_conditions_refused()

    def _union_conditions_refused(self) -> ControlNetError:
        return ControlNetError(
            f"Union conditions need a ControlNet Union/ProMax file; '{self.name}' is a {self.kind}: give it an image "
            "with Apply ControlNet or Control Stack Entry instead"
        )

    def _control_type_refused(self) -> ControlNetError:
        """For a control type from ComfyUI's Set Union ControlNet Type node on a model without types."""
        return ControlNetError(
            f"Set Union ControlNet Type picks a control type for ControlNet Union files; '{self.name}' is a "
            f"{self.kind}, which has none: remove that node"
        )


class SuiteControl(LoadedModelControl):
    """A ControlNet Suite control in a ComfyUI conditioning (the CONTROL_NET type)."""

    kind = "plain ControlNet"  # the refusals are for files that are not a Union

    def __init__(self, loaded: LoadedControlNet, load_device: torch.device, patcher: Any = None):
        super().__init__(loaded, load_device, patcher)
        self.model_sampling_current = None
        # the encoded hint per latent size and hint tensor, for the run (ModedControl._once_per_hint)
        self._encoded_hints: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.union_conditions: tuple[UnionCondition, ...] = ()  # set by configure_union; then they are the hint

    # set up by the apply nodes (configure: ModedControl's)

    def _pools_globally(self) -> bool:
        return self.model.config.global_average_pooling

    def configure(self, image: torch.Tensor, options: ApplyOptions) -> SuiteControl:
        self._control_types()  # a type set on the loader's output is checked before sampling too
        return super().configure(image, options)

    def configure_union(self, conditions: Sequence[UnionCondition], options: ApplyOptions) -> SuiteControl:
        """`configure` with several Union conditions fused in one pass in place of one hint: their
        images, packed side by side (`pack_condition_images`), are the hint; the mask is matched
        to the first condition's image; the strength is `union_strength`'s."""
        if not isinstance(self.model, UnionControlNet):
            raise self._union_conditions_refused()
        if self.extra_args.get("control_type"):
            raise ControlNetError(
                "the control types come from the Union Condition nodes here; remove the Set Union ControlNet Type node "
                f"after '{self.name}'"
            )
        batches = [condition.image.shape[0] for condition in conditions]
        if any(images not in (1, max(batches)) for images in batches):
            raise ControlNetError(
                f"the Union conditions' images come in batches of {', '.join(map(str, batches))}: give each condition "
                f"1 image or {max(batches)}"
            )
        for condition in conditions:
            self._check_hint(condition.image.movedim(-1, 1))
        self.union_conditions = tuple(conditions)
        packed = pack_condition_images([condition.image for condition in conditions])
        return self.configure(packed, replace(options, strength=union_strength(conditions, options.strength)))

    def _control_types(self) -> list[int]:
        """The control types of the Union conditions, or the one ComfyUI's Set Union ControlNet
        Type node set (`extra_args`), checked against the model: none for a plain ControlNet, in
        range for a Union."""
        if self.union_conditions:
            types = [UNION_CONTROL_TYPES[condition.control_type] for condition in self.union_conditions]
        else:
            types = list(self.extra_args.get("control_type", []))
        if not isinstance(self.model, UnionControlNet):
            if types:
                raise self._control_type_refused()
            return types
        try:
            self.model.check_types(types)
        except ValueError as exc:
            raise ControlNetError(str(exc)) from None
        return types

    def _check_hint(self, hint: torch.Tensor) -> None:
        expected = self.loaded.config.hint_channels * max(1, len(self.union_conditions))  # Union conditions: packed
        if hint.shape[1] != expected:
            raise ControlNetError(f"the image has {hint.shape[1]} channels, this ControlNet takes {expected} (RGB)")

    def copy(self) -> SuiteControl:
        """A new control sharing the model (not the chain), as ComfyUI's apply nodes expect."""
        c = SuiteControl(self.loaded, self.load_device, self.patcher)
        c.union_conditions = self.union_conditions
        return self._copy_options_to(c)

    # called by ComfyUI's sampler

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        check_family(self.loaded.family, model)
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.model_sampling

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        """Bytes held beside the U-Net while it runs: our residuals for a cond+uncond batch and
        the cached hint encoding, sized from the hint image (the latent is not known yet; the
        hint is resized to it, so its size is the best guess). The ControlNet's own activations
        come and go before the U-Net runs, within the U-Net's own estimate."""
        previous = super().inference_memory_requirements(dtype)
        if self.cond_hint_original is None:
            return previous
        h, w = latent_size_guess(self.cond_hint_original)
        elements = residual_elements(self._channels(), self._divisors(), h, w) * CFG_BRANCHES
        elements += self.loaded.config.model_channels * h * w
        return previous + elements * self._hint_batch() * model_management.dtype_size(self.model.dtype)

    def cleanup(self) -> None:
        self._encoded_hints = {}
        self.model_sampling_current = None
        super().cleanup()

    # internals

    def _divisors(self) -> list[int]:
        return self.loaded.config.output_resolution_divisors()

    def _channels(self) -> list[int]:
        cfg = self.loaded.config
        channels = [cfg.model_channels] + [b.out_channels for b in cfg.input_blocks]
        return channels + channels[-1:]  # the middle block keeps the deepest width

    def _residuals(
        self, x_noisy: torch.Tensor, sigma: torch.Tensor, cond: dict, rows: torch.Tensor | None, num_chunks: int
    ) -> list[torch.Tensor]:
        per_chunk = x_noisy.shape[0] // num_chunks
        encoded_hint = self._encoded_hint(x_noisy)
        row_for_row = encoded_hint.shape[0] == x_noisy.shape[0] > per_chunk  # a tiling node's, per latent row
        dtype, device = self.model.dtype, x_noisy.device
        context = cond.get("crossattn_controlnet", cond["c_crossattn"])
        y = cond.get("y")
        if rows is not None:
            x_noisy, sigma, context = x_noisy[rows], sigma[rows], context[rows]
            y = None if y is None else y[rows]
        chunks_run = x_noisy.shape[0] // per_chunk
        if chunks_run > 1 and same_chunks(per_chunk, x_noisy, sigma, y, encoded_hint if row_for_row else None):
            # CFG's cond and uncond chunks of one latent: given once, with every chunk's
            # context, the model runs what precedes its first cross-attention once
            x_noisy, sigma, y = x_noisy[:per_chunk], sigma[:per_chunk], None if y is None else y[:per_chunk]
            encoded_hint = encoded_hint[:per_chunk] if row_for_row else encoded_hint

        x = self.model_sampling_current.calculate_input(sigma, x_noisy)
        timesteps = self.model_sampling_current.timestep(sigma)
        residuals = self.model(
            x.to(dtype),
            None,
            timesteps.float(),
            model_management.cast_to_device(context, device, dtype),
            y=None if y is None else y.to(device, dtype),
            encoded_hint=repeat_per_chunk(encoded_hint, per_chunk, x_noisy.shape[0] // per_chunk),
            **self._union_arguments(),
        )
        residuals = scale_in_place(residuals, self._weights())
        return self._masked(residuals, x_noisy, dtype, per_chunk, chunks_run)

    def _encoded_hint(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """The hint resized and encoded for this latent size, once per hint tensor."""
        height, width = x_noisy.shape[-2:]

        def encode(source: torch.Tensor) -> torch.Tensor:
            hint = comfy.utils.common_upscale(
                source, width * LATENT_TO_PIXELS, height * LATENT_TO_PIXELS, HINT_UPSCALE_METHOD, CENTER_CROP
            ).to(device=x_noisy.device, dtype=self.model.dtype)
            if self.union_conditions:
                return self.model.encode_conditions(
                    list(hint.split(self.loaded.config.hint_channels, dim=1)),
                    self._control_types(),
                    [condition.weight for condition in self.union_conditions],
                )
            if isinstance(self.model, UnionControlNet):
                return self.model.encode_condition(hint, self._control_types())
            return self.model.encode_hint(hint)

        return self._once_per_hint(self._encoded_hints, x_noisy, encode)

    def _union_arguments(self) -> dict:
        """A Union model's control types for its forward (its encoded hint is fused with them)."""
        return {"control_types": self._control_types()} if isinstance(self.model, UnionControlNet) else {}


def latent_size_guess(hint: torch.Tensor) -> tuple[int, int]:
    """The latent (height, width) a hint image (B×C×H×W) suggests before sampling: the hint is
    resized to the latent, so its size is the best guess."""
    height, width = hint.shape[-2:]
    return max(1, height // LATENT_TO_PIXELS), max(1, width // LATENT_TO_PIXELS)


def residual_elements(channels: Sequence[int], divisors: Sequence[int], height: int, width: int) -> int:
    """Elements of one row's residuals (`channels` wide, `divisors` times smaller than a latent of
    height × width; the U-Net's downsamples round up)."""
    return sum(c * -(-height // d) * -(-width // d) for c, d in zip(channels, divisors))


def scale_in_place(residuals: Sequence[torch.Tensor], weights: Sequence[float]) -> list[torch.Tensor]:
    """control_modes.scale_residuals without a copy of each residual: the model's outputs are
    fresh tensors nothing else holds. A weight of 1 leaves the tensor as it is (x · 1 == x)."""
    for residual, weight in zip(residuals, weights):
        if weight != 1.0:
            residual.mul_(weight)
    return list(residuals)


def merge_with_previous(control: dict, previous: dict | None) -> dict:
    """Our control dict (ComfyUI's layout: lists 'input', 'middle', 'output' of tensors or None)
    added index by index to the previous control's (the U-Net pops from the end of each list;
    entries of `previous` beyond ours are kept).

    Our tensors must be ones only this call holds: the previous control's are added into them in
    place where the sum has their shape and dtype (float addition commutes, so the sum is the
    same as `earlier + ours`). The previous control's tensors are never written to: a control
    may share one tensor between several entries (comfy.controlnet says so)."""
    out = {key: list(control.get(key, [])) for key in ("input", "middle", "output")}
    if previous is None:
        return out
    for key in ("input", "middle", "output"):
        ours = out[key]
        for i, earlier in enumerate(previous.get(key, [])):
            if i >= len(ours):
                ours.append(earlier)
            elif earlier is not None:
                ours[i] = earlier if ours[i] is None else add_into(ours[i], earlier)
    return out


def add_into(ours: torch.Tensor, earlier: torch.Tensor) -> torch.Tensor:
    """ours + earlier, written into `ours` when the result has its shape, dtype and device."""
    same_result = (
        torch.broadcast_shapes(ours.shape, earlier.shape) == ours.shape
        and torch.result_type(ours, earlier) == ours.dtype
        and earlier.device == ours.device
    )
    return ours.add_(earlier) if same_result else earlier + ours


def check_batch(what: str, images: int, latents: int) -> None:
    """A hint (or mask) batch broadcasts when it is 1 image or tiles the latent batch evenly."""
    if images == 1 or latents % images == 0:
        return
    raise ControlNetError(
        f"the {what} has {images} images and the latent batch has {latents}: they cannot be paired. "
        f"Give 1 {what} image, {latents}, or a number that divides {latents}"
    )


def same_chunks(per_chunk: int, *tensors: torch.Tensor | None) -> bool:
    """Whether each of `tensors` (None skipped) is its first `per_chunk` rows repeated."""
    for tensor in tensors:
        if tensor is None:
            continue
        chunks = tensor.reshape(-1, per_chunk, *tensor.shape[1:])
        if not torch.equal(chunks, chunks[:1].expand_as(chunks)):
            return False
    return True


def repeat_per_chunk(tensor: torch.Tensor, per_chunk: int, num_chunks: int) -> torch.Tensor:
    """Rows for `num_chunks` batch chunks of `per_chunk` latents each: every chunk (cond,
    uncond) gets the whole image batch, tiled to its length, as ComfyUI's broadcast_image_to.
    A single image stays a single row and broadcasts; one row per latent row (a tiling node's
    hint) stays as it is, as ComfyUI's ControlNet takes it."""
    if tensor.shape[0] in (1, per_chunk * num_chunks):
        return tensor
    same = [1] * (tensor.ndim - 1)
    chunk = tensor.repeat(per_chunk // tensor.shape[0], *same)
    return chunk.repeat(num_chunks, *same)


def fit_mask(mask: torch.Tensor, image_size: Sequence[int]) -> torch.Tensor:
    """A ComfyUI MASK (B×H×W or H×W) as B×1×H×W at the hint image's size. A mask of the same
    aspect ratio (to within a pixel) is resized; any other size is refused, because how it
    should line up with the image would be a guess."""
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim != 3:
        raise ControlNetError(f"the mask has shape {tuple(mask.shape)}; a MASK is batch × height × width")
    mask = mask[:, None].float()
    (mask_h, mask_w), (image_h, image_w) = mask.shape[-2:], tuple(image_size)
    if (mask_h, mask_w) == (image_h, image_w):
        return mask
    if abs(mask_h * image_w / mask_w - image_h) >= 1:
        raise ControlNetError(
            f"the mask is {mask_w}×{mask_h} px and the image {image_w}×{image_h} px: their aspect ratios differ, so "
            f"it is unclear how the mask lines up with the image. Resize or crop the mask to {image_w}×{image_h}"
        )
    return torch.nn.functional.interpolate(mask, size=(image_h, image_w), mode=MASK_UPSCALE_METHOD, align_corners=False)


# --- ControlNet Union conditions -------------------------------------------------------------

@dataclass(frozen=True)
class UnionCondition:
    """One condition for a ControlNet Union's multi-condition mode."""

    image: torch.Tensor  # ComfyUI IMAGE: B×H×W×C in 0..1
    control_type: str  # a key of UNION_CONTROL_TYPES
    weight: float = 1.0  # diffusers' conditioning_scale of this condition


def add_union_condition(
    conditions: Sequence[UnionCondition], image: torch.Tensor, control_type: str, weight: float
) -> tuple[UnionCondition, ...]:
    """`conditions` plus one more; a second image of a control type already there is refused
    (the model has one task embedding per type: two images of one type are a wiring mistake)."""
    if control_type not in UNION_CONTROL_TYPES:
        raise ControlNetError(f"unknown control type '{control_type}': pick one of {', '.join(UNION_CONTROL_TYPES)}")
    if any(condition.control_type == control_type for condition in conditions):
        raise ControlNetError(
            f"the Union conditions already have a {control_type} image: a ControlNet Union takes one image per "
            "control type. Remove one of the two, or give it another type"
        )
    return (*conditions, UnionCondition(image, control_type, weight))


def pack_condition_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Condition images (ComfyUI IMAGEs, B×H×W×C) side by side along the channels, as one IMAGE
    that a tiling node crops and resizes as it would one hint. The others are resized to the
    first image's size the way the hint is resized to the latent, and batches of 1 are repeated
    to the largest batch. A single image is returned as it is."""
    if len(images) == 1:
        return images[0]
    height, width = images[0].shape[1:3]
    batch = max(image.shape[0] for image in images)

    def fitted(image: torch.Tensor) -> torch.Tensor:
        if tuple(image.shape[1:3]) != (height, width):
            image = comfy.utils.common_upscale(image.movedim(-1, 1), width, height, HINT_UPSCALE_METHOD, CENTER_CROP).movedim(1, -1)
        return image.expand(batch, -1, -1, -1)

    return torch.cat([fitted(image) for image in images], dim=-1)


def union_strength(conditions: Sequence[UnionCondition], strength: float) -> float:
    """The strength a Union applies its conditions with: one condition's weight scales the
    residuals (diffusers' rule for a single condition), several conditions' weights act inside
    the fusion."""
    return strength * conditions[0].weight if len(conditions) == 1 else strength


def configured_union_control(
    control_net: comfy.controlnet.ControlBase, conditions: Sequence[UnionCondition], options: ApplyOptions
) -> SuiteControl:
    """A configured copy of a ControlNet Union loaded with ours, its conditions fused in one pass
    (our other files refuse them, saying what they are)."""
    if not isinstance(control_net, LoadedModelControl):
        raise ControlNetError(
            "Union conditions run on ControlNet Union files loaded with ControlNet Suite's Load ControlNet; this "
            "ControlNet comes from another loader: load the file with ControlNet Suite's Load ControlNet"
        )
    if not conditions:
        raise ControlNetError("no Union conditions: add at least one with a Union Condition node")
    return control_net.copy().configure_union(conditions, options)


# --- attaching controls to conditioning -------------------------------------------------------

@dataclass(frozen=True)
class StackEntry:
    """One control of a stack: a configured control, copied each time the stack is applied."""

    control: comfy.controlnet.ControlBase


def configured_control(
    control_net: comfy.controlnet.ControlBase, image: torch.Tensor, options: ApplyOptions
) -> comfy.controlnet.ControlBase:
    """A configured copy of `control_net`. Control objects made by ComfyUI's code (our loader's
    T2I-Adapter files, ComfyUI's built-in loader) are applied exactly as ComfyUI
    applies them when the options are plain (balanced mode with no other option) and the model
    does not pool globally; SD ControlNets and T2I-Adapters among them get the other options (and
    a global-pooling ControlNet its conditional-rows-only control) through foreign_control, the
    rest are refused them."""
    if isinstance(control_net, ModedControl):  # ours: SuiteControl, LLLiteControl
        return control_net.copy().configure(image, options)
    from . import foreign_control  # it builds on this module

    if options.is_plain() and not foreign_control.pools_globally(control_net):
        return control_net.copy().set_cond_hint(image.movedim(-1, 1), options.strength, options.percent_range)
    return foreign_control.wrap(control_net).configure(image, options)


def attach_control(positive: list, negative: list, control: comfy.controlnet.ControlBase) -> tuple[list, list]:
    """Put a copy of `control` on every conditioning entry, chained after the control already
    there. One copy per distinct previous control is shared by positive and negative, as
    ComfyUI's ControlNetApplyAdvanced does, so both branches run in one batch."""
    made: dict[Any, comfy.controlnet.ControlBase] = {}

    def attach(conditioning: list) -> list:
        out = []
        for embedding, options in conditioning:
            options = options.copy()
            previous = options.get("control")
            if previous not in made:
                made[previous] = control.copy().set_previous_controlnet(previous)
            options["control"] = made[previous]
            options["control_apply_to_uncond"] = False
            out.append([embedding, options])
        return out

    return attach(positive), attach(negative)


def apply_stack(positive: list, negative: list, stack: Sequence[StackEntry]) -> tuple[list, list]:
    """Apply every entry in order, each on top of the controls already present."""
    for entry in stack:
        positive, negative = attach_control(positive, negative, entry.control)
    return positive, negative
