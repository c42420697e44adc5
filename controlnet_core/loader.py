"""Load any common ControlNet checkpoint into our `ControlNet`.

    loaded = load_controlnet("models/controlnet/control_v11p_sd15_canny.pth")
    loaded.family   # "SD1.x"
    loaded.layout   # "original"
    residuals = loaded.model(x, hint, timesteps, context)

The model is built on the meta device and each tensor is read from the file (lazily for
safetensors), converted to the target dtype and device, and assigned: at no point are two full
copies of the weights held.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping

import torch

from . import formats
from .config import ControlNetConfig, config_from_state_dict
from .errors import ControlNetError, ControlNetFormatError
from .files import WeightFile, assign_weights, find_diffusers_weights, open_weights, read_diffusers_config
from .lllite import ControlLLLite, load_lllite
from .model import TORCH_OPS, ControlNet
from .t2i_adapter import T2IAdapter, load_t2i_adapter
from .union import load_union

# A source of base U-Net weights in original naming without prefix ("input_blocks.1.0...").
BaseWeights = Mapping[str, torch.Tensor]
SHUFFLE_SUFFIXES = ("_shuffle", "_shuffle_fp16")  # ComfyUI's rule for global average pooling


@dataclass
class LoadedControlNet:
    model: ControlNet | T2IAdapter | ControlLLLite  # UnionControlNet is a ControlNet
    layout: str
    path: str

    @property
    def config(self) -> ControlNetConfig:
        return self.model.config

    @property
    def family(self) -> str:
        return self.config.family


def load_controlnet(
    path: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    ops: Any = TORCH_OPS,
    base_unet: BaseWeights | None = None,
) -> LoadedControlNet:
    """Load a ControlNet file or diffusers folder. `base_unet` (the base model's U-Net weights in
    original naming) is needed for "difference" files."""
    weights = open_weights(_weights_path(path))
    layout = _detect(weights)
    name = _name(weights)
    if layout == formats.CONTROL_LORA:
        if base_unet is None:
            raise ControlNetFormatError(
                f"{name} is a Control-LoRA: it holds low-rank changes to the base model and cannot be loaded on its "
                "own. Use 'Load ControlNet with Model (ControlNet Suite)' and connect the model it was made for"
            )
        return LoadedControlNet(_build_control_lora(weights, base_unet, dtype, device, ops), layout, path)
    if layout == formats.DIFFUSERS_UNION:
        return LoadedControlNet(load_union(weights, dtype, device, ops, heads=_heads(weights)), layout, path)
    if layout == formats.T2I_ADAPTER:
        return LoadedControlNet(load_t2i_adapter(weights, dtype, device, ops), layout, path)
    if layout == formats.LLLITE:
        return LoadedControlNet(load_lllite(weights, dtype, device, ops), layout, path)
    sources = _sources(weights, layout)
    shapes = {k: weights.shapes[v] for k, v in sources.items()}
    if layout == formats.DIFFERENCE:
        if base_unet is None:
            raise ControlNetFormatError(
                f"{name} is a \"difference\" ControlNet: it stores ControlNet minus the base U-Net and needs the "
                "base model to be loaded. Use 'Load ControlNet with Model (ControlNet Suite)' and connect the model it was made for"
            )
        # Deltas below 1e-6 may have been dropped from the file: the base fills those in.
        shapes = {**{k: tuple(v.shape) for k, v in base_unet.items() if k.startswith(formats.UNET_ENCODER_MODULES)}, **shapes}
        read = _difference_reader(weights, sources, base_unet)
    else:
        read = lambda key: weights[sources[key]]  # noqa: E731
    cfg = config_from_state_dict(shapes, _heads(weights), name)
    cfg = replace(cfg, **_options(weights, path))

    return LoadedControlNet(build_model(cfg, read, dtype, device, ops, name), layout, path)


def build_model(
    cfg: ControlNetConfig,
    read: Callable[[str], torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str,
    ops: Any = TORCH_OPS,
    source: str = "the file",
) -> ControlNet:
    """Build on the meta device, then assign each tensor read(key) in the target dtype/device."""
    with torch.device("meta"):
        model = ControlNet(cfg, ops=ops, dtype=dtype)
    return assign_weights(model, read, dtype, device, source, "ControlNet")


def _weights_path(path: str) -> str:
    return find_diffusers_weights(path) if os.path.isdir(path) else path


def _name(weights: WeightFile) -> str:
    return f"'{os.path.basename(weights.path)}'"


def _detect(weights: WeightFile) -> str:
    try:
        return formats.detect_layout(weights.shapes)
    except ControlNetFormatError as exc:
        raise ControlNetFormatError(f"'{os.path.basename(weights.path)}': {exc}") from None


def _sources(weights: WeightFile, layout: str) -> dict[str, str]:
    """{our key: file key}."""
    if layout == formats.DIFFUSERS:
        return formats.diffusers_to_original_keys(weights.shapes)
    original_layout = formats.ORIGINAL_BARE if "zero_convs.0.0.weight" in weights.shapes else formats.ORIGINAL
    return formats.original_controlnet_keys(weights.shapes, original_layout)


def _heads(weights: WeightFile) -> dict | None:
    """Head split from a diffusers config.json beside the file (None: the family default)."""
    config = read_diffusers_config(weights.path)
    if not config:
        return None
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    widths = config.get("block_out_channels")
    if heads is None or widths is None:
        return None
    if not isinstance(heads, list):
        return {"num_heads": int(heads)}  # diffusers' attention_head_dim is a head *count* (known misnomer)
    head_channels = {width // count for width, count in zip(widths, heads)}
    if len(head_channels) != 1:
        raise ControlNetFormatError(f"{_name(weights)}: config.json head counts {heads} do not give one head width")
    return {"head_channels": head_channels.pop()}


def _options(weights: WeightFile, path: str) -> dict:
    config = read_diffusers_config(weights.path) or {}
    stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
    return {
        "global_average_pooling": bool(config.get("global_pool_conditions")) or stem.endswith(SHUFFLE_SUFFIXES),
        "bgr_hint": config.get("controlnet_conditioning_channel_order") == "bgr",
    }


def _difference_reader(weights: WeightFile, sources: dict[str, str], base: BaseWeights) -> Callable[[str], torch.Tensor]:
    """A difference file stores W_control − W_base for U-Net keys (tiny deltas may be dropped)."""

    def read(key: str) -> torch.Tensor:
        in_unet = key.startswith(formats.UNET_ENCODER_MODULES)
        if key in sources:
            stored = weights[sources[key]]
            if not in_unet:
                return stored
            if key not in base:
                raise ControlNetError(f"the base model has no '{key}': it is not the model this difference file is for")
            return stored.float() + base[key].to(stored.device).float()
        if in_unet and key in base:
            return base[key]
        raise KeyError(key)

    return read


def _build_control_lora(
    weights: WeightFile, base: BaseWeights, dtype: torch.dtype, device: torch.device | str, ops: Any
) -> ControlNet:
    """Control-LoRA (Stability): the ControlNet has the base U-Net's shape; each layer is either
    stored in full (hint encoder, zero convs, norms...), stored as a low-rank pair
    `<module>.up`/`<module>.down` with W = W_base + up·down, or taken from the base as it is."""
    encoder_shapes = {k: tuple(v.shape) for k, v in base.items() if k.startswith(formats.UNET_ENCODER_MODULES)}
    full = {k: weights.shapes[k] for k in weights.shapes if k.startswith(formats.CONTROLNET_MODULES)}
    cfg = config_from_state_dict({**encoder_shapes, **full}, None, _name(weights))

    def read(key: str) -> torch.Tensor:
        if key in weights.shapes:
            return weights[key]
        module, _, param = key.rpartition(".")
        if param == "weight" and f"{module}.up" in weights.shapes:
            base_weight = base[key].float()
            up, down = weights[f"{module}.up"].float(), weights[f"{module}.down"].float()
            return base_weight + (up.flatten(1) @ down.flatten(1)).reshape(base_weight.shape)
        return base[key]

    return build_model(cfg, read, dtype, device, ops, _name(weights))


__all__ = ["LoadedControlNet", "load_controlnet", "build_model"]
