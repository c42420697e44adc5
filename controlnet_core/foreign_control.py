"""Control modes, masks, block weights and strength schedules (over the steps and the latent batch)
for controls that ComfyUI's own control objects run.

SD ControlNets loaded with ComfyUI's built-in loader (classic or Union) reach our apply nodes as
ComfyUI's `comfy.controlnet.ControlNet` rather than as our `SuiteControl`. Their model (`comfy.cldm.cldm.ControlNet`)
returns {'output': one residual per input block, shallowest first, 'middle': [middle block]},
which is our residual list split in two, so `control_modes` applies to it unchanged.

`ForeignControl` wraps such an object: it runs it on the rows the mode needs (the conditional
rows only in cond-only modes), with strength 1 and no previous control, then weights, masks and
chains the residuals as `SuiteControl` does. The hint is resized and encoded by ComfyUI's code,
as for the built-in.

T2I-Adapters (ours and ComfyUI's loaders both give ComfyUI's `comfy.controlnet.T2IAdapter`) give
4 features, finest first, added after input blocks (and the middle block for SDXL):
`ForeignAdapter` runs the adapter's network once per sampling run, as ComfyUI's object does, and
at each step weights (with A1111's adapter soft weights), masks and places copies of the
features for the rows the mode needs. Other control objects (SD3/Flux and Stable Cascade
ControlNets, other packs') place their outputs differently and are refused with a message that
says so.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import comfy.cldm.cldm
import comfy.controlnet
import comfy.ldm.cascade.controlnet
import comfy.model_management as model_management
import comfy.ldm.modules.attention
import comfy.utils

from . import control_modes, t2i_adapter
from .comfy_control import (
    CENTER_CROP,
    CFG_BRANCHES,
    ModedControl,
    check_family,
    latent_size_guess,
    repeat_per_chunk,
    residual_elements,
    scale_in_place,
    unet_family,
)
from .config import SD1, SD2, SDXL
from .errors import ControlNetError


OPTIONS = (
    "control modes other than balanced, masks, block weights, strength schedules, latent strengths and uncond "
    "multipliers"
)


def can_wrap(control_net: Any) -> bool:
    """ComfyUI's plain ControlNet object around an SD U-Net ControlNet (classic or Union), or
    its T2I-Adapter object around a four-level adapter, whose strength is one constant factor:
    the layouts and weighting `control_modes` describes."""
    if type(control_net) is comfy.controlnet.ControlNet:
        model_fits = isinstance(control_net.control_model, comfy.cldm.cldm.ControlNet)
    elif type(control_net) is comfy.controlnet.T2IAdapter:
        model_fits = len(getattr(control_net.t2i_model, "channels", ())) == len(control_modes.ADAPTER_SOFT_WEIGHTS)
    else:
        return False
    return model_fits and control_net.strength_type == comfy.controlnet.StrengthType.CONSTANT


def pools_globally(control_net: Any) -> bool:
    """A ComfyUI SD ControlNet object that averages its residuals (a shuffle file: ComfyUI's loader
    sets that from the file name). The apply nodes wrap it even in plain balanced mode, so it runs
    on the conditional rows only, as ours does (ModedControl._cond_only)."""
    return can_wrap(control_net) and bool(control_net.global_average_pooling)


def why_not_wrappable(control_net: Any) -> str:
    """The refusal for options on a control object `can_wrap` rejects, naming what it is."""
    if type(control_net) is comfy.controlnet.T2IAdapter and isinstance(control_net.t2i_model, comfy.ldm.cascade.controlnet.ControlNet):
        return (
            f"{OPTIONS} work on SD1.x/SD2.x/SDXL controls; this is a Stable Cascade ControlNet, whose outputs go to "
            "Stable Cascade's own blocks: use balanced mode with no other option"
        )
    if type(control_net) is comfy.controlnet.T2IAdapter:
        return (
            f"{OPTIONS} need a T2I-Adapter with {len(control_modes.ADAPTER_SOFT_WEIGHTS)} feature levels and a constant "
            "strength, as the published ones have; this one differs: use balanced mode with no other option"
        )
    return (
        f"{OPTIONS} need an SD1.x/SD2.x/SDXL ControlNet or T2I-Adapter, loaded with ControlNet Suite's 'Load "
        f"ControlNet' node or ComfyUI's; this control is a {type(control_net).__module__}.{type(control_net).__name__}, "
        "whose outputs are placed differently: use balanced mode with no other option"
    )


def wrap(control_net: Any) -> ModedControl:
    """A copy of ComfyUI's control object in the wrapper that gives it our options."""
    if not can_wrap(control_net):
        raise ControlNetError(why_not_wrappable(control_net))
    wrapper = ForeignAdapter if isinstance(control_net, comfy.controlnet.T2IAdapter) else ForeignControl
    return wrapper(control_net.copy())


