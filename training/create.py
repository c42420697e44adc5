"""Create a new ControlNet from a base model (the paper's trainable copy, §3.2).

The copy itself is `controlnet_core.create.create_controlnet_from_unet`; this adds reading a
checkpoint file, the dtype, and a hint encoder that downsamples less (pixel-space toy models:
the condition is at the model's own resolution).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping

import torch

from ._core import config as cn_config
from ._core import create, files
from ._core import model as cn_model
ControlNetFormatError = create.ControlNetFormatError
from .unet import unet_weights

SD_HINT_DOWNSAMPLING = len(cn_config.HINT_ENCODER_CHANNELS) - 1  # 3 stride-2 convs: 512 px -> 64 latent


def new_controlnet(
    unet: Mapping[str, torch.Tensor],
    hint_channels: int = 3,
    hint_downsampling: int = SD_HINT_DOWNSAMPLING,
    heads: dict | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> cn_model.ControlNet:
    """A ControlNet whose trainable copy is `unet`'s encoder, zero convolutions at zero, and a
    hint encoder for `hint_channels` channels with `hint_downsampling` stride-2 steps."""
    if hint_channels < 1:
        raise ValueError(f"hint_channels must be >= 1 (got {hint_channels}): 3 for an RGB condition map, 1 for a mask")
    if not 0 <= hint_downsampling <= SD_HINT_DOWNSAMPLING:
        raise ValueError(f"hint_downsampling must be 0..{SD_HINT_DOWNSAMPLING} (got {hint_downsampling}); SD uses 3")
    controlnet = create.create_controlnet_from_unet(unet, hint_channels, heads)
    if hint_downsampling != SD_HINT_DOWNSAMPLING:
        cfg = replace(controlnet.config, hint_encoder_channels=cn_config.HINT_ENCODER_CHANNELS[: hint_downsampling + 1])
        kw = {"dtype": controlnet.dtype}
        controlnet.input_hint_block = cn_model.hint_encoder(cfg, cn_model.TORCH_OPS, **kw)
        controlnet.config = cfg
    return controlnet.to(dtype) if dtype is not None else controlnet


def new_controlnet_from_file(
    base_path: str, hint_channels: int = 3, heads: dict | None = None, dtype: torch.dtype = torch.float32
) -> cn_model.ControlNet:
    """From an SD1.x / SD2.x / SDXL checkpoint (`model.diffusion_model.*` keys) or a bare U-Net file."""
    weights = files.open_weights(base_path)
    tensors = unet_weights(weights)
    if not tensors:
        raise ControlNetFormatError(
            f"'{base_path}' holds no U-Net weights (no 'model.diffusion_model.*' or 'input_blocks.*' keys): pass a "
            "Stable Diffusion checkpoint"
        )
    encoder = {k: v for k, v in tensors.items() if k.startswith(create.formats.UNET_ENCODER_MODULES)}
    return new_controlnet(encoder, hint_channels, heads=heads, dtype=dtype)
