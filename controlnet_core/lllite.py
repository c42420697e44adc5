"""ControlNet-LLLite (kohya-ss, 2023): a light ControlNet for SDXL that adds no residuals.

Small modules sit in front of the U-Net's attention projections. Each turns the condition image
into tokens at its block's resolution and adds a learned correction to the projection's input:

    to_q(x)  becomes  to_q(x + w · up(mid([cond_tokens, down(x)])))

where cond_tokens = conditioning1(hint scaled to [-1, 1]), flattened to one token per position,
and w is the strength (kohya's `multiplier`). `up` starts at zero in training, as a ControlNet's
zero convolutions do, so an untrained module changes nothing.

A module's name says where it sits:
`lllite_unet_{input_blocks_N|middle_block|output_blocks_N}_1_transformer_blocks_K_{attn1|attn2}_to_{q|k|v}`
(the SpatialTransformer is item 1 of its U-Net block; K its transformer block). Every module has
its own conditioning1, of depth 1, 2 or 3, with a total stride of 8, 16 or 32 pixels: one token
per position of a block at the latent's resolution, half of it or a quarter of it (kohya-ss
sd-scripts networks/control_net_lllite.py picks the depth from the block).

Published files hold linear modules on self-attention's q, k, v and cross-attention's q. Kohya's
code can also make modules on convolutions; no published file has them and no host applies them,
so such a file is refused, as is a module on cross-attention's k or v (those read the text tokens,
which no image position lines up with).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from .config import SDXL
from .errors import ControlNetFormatError
from .files import WeightFile, assign_weights
from .formats import LLLITE_PREFIX
from .model import TORCH_OPS

MODULE_NAME = re.compile(
    re.escape(LLLITE_PREFIX) + r"(?:(?P<block>input_blocks|output_blocks)_(?P<index>\d+)|middle_block)"
    r"_1_transformer_blocks_(?P<transformer>\d+)_(?P<attention>attn1|attn2)_to_(?P<projection>[qkv])"
)
LATENT_TO_PIXELS = 8  # the VAE's downscale: a depth-1 conditioning1 gives one token per latent pixel
FIRST_STAGE_STRIDE = 4  # conditioning1.0: a 4×4, stride-4 convolution ("to latent size × 2")
# The later stages' strides by depth; the total stride is 8 · 2^(depth − 1).
LATER_STAGE_STRIDES = {1: (2,), 2: (4,), 3: (4, 2)}

# SDXL's U-Net: 3 levels of 3 input blocks (ResBlock, ResBlock, downsample; the first is conv_in),
# the middle block at the deepest level, 3 output blocks per level from the deepest up.
SDXL_LEVELS = 3
BLOCKS_PER_LEVEL = 3
SDXL_INPUT_BLOCKS = SDXL_LEVELS * BLOCKS_PER_LEVEL
# What every module has, whatever its depth (the shapes are read off them).
REQUIRED_WEIGHTS = ("conditioning1.0.weight", "conditioning1.2.weight", "down.0.weight", "mid.0.weight", "up.0.weight")


@dataclass(frozen=True)
class Site:
    """Where a module sits: a U-Net block ("input", "middle" or "output" and its index), its
    transformer block, the attention ("attn1" self, "attn2" cross) and the projection (q, k, v)."""

    block: str
    index: int
    transformer: int
    attention: str
    projection: str

    @property
    def level(self) -> int:
        """The block's resolution level: its feature map is 2^level times smaller than the latent."""
        if self.block == "input":
            return self.index // BLOCKS_PER_LEVEL
        if self.block == "middle":
            return SDXL_LEVELS - 1
        return SDXL_LEVELS - 1 - self.index // BLOCKS_PER_LEVEL

    @property
    def residual_index(self) -> int:
        """The SDXL ControlNet residual added at this depth of the U-Net (0..9, the middle block
        last): input block N's own; an output block's, the skip connection it takes (they are
        taken deepest first). Control modes and block weights weight a module by it."""
        if self.block == "input":
            return self.index
        if self.block == "middle":
            return SDXL_INPUT_BLOCKS
        return SDXL_INPUT_BLOCKS - 1 - self.index

    @property
    def order(self) -> tuple:
        """A sort key: the order the U-Net runs the sites in (q, k, v within an attention)."""
        return (("input", "middle", "output").index(self.block), self.index, self.transformer, self.attention,
                "qkv".index(self.projection))

    def describe(self) -> str:
        block = "the middle block" if self.block == "middle" else f"{self.block} block {self.index}"
        return f"{block}, transformer block {self.transformer}, {self.attention}.to_{self.projection}"


