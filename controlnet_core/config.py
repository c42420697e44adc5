"""The shape of a ControlNet, read off its weights.

A ControlNet is the encoder half of a Stable Diffusion U-Net plus a hint encoder and zero
convolutions. Everything that decides its shape is visible in the original-layout keys
(`input_blocks.N...`, `middle_block.N...`), except the attention head split, which the
weights cannot show: SD1.x uses 8 heads everywhere, SD2.x and SDXL use 64-channel heads
(`cldm_v15.yaml` / `cldm_v21.yaml`; diffusers' config.json says it explicitly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .errors import ControlNetFormatError

SD1 = "SD1.x"
SD2 = "SD2.x"
SDXL = "SDXL"

# Context width of each family's text encoder (CLIP ViT-L, OpenCLIP ViT-H, CLIP-L + bigG).
STANDARD_CONTEXT_DIM = {SD1: 768, SD2: 1024, SDXL: 2048}
SD1_NUM_HEADS = 8
SD2_SDXL_HEAD_CHANNELS = 64
# The hint encoder's channel plan in every published checkpoint (cldm.py input_hint_block).
HINT_ENCODER_CHANNELS = (16, 32, 96, 256)


@dataclass(frozen=True)
class BlockSpec:
    """One U-Net encoder block: a ResBlock (optionally followed by a SpatialTransformer) or a
    stride-2 Downsample."""

    kind: str  # "res" or "down"
    out_channels: int
    transformer_depth: int = 0  # transformer blocks after the ResBlock; 0 = no SpatialTransformer


@dataclass(frozen=True)
class ControlNetConfig:
    in_channels: int
    model_channels: int
    hint_channels: int
    input_blocks: tuple[BlockSpec, ...]  # input_blocks[1:]; block 0 is always conv_in
    middle_transformer_depth: int | None  # None: middle is ResBlock, ResBlock (no attention)
    context_dim: int | None
    use_linear_projection: bool
    adm_in_channels: int | None = None
    num_heads: int | None = None  # fixed head count (SD1.x) ...
    head_channels: int | None = None  # ... or fixed head width (SD2.x, SDXL)
    hint_encoder_channels: tuple[int, ...] = HINT_ENCODER_CHANNELS
    time_embed_dim: int | None = None
    global_average_pooling: bool = False  # shuffle models: outputs are spatial means
    bgr_hint: bool = False  # diffusers `controlnet_conditioning_channel_order == "bgr"`
    extra: Mapping[str, object] = field(default_factory=dict, compare=False)

    @property
    def family(self) -> str:
        """SD1.x, SD2.x or SDXL, from structure (works for narrow test models too)."""
        levels = 1 + sum(1 for b in self.input_blocks if b.kind == "down")
        if self.adm_in_channels is not None and levels == 3:
            return SDXL
        if self.use_linear_projection:
            return SD2
        return SD1

    @property
    def num_outputs(self) -> int:
        """Residuals returned: one per input block (conv_in included) plus the middle block."""
        return len(self.input_blocks) + 2

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, channels per head) of a SpatialTransformer with `channels` channels."""
        if self.head_channels is not None:
            return channels // self.head_channels, self.head_channels
        heads = self.num_heads or SD1_NUM_HEADS
        return heads, channels // heads

    def output_resolution_divisors(self) -> list[int]:
        """For each residual, how many times smaller than the latent it is (1, 2, 4, 8)."""
        divisors, d = [1], 1
        for block in self.input_blocks:
            if block.kind == "down":
                d *= 2
            divisors.append(d)
        divisors.append(d)  # middle block
        return divisors


def default_heads(cfg: ControlNetConfig) -> dict:
    """The head split the weights cannot show. Standard SD1.x (320 channels, 768 context) uses
    8 heads; every other shape uses 64-channel heads, as SD2.x/SDXL do and as ComfyUI assumes
    for shapes it does not recognise, so one file gives the same model in both."""
    if cfg.family == SD1 and cfg.model_channels == 320 and cfg.context_dim in (STANDARD_CONTEXT_DIM[SD1], None):
        return {"num_heads": SD1_NUM_HEADS}
    return {"head_channels": SD2_SDXL_HEAD_CHANNELS}