def resolution_divisors(model: comfy.cldm.cldm.ControlNet) -> list[int]:
    """How many times smaller than the latent each residual is: the stem, then each level's
    ResBlocks and its downsample (none after the last level), then the middle block."""
    divisors = [1]
    levels = len(model.channel_mult)
    for level, blocks in enumerate(model.num_res_blocks):
        divisors += [2**level] * blocks
        if level != levels - 1:
            divisors.append(2 ** (level + 1))
    return divisors + [2 ** (levels - 1)]


def controlnet_family(control_model: comfy.cldm.cldm.ControlNet) -> str | None:
    """The base family of ComfyUI's SD ControlNet model, by `unet_family`'s rule on the U-Net
    config it was built from (read back from its modules: ComfyUI's object keeps no config)."""
    transformer = next(
        (m for m in control_model.modules() if isinstance(m, comfy.ldm.modules.attention.SpatialTransformer)), None
    )
    if transformer is None:
        return None
    cross_attention = transformer.transformer_blocks[0].attn2
    config = {
        "channel_mult": control_model.channel_mult,
        "context_dim": cross_attention.to_k.in_features,
        "use_linear_in_transformer": transformer.use_linear,
    }
    if control_model.num_classes == "sequential":
        config["adm_in_channels"] = control_model.label_emb[0][0].in_features
    return unet_family(config)


class ForeignControl(ModedControl):
    """ComfyUI's ControlNet object with our control mode, mask and block weights."""

    kind = "ControlNet"  # in messages

    def __init__(self, inner: comfy.controlnet.ControlNet):
        super().__init__()
        self.inner = inner  # configured with the hint at strength 1; never chained

    # set up by the apply nodes (configure: ModedControl's)

    def set_cond_hint(self, cond_hint: torch.Tensor, strength: float = 1.0, timestep_percent_range=(0.0, 1.0), *args, **kwargs):
        """The hint and range go to the inner object too, at strength 1: the mode's weights
        carry the strength."""
        self.inner.set_cond_hint(cond_hint, 1.0, timestep_percent_range, *args, **kwargs)
        return super().set_cond_hint(cond_hint, strength, timestep_percent_range, *args, **kwargs)

    def copy(self) -> ForeignControl:
        return self._copy_options_to(type(self)(self.inner.copy()))

    # called by ComfyUI's sampler (get_control: ModedControl's)

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
        # ComfyUI's own objects run on a model of another family, and the U-Net drops what does
        # not fit with a warning in the log: refused here instead, by name
        family = self._family()
        if family is not None:
            check_family(family, model, self.kind, self._also_fits())
        super().pre_run(model, percent_to_timestep_function)
        self.inner.pre_run(model, percent_to_timestep_function)

    def get_models(self) -> list:
        return super().get_models() + self.inner.get_models()

    def get_extra_hooks(self) -> list:
        return super().get_extra_hooks() + self.inner.get_extra_hooks()

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        return super().inference_memory_requirements(dtype) + self.inner.inference_memory_requirements(dtype)

    def cleanup(self) -> None:
        self.inner.cleanup()
        super().cleanup()

    # internals

    def _residuals(
        self, x_noisy: torch.Tensor, sigma: torch.Tensor, cond: dict, rows: torch.Tensor | None, num_chunks: int
    ) -> list[torch.Tensor]:
        batch = x_noisy.shape[0]
        per_chunk = batch // num_chunks
        if rows is not None:
            x_noisy, sigma = x_noisy[rows], sigma[rows]
            cond = {k: v[rows] if torch.is_tensor(v) and v.shape[:1] == (batch,) else v for k, v in cond.items()}
        chunks_run = x_noisy.shape[0] // per_chunk
        self._hand_tiles_to_inner(x_noisy)
        out = self.inner.get_control(x_noisy, sigma, cond, chunks_run, {})  # it reads no transformer_options
        residuals = out["output"] + out["middle"]
        weights = self._weights()
        if len({id(r) for r in residuals}) == len(residuals):  # ComfyUI may share one tensor between entries
            residuals = scale_in_place(residuals, weights)
        else:
            residuals = control_modes.scale_residuals(residuals, weights)
        return self._masked(residuals, x_noisy, x_noisy.dtype, per_chunk, chunks_run)

    def _hand_tiles_to_inner(self, x_noisy: torch.Tensor) -> None:
        """What a tiling node did to this wrapper's hint (comfy_control's docstring), done to the
        inner object, which reads both fields itself."""
        if self.inner.cond_hint_original is not self.cond_hint_original:  # Ultimate SD Upscale's crop
            self.inner.cond_hint_original, self.inner.cond_hint = self.cond_hint_original, None
        tile_hint = self._tile_hint(x_noisy)
        if tile_hint is not None:  # Tiled Diffusion's, at the latent's pixel size
            self.inner.cond_hint = tile_hint

    def _divisors(self) -> list[int]:
        return resolution_divisors(self.inner.control_model)

    def _pools_globally(self) -> bool:
        return bool(self.inner.global_average_pooling)  # ComfyUI's object averages the residuals itself

    def _family(self) -> str | None:
        return controlnet_family(self.inner.control_model)

    def _also_fits(self) -> tuple[str, ...]:
        return ()


