"""Control modes, masks and block weights for ControlNets that ComfyUI's own control object runs.

Two kinds of SD ControlNet reach our apply nodes as ComfyUI's `comfy.controlnet.ControlNet`
rather than as our `SuiteControl`: ControlNet Union files (our loader hands them to ComfyUI) and
any file loaded with ComfyUI's built-in loader. Their model (`comfy.cldm.cldm.ControlNet`)
returns {'output': one residual per input block, shallowest first, 'middle': [middle block]},
which is our residual list split in two, so `control_modes` applies to it unchanged.

`ForeignControl` wraps such an object: it runs it on the rows the mode needs (the conditional
rows only in cond-only modes), with strength 1 and no previous control, then weights, masks and
chains the residuals as `SuiteControl` does. The hint is resized and encoded by ComfyUI's code,
as for the built-in. Other control objects (T2I-Adapters, SD3/Flux ControlNets, other packs')
place their outputs differently and are refused with a message that says so.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import comfy.cldm.cldm
import comfy.controlnet

from . import control_modes
from .comfy_control import ModedControl, scale_in_place


def can_wrap(control_net: Any) -> bool:
    """ComfyUI's plain ControlNet object around an SD U-Net ControlNet (classic or Union) whose
    strength is one constant factor: the layout and weighting `control_modes` describes."""
    return (
        type(control_net) is comfy.controlnet.ControlNet
        and isinstance(control_net.control_model, comfy.cldm.cldm.ControlNet)
        and control_net.strength_type == comfy.controlnet.StrengthType.CONSTANT
    )


def why_not_wrappable(control_net: Any) -> str:
    """The refusal for options on a control object `can_wrap` rejects, naming what it is."""
    options = "control modes other than balanced, masks and block weights"
    if isinstance(control_net, comfy.controlnet.T2IAdapter):
        return f"{options} are not available for T2I-Adapters: use balanced mode with no mask and no block weights"
    return (
        f"{options} need an SD1.x/SD2.x/SDXL ControlNet, loaded with ControlNet Suite's 'Load ControlNet' node or "
        f"ComfyUI's; this control is a {type(control_net).__module__}.{type(control_net).__name__}, whose outputs "
        "are placed differently: use balanced mode with no mask and no block weights"
    )


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


class ForeignControl(ModedControl):
    """ComfyUI's ControlNet object with our control mode, mask and block weights."""

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
        return self._copy_options_to(ForeignControl(self.inner.copy()))

    # called by ComfyUI's sampler (get_control: ModedControl's)

    def pre_run(self, model: Any, percent_to_timestep_function: Callable[[float], float]) -> None:
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
        out = self.inner.get_control(x_noisy, sigma, cond, chunks_run, {})  # it reads no transformer_options
        residuals = out["output"] + out["middle"]
        weights = control_modes.mode_weights(self.control_mode, self.strength, self._divisors(), self.block_weights)
        if len({id(r) for r in residuals}) == len(residuals):  # ComfyUI may share one tensor between entries
            residuals = scale_in_place(residuals, weights)
        else:
            residuals = control_modes.scale_residuals(residuals, weights)
        return self._masked(residuals, x_noisy, x_noisy.dtype, per_chunk, chunks_run)

    def _divisors(self) -> list[int]:
        return resolution_divisors(self.inner.control_model)
