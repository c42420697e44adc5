"""T2I-Adapter (Mou et al. 2023, TencentARC): a small network that turns the condition image into
one feature map per U-Net resolution, added on the *encoder* side of the U-Net. Unlike a
ControlNet it does not see the latent or the timestep, so it runs once per image.

    hint (B, C, H, W) -> PixelUnshuffle -> [conv_in] -> level 0 -> level 1 -> ... -> features

Two architectures, each read off its weights:
- full (`Adapter`, SD1.x and SDXL): conv_in, then per level `num_res_blocks` residual blocks
  (x + conv_k(relu(conv3x3(x)))); a level's first block may downsample (avg pool, or a stride-2
  conv `down_opt.op`) and change width (`in_conv`).
- light (`Adapter_light`): per level in_conv (1x1, to a quarter width), residual blocks of two
  3x3 convs, out_conv (1x1); every level but the first downsamples by avg pool.

Module names follow the original TencentARC code (`conv_in`, `body.N.block1`, `body.N.in_conv`,
`body.N.down_opt.op`; light: `body.L.in_conv`, `body.L.body.K.block1`, `body.L.out_conv`), as
ComfyUI loads them. The diffusers layout (`adapter.body.L.resnets.K...`) and files wrapped in an
`adapter` dict are renamed by `original_adapter_keys`, the one table.

Outputs: `T2IAdapter.forward` returns one feature per level, finest first (the order of diffusers'
`T2IAdapter`). `comfy_control` places them where ComfyUI adds them (after U-Net input blocks
2, 5, 8, 11 for SD1.x; 3, 5, 8 and the middle block for SDXL).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import SD1, SDXL
from .errors import ControlNetFormatError
from .files import WeightFile, assign_weights
from .model import TORCH_OPS, Downsample

FULL = "full"
LIGHT = "light"
# Pixel-unshuffle factors: SD1.x/SD2.x adapters see the image at 1/8 (the latent size), SDXL
# adapters at 1/16 (ComfyUI: unshuffle_amount 8 / 16; diffusers: downscale_factor).
SD_UNSHUFFLE = 8
SDXL_UNSHUFFLE = 16
HINT_CHANNEL_CHOICES = (3, 1)  # RGB condition images, or 1-channel sketches (t2iadapter_sketch)
# The original flat `body` list has no level boundaries; TencentARC's Adapter always has four
# levels (channels [320, 640, 1280, 1280]; ComfyUI builds [c, 2c, 4c, 4c]).
ORIGINAL_FULL_LEVELS = 4
# SDXL full adapters downsample only in level 2: levels 0-1 are at 1/16 of the image, 2-3 at 1/32
# (ComfyUI adapter.py: resblock_downsample=[2]; diffusers FullAdapterXL: i == 2).
SDXL_DOWNSAMPLE_LEVELS = (2,)


@dataclass(frozen=True)
class AdapterConfig:
    kind: str  # FULL or LIGHT
    hint_channels: int  # 3 (RGB) or 1 (sketch)
    unshuffle_factor: int  # SD_UNSHUFFLE or SDXL_UNSHUFFLE
    channels: tuple[int, ...]  # feature width of each level
    num_res_blocks: int  # residual blocks per level
    kernel_size: int = 1  # full: kernel of block2 and in_conv (1 in every published file but ksize=3 variants)
    conv_downsample: bool = False  # full: stride-2 conv `down_opt.op` instead of avg pool
    inner_channels: tuple[int, ...] = ()  # light: width inside each level

    @property
    def family(self) -> str:
        """SDXL or SD1.x (SD2.x U-Nets have the SD1.x block layout, so SD1.x placement fits)."""
        return SDXL if self.unshuffle_factor == SDXL_UNSHUFFLE else SD1

    @property
    def downsample_levels(self) -> tuple[int, ...]:
        if self.kind == FULL and self.family == SDXL:
            return SDXL_DOWNSAMPLE_LEVELS
        return tuple(range(1, len(self.channels)))


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Halve the resolution by 2x2 average pooling. diffusers rounds odd sizes up (ceil_mode);
    the original pads odd sizes instead: both agree on the even sizes adapters are used at."""
    return F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)


