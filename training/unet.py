"""A Stable Diffusion U-Net in the original (LDM / ComfyUI) layout that takes ControlNet residuals.

Module names are those of `ldm/modules/diffusionmodules/openaimodel.py` and ComfyUI's
`UNetModel` (`time_embed`, `label_emb`, `input_blocks`, `middle_block`, `output_blocks`, `out`),
so a checkpoint's `model.diffusion_model.*` tensors load with no renaming, and the encoder half
is exactly what `create_controlnet_from_unet` copies. The layers are the ControlNet's own
(`controlnet_core.model`), so base and trainable copy are the same code.

Residuals follow ComfyUI's convention: `control={'input': [...], 'middle': [...], 'output': [...]}`,
each list popped from its end: 'input' after every input block, 'middle' after the middle
block, 'output' on every skip connection as the decoder takes it (the deepest first), so a
ControlNet's residuals in input-block order are `{'output': residuals[:-1], 'middle':
residuals[-1:]}` (`control_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._core import config as cn_config
from ._core import create, errors, files, formats
from ._core import model as cn_model
LDM_UNET_PREFIX = create.LDM_UNET_PREFIX

UNET_MODULES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.", "output_blocks.", "out.")
DECODER_MODULES = ("output_blocks.", "out.")  # what the paper's sd_locked=False also trains


@dataclass(frozen=True)
class UNetConfig:
    """A U-Net: its encoder half (a ControlNetConfig, which fixes the whole U-Net: the decoder
    mirrors the encoder level by level) and its output channels."""

    encoder: cn_config.ControlNetConfig
    out_channels: int

    def levels(self) -> list[tuple[int, int, int]]:
        """(channels, ResBlocks, transformer depth) of each resolution level, shallowest first."""
        levels: list[list[int]] = [[self.encoder.model_channels, 0, 0]]
        for block in self.encoder.input_blocks:
            if block.kind == "down":
                levels.append([block.out_channels, 0, 0])
            else:
                levels[-1] = [block.out_channels, levels[-1][1] + 1, block.transformer_depth]
        return [tuple(level) for level in levels]  # type: ignore[misc]


def tiny_config(
    in_channels: int = 4,
    model_channels: int = 32,
    channel_mult: tuple[int, ...] = (1, 2),
    num_res_blocks: int = 1,
    transformer_depth: tuple[int, ...] = (0, 1),
    context_dim: int | None = 32,
    out_channels: int | None = None,
) -> UNetConfig:
    """A small SD1-style U-Net (64-channel-wide heads, as ComfyUI assumes for unknown widths)."""
    encoder = cn_config.sd_config(
        model_channels=model_channels,
        channel_mult=channel_mult,
        num_res_blocks=num_res_blocks,
        transformer_depth=transformer_depth,
        middle_transformer_depth=1 if context_dim else None,
        context_dim=context_dim,
        in_channels=in_channels,
        head_channels=min(cn_config.SD2_SDXL_HEAD_CHANNELS, model_channels),
    )
    return UNetConfig(encoder, out_channels or in_channels)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (`conv`, as in the original)."""

    def __init__(self, channels: int, ops: Any, **kw: Any):
        super().__init__()
        self.conv = ops.Conv2d(channels, channels, 3, padding=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNet(nn.Module):
    def __init__(
        self,
        cfg: UNetConfig,
        ops: Any = cn_model.TORCH_OPS,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        enc = cfg.encoder
        self.config = cfg
        mc = enc.model_channels
        emb_dim = enc.time_embed_dim or mc * 4
        self.time_embed = nn.Sequential(ops.Linear(mc, emb_dim, **kw), nn.SiLU(), ops.Linear(emb_dim, emb_dim, **kw))
        if enc.adm_in_channels is not None:
            self.label_emb = nn.Sequential(
                nn.Sequential(ops.Linear(enc.adm_in_channels, emb_dim, **kw), nn.SiLU(), ops.Linear(emb_dim, emb_dim, **kw))
            )

        Seq = cn_model.TimestepEmbedSequential
        self.input_blocks = nn.ModuleList([Seq(ops.Conv2d(enc.in_channels, mc, 3, padding=1, **kw))])
        skip_channels, ch = [mc], mc
        for block in enc.input_blocks:
            if block.kind == "down":
                layers: list[nn.Module] = [cn_model.Downsample(ch, block.out_channels, ops, **kw)]
            else:
                layers = [cn_model.ResBlock(ch, emb_dim, block.out_channels, ops, **kw)]
                if block.transformer_depth:
                    layers.append(cn_model.SpatialTransformer(block.out_channels, block.transformer_depth, enc, ops, **kw))
            self.input_blocks.append(Seq(*layers))
            ch = block.out_channels
            skip_channels.append(ch)

        middle: list[nn.Module] = [cn_model.ResBlock(ch, emb_dim, ch, ops, **kw)]
        if enc.middle_transformer_depth is not None:
            middle.append(cn_model.SpatialTransformer(ch, enc.middle_transformer_depth, enc, ops, **kw))
        middle.append(cn_model.ResBlock(ch, emb_dim, ch, ops, **kw))
        self.middle_block = Seq(*middle)

        self.output_blocks = nn.ModuleList()
        levels = cfg.levels()
        for level in reversed(range(len(levels))):
            width, res_blocks, depth = levels[level]
            for i in range(res_blocks + 1):
                layers = [cn_model.ResBlock(ch + skip_channels.pop(), emb_dim, width, ops, **kw)]
                ch = width
                if depth:
                    layers.append(cn_model.SpatialTransformer(ch, depth, enc, ops, **kw))
                if level and i == res_blocks:
                    layers.append(Upsample(ch, ops, **kw))
                self.output_blocks.append(Seq(*layers))
        self.out = nn.Sequential(
            ops.GroupNorm(cn_model.GROUP_NORM_GROUPS, ch, **kw), nn.SiLU(), ops.Conv2d(mc, cfg.out_channels, 3, padding=1, **kw)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.input_blocks[0][0].weight.dtype

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: Mapping[str, list[torch.Tensor | None]] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """The model output (noise, or v, as trained). `control` as ComfyUI passes it (module
        docstring); the caller's lists are not modified."""
        control = {name: list(control.get(name, [])) for name in ("input", "middle", "output")} if control else {}
        enc = self.config.encoder
        emb = self.time_embed(cn_model.timestep_embedding(timesteps, enc.model_channels).to(self.dtype))
        if enc.adm_in_channels is not None:
            if y is None:
                raise ValueError("this U-Net (SDXL-style) needs `y`, the pooled text + size embedding")
            emb = emb + self.label_emb(y.to(emb.dtype))
        context = context.to(self.dtype) if context is not None else None
        h = x.to(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = _apply_control(block(h, emb, context), control, "input")
            skips.append(h)
        h = _apply_control(self.middle_block(h, emb, context), control, "middle")
        for block in self.output_blocks:
            h = block(torch.cat([h, _apply_control(skips.pop(), control, "output")], dim=1), emb, context)
        return self.out(h)


def _apply_control(h: torch.Tensor, control: dict, name: str) -> torch.Tensor:
    residuals = control.get(name)
    if residuals:
        residual = residuals.pop()
        if residual is not None:
            return h + residual.to(h.dtype)  # not in place: autograd may need h
    return h


def control_dict(residuals: list[torch.Tensor], middle_only: bool = False) -> dict[str, list[torch.Tensor | None]]:
    """A ControlNet's residuals (input-block order, middle last) as the U-Net takes them.
    `middle_only`: the paper's small-scale recipe, only the middle block is connected."""
    skips: list[torch.Tensor | None] = [None] * (len(residuals) - 1) if middle_only else list(residuals[:-1])
    return {"input": [], "middle": [residuals[-1]], "output": skips}


def unet_weights(weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The U-Net tensors of a full SD checkpoint (`model.diffusion_model.` prefix) or a bare
    LDM U-Net, without prefix."""
    if any(k.startswith(LDM_UNET_PREFIX) for k in weights):
        return {k[len(LDM_UNET_PREFIX):]: weights[k] for k in weights if k.startswith(LDM_UNET_PREFIX)}
    return {k: weights[k] for k in weights if k.startswith(UNET_MODULES)}


def config_from_weights(
    shapes: Mapping[str, tuple[int, ...]], heads: dict | None = None, source: str = "the base model"
) -> UNetConfig:
    """The U-Net's shape read off its (unprefixed) keys. `heads` ({'num_heads': n} or
    {'head_channels': c}) is the one thing weights cannot show; None: the family default."""
    encoder_shapes = {k: v for k, v in shapes.items() if k.startswith(formats.UNET_ENCODER_MODULES)}
    if "out.2.weight" not in shapes or "input_blocks.0.0.weight" not in shapes:
        raise errors.ControlNetFormatError(
            f"{source} is not a Stable Diffusion U-Net in the original layout (no input_blocks.0.0 / out.2): pass an SD1.x, "
            "SD2.x or SDXL checkpoint whose U-Net keys start with 'model.diffusion_model.'"
        )
    return UNetConfig(cn_config.config_from_state_dict(encoder_shapes, heads, source), int(shapes["out.2.weight"][0]))


def unet_from_weights(
    weights: Mapping[str, torch.Tensor],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    heads: dict | None = None,
    source: str = "the base model",
) -> UNet:
    """A UNet holding these weights (full checkpoint or bare U-Net, original naming)."""
    tensors = unet_weights(weights)
    cfg = config_from_weights({k: tuple(v.shape) for k, v in tensors.items()}, heads, source)
    with torch.device("meta"):
        unet = UNet(cfg, dtype=dtype)
    return files.assign_weights(unet, tensors.__getitem__, dtype, device, source, "U-Net")


def load_unet(path: str, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> UNet:
    """The U-Net of an SD1.x / SD2.x / SDXL checkpoint file (.safetensors or .ckpt)."""
    weights = files.open_weights(path)
    keys = [k for k in weights if k.startswith(LDM_UNET_PREFIX) or k.startswith(UNET_MODULES)]
    return unet_from_weights({k: weights[k] for k in keys}, dtype, device, source=f"'{path}'")
