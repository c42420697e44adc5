"""The paper's trainable copy: a new ControlNet made from a base U-Net.

What the original `tool_add_control.py` and diffusers' `ControlNetModel.from_unet` do: the time
embedding, input blocks and middle block are copied from the locked U-Net; the zero convolutions
(and the hint encoder's last conv) start at exactly zero, so the new ControlNet adds exactly
nothing until training moves them; the rest of the hint encoder gets PyTorch's default init.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch
from safetensors.torch import save_file

from . import formats
from .config import config_from_state_dict
from .errors import ControlNetFormatError
from .files import atomic_write
from .model import ControlNet

LDM_UNET_PREFIX = "model.diffusion_model."


def unet_encoder_weights(unet: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder half of a U-Net in original naming, from a full SD checkpoint
    (`model.diffusion_model.` prefix), a bare LDM U-Net, or a diffusers UNet2DConditionModel."""
    if any(k.startswith(LDM_UNET_PREFIX) for k in unet):
        unet = {k[len(LDM_UNET_PREFIX):]: v for k, v in unet.items() if k.startswith(LDM_UNET_PREFIX)}
    if any(k.startswith("down_blocks.") for k in unet):
        unet = {ours: unet[theirs] for ours, theirs in formats.diffusers_to_original_keys(unet).items()}
    encoder = {k: v for k, v in unet.items() if k.startswith(formats.UNET_ENCODER_MODULES)}
    if "input_blocks.0.0.weight" not in encoder:
        raise ControlNetFormatError(
            "these weights are not a Stable Diffusion U-Net (no input_blocks.0.0 / conv_in): pass an SD1.x, SD2.x "
            "or SDXL checkpoint or U-Net"
        )
    return encoder


def create_controlnet_from_unet(
    unet: Mapping[str, torch.Tensor], hint_channels: int = 3, heads: dict | None = None
) -> ControlNet:
    """A ControlNet whose trainable copy starts as the given U-Net's encoder."""
    encoder = unet_encoder_weights(unet)
    cfg = config_from_state_dict({k: tuple(v.shape) for k, v in encoder.items()}, heads, "the base U-Net")
    cfg = replace(cfg, hint_channels=hint_channels)
    dtype = encoder["input_blocks.0.0.weight"].dtype
    controlnet = ControlNet(cfg, dtype=dtype)
    missing = controlnet.load_state_dict(encoder, strict=False).missing_keys
    copied_everything = all(k.startswith(("input_hint_block.", "zero_convs.", "middle_block_out.")) for k in missing)
    if not copied_everything:
        raise ControlNetFormatError(f"the base U-Net lacks encoder weights the copy needs: {missing[:5]}")
    return controlnet


def save_controlnet(controlnet: ControlNet, path: str, metadata: dict[str, str] | None = None) -> None:
    """Save in the original layout (`control_model.` prefix, safetensors), which ComfyUI's built-in
    loader, A1111 and diffusers' `from_single_file` all read. Written to a temporary file and
    renamed, so an interruption never leaves a broken file under `path`."""
    tensors = {formats.ORIGINAL_PREFIX + k: v.detach().contiguous() for k, v in controlnet.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})}))