class AdapterResBlock(nn.Module):
    """Full adapter block: [downsample] -> [in_conv to the new width] -> x + block2(relu(block1(x)))."""

    def __init__(self, in_ch: int, out_ch: int, down: bool, cfg: AdapterConfig, ops: Any, **kw: Any):
        super().__init__()
        k = cfg.kernel_size
        self.down = down
        # `down_opt.op` (use_conv): the same stride-2 3x3 conv as the U-Net's Downsample
        self.down_opt = Downsample(in_ch, in_ch, ops, **kw) if down and cfg.conv_downsample else None
        self.in_conv = ops.Conv2d(in_ch, out_ch, k, padding=k // 2, **kw) if in_ch != out_ch else None
        self.block1 = ops.Conv2d(out_ch, out_ch, 3, padding=1, **kw)
        self.act = nn.ReLU()
        self.block2 = ops.Conv2d(out_ch, out_ch, k, padding=k // 2, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt(x) if self.down_opt is not None else downsample(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(self.act(self.block1(x)))


class LightResBlock(nn.Module):
    def __init__(self, channels: int, ops: Any, **kw: Any):
        super().__init__()
        self.block1 = ops.Conv2d(channels, channels, 3, padding=1, **kw)
        self.act = nn.ReLU()
        self.block2 = ops.Conv2d(channels, channels, 3, padding=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(self.act(self.block1(x)))


class LightLevel(nn.Module):
    """One level of the light adapter (the original's `extractor`)."""

    def __init__(self, in_ch: int, inner: int, out_ch: int, num_blocks: int, down: bool, ops: Any, **kw: Any):
        super().__init__()
        self.down = down
        self.in_conv = ops.Conv2d(in_ch, inner, 1, **kw)
        self.body = nn.Sequential(*(LightResBlock(inner, ops, **kw) for _ in range(num_blocks)))
        self.out_conv = ops.Conv2d(inner, out_ch, 1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = downsample(x)
        return self.out_conv(self.body(self.in_conv(x)))


class T2IAdapter(nn.Module):
    def __init__(
        self,
        cfg: AdapterConfig,
        ops: Any = TORCH_OPS,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        kw = {"dtype": dtype, "device": device}
        self.config = cfg
        self.unshuffle = nn.PixelUnshuffle(cfg.unshuffle_factor)
        unshuffled = cfg.hint_channels * cfg.unshuffle_factor**2
        downs = cfg.downsample_levels
        if cfg.kind == FULL:
            self.conv_in = ops.Conv2d(unshuffled, cfg.channels[0], 3, padding=1, **kw)
            blocks = []  # flat, as in the original: block n is level n // num_res_blocks
            for level, width in enumerate(cfg.channels):
                previous = cfg.channels[max(level - 1, 0)]
                for j in range(cfg.num_res_blocks):
                    first = j == 0
                    blocks.append(
                        AdapterResBlock(previous if first else width, width, first and level in downs, cfg, ops, **kw)
                    )
            self.body = nn.ModuleList(blocks)
        else:
            ins = (unshuffled, *cfg.channels[:-1])
            self.body = nn.ModuleList(
                LightLevel(c_in, inner, c_out, cfg.num_res_blocks, level in downs, ops, **kw)
                for level, (c_in, inner, c_out) in enumerate(zip(ins, cfg.inner_channels, cfg.channels))
            )

    @property
    def dtype(self) -> torch.dtype:
        return self.body[0].block1.weight.dtype if self.config.kind == FULL else self.body[0].in_conv.weight.dtype

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        """Condition image (B, C, H, W, values 0..1, H and W multiples of the unshuffle factor)
        -> one feature map per level, finest first (level 0 .. level L-1)."""
        cfg = self.config
        if hint.shape[1] != cfg.hint_channels:
            if cfg.hint_channels == 1:  # sketch adapters take one channel; ComfyUI averages RGB
                hint = hint.mean(dim=1, keepdim=True)
            else:
                raise ValueError(f"this T2I-Adapter takes {cfg.hint_channels}-channel images, got {hint.shape[1]}")
        if hint.shape[2] % cfg.unshuffle_factor or hint.shape[3] % cfg.unshuffle_factor:
            raise ValueError(
                f"T2I-Adapter hint size {tuple(hint.shape[2:])} is not a multiple of {cfg.unshuffle_factor}; "
                "resize the image first"
            )
        x = self.unshuffle(hint.to(self.dtype))
        features = []
        if cfg.kind == FULL:
            x = self.conv_in(x)
            for n, block in enumerate(self.body):
                x = block(x)
                if (n + 1) % cfg.num_res_blocks == 0:
                    features.append(x)
        else:
            for level in self.body:
                x = level(x)
                features.append(x)
        return features


# --- where the features go (ComfyUI's residual convention) ------------------------------------


@dataclass(frozen=True)
class Injection:
    input_entries: int  # length of ComfyUI's 'input' list
    input_blocks: tuple[int, ...]  # U-Net input block after which feature i is added
    middle: bool  # the last feature goes after the middle block
    latent_divisors: tuple[int, ...]  # how many times smaller than the latent feature i is


# SD1.x/SD2.x: 320@1/8, 640@1/16, 1280@1/32, 1280@1/64 of the image after input blocks 2, 5, 8,
# 11 of 12 (A1111 hook.py t2i_injection; ComfyUI adapter.py). SDXL: after input blocks 3, 5, 8 of
# 9 and after the middle block, at 1/16, 1/16, 1/32, 1/32; ComfyUI's list has one spare entry (10),
# kept so chained controls, which ComfyUI merges index by index, line up with its own.
INJECTION = {
    SD1: Injection(input_entries=12, input_blocks=(2, 5, 8, 11), middle=False, latent_divisors=(1, 2, 4, 8)),
    SDXL: Injection(input_entries=10, input_blocks=(3, 5, 8), middle=True, latent_divisors=(2, 2, 4, 4)),
}


def comfy_control(features: Sequence[torch.Tensor], family: str) -> dict[str, list[torch.Tensor | None]]:
    """Features in ComfyUI's control dict: {'input': [...], 'middle': [...]}, None where nothing
    is added. The U-Net pops each list from the end, once per block, so 'input' is in *reverse*
    block order: its last entry belongs to input block 0."""
    plan = INJECTION[family]
    expected = len(plan.input_blocks) + plan.middle
    if len(features) != expected:
        raise ValueError(f"a {family} T2I-Adapter gives {expected} features, got {len(features)}")
    by_block: list[torch.Tensor | None] = [None] * plan.input_entries
    for block, feature in zip(plan.input_blocks, features):
        by_block[block] = feature
    control: dict[str, list[torch.Tensor | None]] = {"input": by_block[::-1]}
    if plan.middle:
        control["middle"] = [features[-1]]
    return control


def features_in(control: dict[str, list[torch.Tensor | None]]) -> list[torch.Tensor]:
    """The features of a control dict laid out as `comfy_control` does, finest first: its
    inverse."""
    by_block = [f for f in reversed(control["input"]) if f is not None]
    return by_block + list(control.get("middle", []))


# --- loading: the one key table ---------------------------------------------------------------

_DIFFUSERS_RESNET = re.compile(r"adapter\.body\.(\d+)\.resnets\.(\d+)\.(.+)")
_DIFFUSERS_LEVEL = re.compile(r"adapter\.body\.(\d+)\.(in_conv|out_conv)\.(.+)")
_FULL_BLOCK = re.compile(r"body\.(\d+)\.block1\.weight")
_LIGHT_LEVEL = re.compile(r"body\.(\d+)\.in_conv\.weight")
_LIGHT_BLOCK = re.compile(r"body\.0\.body\.(\d+)\.block1\.weight")
DIFFUSERS_MARKER = "adapter.body.0.resnets.0.block1.weight"
WRAPPER_PREFIX = "adapter."  # files saved as {"adapter": state_dict} (unwrapped to "adapter.<key>")


def _indices(pattern: re.Pattern, keys: Iterable[str]) -> list[int]:
    return sorted({int(m.group(1)) for k in keys for m in [pattern.fullmatch(k)] if m})


def original_adapter_keys(keys: Iterable[str]) -> tuple[str, int, dict[str, str]]:
    """(kind, residual blocks per level, {original key: file key}) for any T2I-Adapter layout."""
    keys = list(keys)
    if "style_embedding" in keys:
        raise ControlNetFormatError("this is a T2I style adapter (CLIP-vision tokens), which ControlNet Suite does not load")
    if DIFFUSERS_MARKER in keys:
        return _diffusers_adapter_keys(keys)
    if keys and all(k.startswith(WRAPPER_PREFIX) for k in keys):
        keys = [k[len(WRAPPER_PREFIX):] for k in keys]
        kind, blocks, sources = original_adapter_keys(keys)
        return kind, blocks, {ours: WRAPPER_PREFIX + theirs for ours, theirs in sources.items()}
    sources = {k: k for k in keys}
    if "conv_in.weight" in keys:
        blocks = len(_indices(_FULL_BLOCK, keys))
        if blocks == 0 or blocks % ORIGINAL_FULL_LEVELS:
            raise ControlNetFormatError(
                f"a full T2I-Adapter has {ORIGINAL_FULL_LEVELS} levels of residual blocks; this file has {blocks} blocks"
            )
        return FULL, blocks // ORIGINAL_FULL_LEVELS, sources
    if "body.0.in_conv.weight" in keys:
        return LIGHT, len(_indices(_LIGHT_BLOCK, keys)), sources
    raise ControlNetFormatError("not a T2I-Adapter: neither conv_in.weight nor body.0.in_conv.weight is present")


def _diffusers_adapter_keys(keys: list[str]) -> tuple[str, int, dict[str, str]]:
    """diffusers nests blocks per level (adapter.body.L.resnets.K); the original full adapter
    numbers them in one flat list (body.N, N = L * blocks_per_level + K)."""
    kind = FULL if "adapter.conv_in.weight" in keys else LIGHT
    blocks = len({int(m.group(1)) for k in keys if (m := re.fullmatch(r"adapter\.body\.0\.resnets\.(\d+)\.block1\.weight", k))})
    sources = {}
    for key in keys:
        if m := _DIFFUSERS_RESNET.fullmatch(key):
            level, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            ours = f"body.{level * blocks + j}.{rest}" if kind == FULL else f"body.{level}.body.{j}.{rest}"
        elif m := _DIFFUSERS_LEVEL.fullmatch(key):
            level, name, rest = int(m.group(1)), m.group(2), m.group(3)
            ours = f"body.{level * blocks}.{name}.{rest}" if kind == FULL else f"body.{level}.{name}.{rest}"
        else:
            ours = key.removeprefix(WRAPPER_PREFIX)  # adapter.conv_in.* -> conv_in.*
        sources[ours] = key
    return kind, blocks, sources


def adapter_config(kind: str, blocks: int, shapes: dict[str, Sequence[int]], source: str = "the file") -> AdapterConfig:
    """The architecture from original-layout key shapes."""

    def need(key: str) -> Sequence[int]:
        if key not in shapes:
            raise ControlNetFormatError(f"{source} lacks the weight '{key}' that this T2I-Adapter needs")
        return shapes[key]

    if kind == FULL:
        unshuffled = int(need("conv_in.weight")[1])
        levels = len(_indices(_FULL_BLOCK, shapes)) // blocks
        channels = tuple(int(need(f"body.{level * blocks}.block1.weight")[0]) for level in range(levels))
        kernel = int(need("body.0.block2.weight")[2])
        conv_down = any(k.endswith("down_opt.op.weight") for k in shapes)
        inner: tuple[int, ...] = ()
    else:
        unshuffled = int(need("body.0.in_conv.weight")[1])
        levels = len(_indices(_LIGHT_LEVEL, shapes))
        channels = tuple(int(need(f"body.{level}.out_conv.weight")[0]) for level in range(levels))
        inner = tuple(int(need(f"body.{level}.in_conv.weight")[0]) for level in range(levels))
        kernel, conv_down = 1, False
    factor, hint_channels = _unshuffle(unshuffled, source)
    return AdapterConfig(kind, hint_channels, factor, channels, blocks, kernel, conv_down, inner)


def _unshuffle(unshuffled: int, source: str) -> tuple[int, int]:
    """(unshuffle factor, hint channels) from the first conv's input width, C * factor²."""
    for factor in (SDXL_UNSHUFFLE, SD_UNSHUFFLE):
        for channels in HINT_CHANNEL_CHOICES:
            if unshuffled == channels * factor**2:
                return factor, channels
    raise ControlNetFormatError(
        f"{source}: a T2I-Adapter whose first conv takes {unshuffled} channels is not 1 or 3 image channels "
        f"unshuffled by {SD_UNSHUFFLE} or {SDXL_UNSHUFFLE}"
    )


def load_t2i_adapter(
    weights: WeightFile,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    ops: Any = TORCH_OPS,
) -> T2IAdapter:
    """Load a T2I-Adapter (full, light or SDXL; original, diffusers or `adapter`-wrapped layout)."""
    source = f"'{os.path.basename(weights.path)}'"
    try:
        kind, blocks, sources = original_adapter_keys(weights.shapes)
    except ControlNetFormatError as exc:
        raise ControlNetFormatError(f"{source}: {exc}") from None
    cfg = adapter_config(kind, blocks, {ours: weights.shapes[theirs] for ours, theirs in sources.items()}, source)
    with torch.device("meta"):
        model = T2IAdapter(cfg, ops=ops, dtype=dtype)

    # Strict both ways: an unused weight (e.g. `skep` of sk=False adapters) means a model we
    # would run wrongly.
    leftover = sorted(sources[k] for k in set(sources) - set(model.state_dict()))
    if leftover:
        raise ControlNetFormatError(
            f"{source} has weights this T2I-Adapter does not have ({', '.join(leftover[:3])}"
            f"{', ...' if len(leftover) > 3 else ''}): it is a variant ControlNet Suite does not know"
        )

    def read(key: str) -> torch.Tensor:
        if key not in sources:
            raise KeyError(key)
        return weights[sources[key]]

    return assign_weights(model, read, dtype, device, source, "T2I-Adapter")