def sd_config(
    model_channels: int = 320,
    channel_mult: Sequence[int] = (1, 2, 4, 4),
    num_res_blocks: int = 2,
    transformer_depth: Sequence[int] = (1, 1, 1, 0),
    middle_transformer_depth: int | None = 1,
    context_dim: int | None = 768,
    use_linear_projection: bool = False,
    adm_in_channels: int | None = None,
    in_channels: int = 4,
    hint_channels: int = 3,
    **heads,
) -> ControlNetConfig:
    """A config in the U-Net yaml's terms (defaults: SD1.5)."""
    blocks: list[BlockSpec] = []
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            blocks.append(BlockSpec("res", model_channels * mult, transformer_depth[level]))
        if level != len(channel_mult) - 1:
            blocks.append(BlockSpec("down", model_channels * mult))
    cfg = ControlNetConfig(
        in_channels=in_channels,
        model_channels=model_channels,
        hint_channels=hint_channels,
        input_blocks=tuple(blocks),
        middle_transformer_depth=middle_transformer_depth,
        context_dim=context_dim,
        use_linear_projection=use_linear_projection,
        adm_in_channels=adm_in_channels,
    )
    return _with_heads(cfg, heads or None)


def _with_heads(cfg: ControlNetConfig, heads: dict | None) -> ControlNetConfig:
    from dataclasses import replace

    return replace(cfg, **(heads or default_heads(cfg)))


_TRANSFORMER_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.")


def _transformer_depth(keys: set[str], prefix: str) -> int:
    depths = {int(m.group(1)) for k in keys if k.startswith(prefix) for m in [_TRANSFORMER_BLOCK.search(k)] if m}
    return max(depths) + 1 if depths else 0


def config_from_state_dict(
    shapes: Mapping[str, Sequence[int]], heads: dict | None = None, source: str = "the file"
) -> ControlNetConfig:
    """Derive the architecture from original-layout keys (no prefix) and their shapes.

    `shapes` maps key -> tensor shape; works for ControlNets and for bare U-Net encoders
    (the trainable copy is built from a U-Net this way, hint_channels then defaults to 3).
    """
    keys = set(shapes)

    def need(key: str) -> Sequence[int]:
        if key not in shapes:
            raise ControlNetFormatError(f"{source} has no '{key}': it is not a complete ControlNet")
        return shapes[key]

    conv_in = need("input_blocks.0.0.weight")
    model_channels, in_channels = int(conv_in[0]), int(conv_in[1])
    hint_channels = int(shapes["input_hint_block.0.weight"][1]) if "input_hint_block.0.weight" in keys else 3
    # Hint convs sit at Sequential indices 0, 2, 4, ...; every second one (0, 4, 8, ...) opens a
    # new width and the last one is the zero conv to model_channels.
    hint_convs = sorted(int(k.split(".")[1]) for k in keys if re.fullmatch(r"input_hint_block\.\d+\.weight", k))
    hint_plan = tuple(int(shapes[f"input_hint_block.{i}.weight"][0]) for i in hint_convs[:-1:2])

    blocks: list[BlockSpec] = []
    context_dim, linear = None, None
    index = 1
    while f"input_blocks.{index}.0.op.weight" in keys or f"input_blocks.{index}.0.in_layers.2.weight" in keys:
        p = f"input_blocks.{index}."
        if p + "0.op.weight" in keys:
            blocks.append(BlockSpec("down", int(shapes[p + "0.op.weight"][0])))
        else:
            out = int(shapes[p + "0.in_layers.2.weight"][0])
            if int(need(p + "0.emb_layers.1.weight")[0]) != out:
                raise ControlNetFormatError(
                    f"{source}: ResBlocks with scale-shift norm are not a Stable Diffusion ControlNet"
                )
            depth = _transformer_depth(keys, p + "1.")
            if depth:
                context_dim = int(need(p + "1.transformer_blocks.0.attn2.to_k.weight")[1])
                linear = len(need(p + "1.proj_in.weight")) == 2
            blocks.append(BlockSpec("res", out, depth))
        index += 1
    if not blocks:
        raise ControlNetFormatError(f"{source} has no encoder blocks after input_blocks.0")

    if "middle_block.2.in_layers.2.weight" in keys:
        middle_depth: int | None = _transformer_depth(keys, "middle_block.1.")
        if middle_depth and context_dim is None:
            context_dim = int(shapes["middle_block.1.transformer_blocks.0.attn2.to_k.weight"][1])
            linear = len(shapes["middle_block.1.proj_in.weight"]) == 2
    elif "middle_block.1.in_layers.2.weight" in keys:
        middle_depth = None
    else:
        raise ControlNetFormatError(f"{source} has no middle block (middle_block.*)")

    adm = shapes.get("label_emb.0.0.weight")
    cfg = ControlNetConfig(
        in_channels=in_channels,
        model_channels=model_channels,
        hint_channels=hint_channels,
        input_blocks=tuple(blocks),
        middle_transformer_depth=middle_depth,
        context_dim=context_dim,
        use_linear_projection=bool(linear),
        adm_in_channels=int(adm[1]) if adm is not None else None,
        hint_encoder_channels=hint_plan or HINT_ENCODER_CHANNELS,
        time_embed_dim=int(need("time_embed.0.weight")[0]),
    )
    return _with_heads(cfg, heads)