def parse_site(name: str) -> Site | None:
    match = MODULE_NAME.fullmatch(name)
    if match is None:
        return None
    block = {"input_blocks": "input", "output_blocks": "output", None: "middle"}[match["block"]]
    return Site(block, int(match["index"] or 0), int(match["transformer"]), match["attention"], match["projection"])


def residual_divisors() -> list[int]:
    """How many times smaller than the latent each SDXL ControlNet residual is (input blocks
    0..8, then the middle block): what control modes weight by."""
    return [2 ** (i // BLOCKS_PER_LEVEL) for i in range(SDXL_INPUT_BLOCKS)] + [2 ** (SDXL_LEVELS - 1)]


def token_grid(latent_size: tuple[int, int], level: int) -> tuple[int, int]:
    """(height, width) of a block's feature map at `level`: each downsample (a stride-2 conv
    with padding 1) rounds odd sides up."""
    factor = 2**level
    return tuple(-(-side // factor) for side in latent_size)


@dataclass(frozen=True)
class ModuleSpec:
    in_dim: int  # the projection's input width
    cond_emb_dim: int  # condition tokens' width
    mlp_dim: int  # width inside the module
    depth: int  # conditioning1 stages: 1, 2 or 3

    @property
    def stride(self) -> int:
        """Pixels of the condition image per token."""
        return FIRST_STAGE_STRIDE * math.prod(LATER_STAGE_STRIDES[self.depth])


@dataclass(frozen=True)
class LLLiteConfig:
    modules: tuple[tuple[str, ModuleSpec], ...]  # (file name of the module, its shape), in file order
    hint_channels: int = 3
    family: str = SDXL  # kohya trained LLLite for SDXL only (sdxl_train_control_net_lllite.py)


class LLLiteModule(nn.Module):
    """One module: conditioning1 (the image to tokens), then down, mid and up on the projection's
    input. Sub-module indices follow kohya's nn.Sequential ones, so state-dict keys are the file's."""

    def __init__(self, spec: ModuleSpec, ops: Any = TORCH_OPS, **kw: Any):
        super().__init__()
        half = spec.cond_emb_dim // 2
        widths = [3, half] + [half] * (len(LATER_STAGE_STRIDES[spec.depth]) - 1) + [spec.cond_emb_dim]
        strides = (FIRST_STAGE_STRIDE, *LATER_STAGE_STRIDES[spec.depth])
        stages: list[nn.Module] = []
        for i, stride in enumerate(strides):
            if i:
                stages.append(nn.ReLU())
            stages.append(ops.Conv2d(widths[i], widths[i + 1], stride, stride=stride, **kw))
        self.conditioning1 = nn.Sequential(*stages)
        self.down = nn.Sequential(ops.Linear(spec.in_dim, spec.mlp_dim, **kw), nn.ReLU())
        self.mid = nn.Sequential(ops.Linear(spec.mlp_dim + spec.cond_emb_dim, spec.mlp_dim, **kw), nn.ReLU())
        self.up = nn.Sequential(ops.Linear(spec.mlp_dim, spec.in_dim, **kw))

    def embed(self, hint: torch.Tensor) -> torch.Tensor:
        """Condition tokens (B×T×C, row-major positions) of a hint (B×3×H×W in [-1, 1])."""
        return self.conditioning1(hint).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor, cond_tokens: torch.Tensor) -> torch.Tensor:
        """The correction to the projection's input x (B×T×in_dim); cond_tokens has x's rows."""
        return self.up(self.mid(torch.cat([cond_tokens, self.down(x)], dim=-1)))


class ControlLLLite(nn.Module):
    """All modules of a file, each registered under its file name (state-dict keys = file keys)."""

    def __init__(self, cfg: LLLiteConfig, ops: Any = TORCH_OPS, dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        self.config = cfg
        self.sites = {name: parse_site(name) for name, _ in cfg.modules}
        self.specs = dict(cfg.modules)
        # {(block, index, transformer block, attention): {projection: module name}}: what a host's
        # attention patch looks up where it is called
        self.at_place: dict[tuple[str, int, int, str], dict[str, str]] = {}
        for name, site in self.sites.items():
            self.at_place.setdefault((site.block, site.index, site.transformer, site.attention), {})[site.projection] = name
        for name, spec in cfg.modules:
            self.add_module(name, LLLiteModule(spec, ops, dtype=dtype, device=device))
        # The dtype the modules compute in; None: the weights' (as ControlNet.compute_dtype).
        self.compute_dtype: torch.dtype | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def module(self, name: str) -> LLLiteModule:
        return getattr(self, name)

    def levels(self) -> set[int]:
        return {site.level for site in self.sites.values()}

    def embed_hint(self, hint_at: Callable[[int], torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every module's condition tokens; hint_at(level) is the hint (B×3×H×W in [-1, 1]) at
        the pixel size of that level's token grid (`hint_size`)."""
        return {name: self.module(name).embed(hint_at(site.level)) for name, site in self.sites.items()}


def hint_size(latent_size: tuple[int, int], level: int) -> tuple[int, int]:
    """(height, width) in pixels that a module at `level` turns into exactly that level's token
    grid: 8 · 2^level pixels per token. For even latent sides it is the latent's pixel size."""
    return tuple(side * LATENT_TO_PIXELS * 2**level for side in token_grid(latent_size, level))


# --- loading -----------------------------------------------------------------------------------

def lllite_config(shapes: dict[str, tuple[int, ...]], source: str) -> LLLiteConfig:
    """The modules of a file and their shapes, read off the weights (as kohya's ComfyUI node
    reads them), each checked against the block its name places it in."""
    names = list(dict.fromkeys(key.split(".", 1)[0] for key in shapes))
    modules = []
    for name in names:
        site = parse_site(name)
        if site is None:
            raise ControlNetFormatError(f"{source}: '{name}' is not a ControlNet-LLLite module name ControlNet Suite knows")
        missing = [key for key in REQUIRED_WEIGHTS if f"{name}.{key}" not in shapes]
        if missing:
            raise ControlNetFormatError(
                f"{source}: module '{name}' has no {', '.join(missing)}: the file is incomplete or not a ControlNet-LLLite"
            )
        down = shapes[f"{name}.down.0.weight"]
        if len(down) != 2:
            raise ControlNetFormatError(
                f"{source}: module '{name}' works on a convolution, which neither kohya's ComfyUI node nor "
                "Advanced-ControlNet applies; ControlNet Suite loads LLLite files whose modules sit on attention"
            )
        if site.attention == "attn2" and site.projection != "q":
            raise ControlNetFormatError(
                f"{source}: module '{name}' sits on cross-attention's {site.projection}, which reads the text "
                "tokens: a condition image cannot line up with them. It is not a ControlNet-LLLite file ControlNet Suite knows"
            )
        if f"{name}.conditioning1.4.weight" in shapes:
            depth = 3
        else:
            depth = 2 if shapes[f"{name}.conditioning1.2.weight"][-1] == LATER_STAGE_STRIDES[2][0] else 1
        if depth != site.level + 1:
            raise ControlNetFormatError(
                f"{source}: module '{name}' makes condition tokens for a block {2 ** (depth - 1)}× smaller than the "
                f"latent, but it sits at {site.describe()}, which is {2 ** site.level}× smaller: this is not an "
                "SDXL ControlNet-LLLite"
            )
        modules.append((name, ModuleSpec(down[1], shapes[f"{name}.conditioning1.0.weight"][0] * 2, down[0], depth)))
    return LLLiteConfig(tuple(modules))


def load_lllite(
    weights: WeightFile,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    ops: Any = TORCH_OPS,
) -> ControlLLLite:
    """Load a ControlNet-LLLite file (kohya's safetensors: one set of weights per module)."""
    source = f"'{os.path.basename(weights.path)}'"
    cfg = lllite_config(weights.shapes, source)
    with torch.device("meta"):
        model = ControlLLLite(cfg, ops=ops, dtype=dtype)
    leftover = sorted(set(weights.shapes) - set(model.state_dict()))
    if leftover:
        raise ControlNetFormatError(
            f"{source} has weights a ControlNet-LLLite module does not have ({', '.join(leftover[:3])}"
            f"{', ...' if len(leftover) > 3 else ''}): it is a variant ControlNet Suite does not know"
        )

    def read(key: str) -> torch.Tensor:
        if key not in weights.shapes:
            raise KeyError(key)
        return weights[key]

    return assign_weights(model, read, dtype, device, source, "ControlNet-LLLite")