def adapter_family(t2i_model: Any) -> str:
    """SDXL for ComfyUI's XL adapter (`Adapter(xl=True)`), SD1.x for the rest (SD2.x U-Nets have
    the SD1.x block layout)."""
    return SDXL if getattr(t2i_model, "xl", False) else SD1


class ForeignAdapter(ForeignControl):
    """ComfyUI's T2I-Adapter object with our control mode, mask and block weights. Its network
    runs once per sampling run and latent size; each step copies the features for its rows."""

    soft_weights = control_modes.ADAPTER_SOFT_WEIGHTS
    kind = "T2I-Adapter"

    def __init__(self, inner: comfy.controlnet.T2IAdapter):
        super().__init__(inner)
        # the features (at the hint's batch) per latent size and hint tensor, for the run
        # (ModedControl._once_per_hint)
        self._features: dict[tuple[int, int, int], tuple[torch.Tensor, list[torch.Tensor]]] = {}

    def inference_memory_requirements(self, dtype: torch.dtype) -> int:
        """Bytes held beside the U-Net while it runs: the features cached for the run and their
        weighted copies for a cond+uncond batch, sized from the hint image as SuiteControl's
        estimate is (ComfyUI's own T2IAdapter object counts nothing)."""
        estimate = super().inference_memory_requirements(dtype)
        if self.cond_hint_original is None:
            return estimate
        h, w = latent_size_guess(self.cond_hint_original)
        elements = residual_elements(self.inner.t2i_model.channels, self._divisors(), h, w) * (CFG_BRANCHES + 1)
        return estimate + elements * self.cond_hint_original.shape[0] * model_management.dtype_size(dtype)

    def cleanup(self) -> None:
        self._features = {}
        super().cleanup()

    def _family(self) -> str:
        return adapter_family(self.inner.t2i_model)

    def _also_fits(self) -> tuple[str, ...]:
        # an SD1.x adapter's features have the widths and sizes of SD2.x's U-Net blocks too
        return (SD2,) if self._family() == SD1 else ()

    def _divisors(self) -> list[int]:
        return list(t2i_adapter.INJECTION[self._family()].latent_divisors)

    def _ends_at_middle_block(self) -> bool:
        return t2i_adapter.INJECTION[self._family()].middle

    def _layout(self, residuals: list[torch.Tensor]) -> dict:
        return t2i_adapter.comfy_control(residuals, self._family())

    def _residuals(
        self, x_noisy: torch.Tensor, sigma: torch.Tensor, cond: dict, rows: torch.Tensor | None, num_chunks: int
    ) -> list[torch.Tensor]:
        per_chunk = x_noisy.shape[0] // num_chunks
        chunks_run = num_chunks if rows is None else rows.numel() // per_chunk
        # the features are cached for the run: weighted into copies, never in place
        residuals = [repeat_per_chunk(f, per_chunk, chunks_run) for f in self._features_at(x_noisy)]
        residuals = control_modes.scale_residuals(residuals, self._weights())
        return self._masked(residuals, x_noisy, x_noisy.dtype, per_chunk, chunks_run)

    def _features_at(self, x_noisy: torch.Tensor) -> list[torch.Tensor]:
        """The adapter's features for this latent size, once per hint tensor, as ComfyUI's T2IAdapter
        computes them (hint resized and centre-cropped to its unshuffle multiple, a sketch
        adapter's hint averaged to one channel, the network run in the latent's dtype)."""
        height, width = x_noisy.shape[-2:]
        inner = self.inner

        def features(source: torch.Tensor) -> list[torch.Tensor]:
            hint_width, hint_height = inner.scale_image_to(width * inner.compression_ratio, height * inner.compression_ratio)
            hint = comfy.utils.common_upscale(source, hint_width, hint_height, inner.upscale_algorithm, CENTER_CROP)
            hint = hint.float().to(inner.device)
            if inner.channels_in == 1 and hint.shape[1] > 1:
                hint = hint.mean(1, keepdim=True)
            inner.t2i_model.to(x_noisy.dtype).to(inner.device)
            try:
                out = inner.t2i_model(hint.to(x_noisy.dtype))
            finally:
                inner.t2i_model.cpu()  # as ComfyUI's T2IAdapter: the network lives on the CPU between runs
            return t2i_adapter.features_in(out)

        return self._once_per_hint(self._features, x_noisy, features)
