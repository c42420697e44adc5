"""Checkpoint layouts: which one a file is, and the one table that maps it to ours.

Our model uses the original (`cldm.py`) module names, so the original layouts load as they are;
diffusers names go through `diffusers_to_original_key`. Detection follows marker keys in the
order ComfyUI checks them (`comfy/controlnet.py: load_controlnet_state_dict`).
"""

from __future__ import annotations

import re
from typing import Iterable

from .errors import ControlNetFormatError

# Layout names (public: shown to users and in tests).
ORIGINAL = "original"  # lllyasviel .pth: full ControlLDM or ControlNet with `control_model.` prefix
ORIGINAL_BARE = "original-bare"  # same keys without prefix (fp16 re-uploads, extracted files)
DIFFERENCE = "difference"  # original keys holding ControlNet − base U-Net, plus a `difference` marker
DIFFUSERS = "diffusers"  # diffusers ControlNetModel (folder with config.json, or a single file)
DIFFUSERS_UNION = "diffusers-union"  # xinsir ControlNet Union / ProMax (diffusers names)
CONTROL_LORA = "control-lora"  # Stability Control-LoRA: low-rank deltas on the base U-Net
T2I_ADAPTER = "t2i-adapter"  # TencentARC T2I-Adapter (full, light, XL, diffusers)
LLLITE = "controlnet-lllite"  # kohya's ControlNet-LLLite for SDXL: modules on the attention projections
LLLITE_PREFIX = "lllite_unet_"

ORIGINAL_PREFIX = "control_model."
# Modules of the trainable copy that a base U-Net also has (same names in both).
UNET_ENCODER_MODULES = ("time_embed.", "label_emb.", "input_blocks.", "middle_block.")
CONTROLNET_MODULES = ("time_embed.", "label_emb.", "input_blocks.", "input_hint_block.", "zero_convs.", "middle_block.", "middle_block_out.")

# Marker keys of ControlNets for other model families, to refuse them by name.
OTHER_FAMILY_MARKERS = (
    ("after_proj_list.18.bias", "HunyuanDiT"),
    ("controlnet_blocks.0.linear.weight", "Flux (Mistoline)"),
    ("double_blocks.0.img_attn.norm.key_norm.scale", "Flux"),
    ("controlnet_x_embedder.weight", "Flux"),
    ("transformer_blocks.0.img_mlp.net.0.proj.weight", "Qwen-Image"),
    ("pos_embed_input.proj.weight", "SD3 / SD3.5"),
    ("controlnet_blocks.0.weight", "a DiT model (Flux / SD3)"),
)
# Key prefixes of other kinds of model that users keep in models/controlnet, refused by what
# they are and where they load (sd_control_collection ships both beside its ControlNets).
OTHER_KIND_PREFIXES = (
    (
        "lllite_",  # what is left once SDXL's `lllite_unet_` files are taken: Anima's `lllite_dit_blocks_`
        "this is a ControlNet-LLLite for a DiT model such as Anima, not for a Stable Diffusion U-Net; ControlNet "
        "Suite loads SDXL LLLite files only. Load it with Advanced-ControlNet's 'Load Anima LLLite Model'",
    ),
    (
        "ip_adapter.",
        "this is an IP-Adapter (an image prompt, not a ControlNet): put it in models/ipadapter and load it with an "
        "IP-Adapter node pack such as ComfyUI_IPAdapter_plus",
    ),
)


def detect_layout(keys: Iterable[str]) -> str:
    """Name the layout of a state dict from its keys alone."""
    keys = set(keys)
    for marker, family in OTHER_FAMILY_MARKERS:
        if marker in keys:
            raise ControlNetFormatError(
                f"this is a ControlNet for {family}; ControlNet Suite handles SD1.x, SD2.x and SDXL ControlNets. "
                "Load it with ComfyUI's built-in 'Load ControlNet Model' node"
            )
    if any(key.startswith(LLLITE_PREFIX) for key in keys):
        return LLLITE
    for prefix, message in OTHER_KIND_PREFIXES:
        if any(key.startswith(prefix) for key in keys):
            raise ControlNetFormatError(message)
    if "lora_controlnet" in keys:
        return CONTROL_LORA
    if "controlnet_cond_embedding.conv_in.weight" in keys:
        return DIFFUSERS_UNION if "control_add_embedding.linear_1.bias" in keys else DIFFUSERS
    if ORIGINAL_PREFIX + "zero_convs.0.0.weight" in keys:
        return DIFFERENCE if "difference" in keys else ORIGINAL
    if "zero_convs.0.0.weight" in keys:
        return DIFFERENCE if "difference" in keys else ORIGINAL_BARE
    if t2i_adapter_variant(keys) is not None:
        return T2I_ADAPTER
    if any(k.startswith("model.diffusion_model.") or k.startswith("down_blocks.") for k in keys):
        raise ControlNetFormatError(
            "this is a Stable Diffusion checkpoint or U-Net, not a ControlNet: put it in models/checkpoints and load "
            "it with a checkpoint loader"
        )
    sample = ", ".join(sorted(keys)[:3])
    raise ControlNetFormatError(
        f"unknown layout: none of the ControlNet, Control-LoRA or T2I-Adapter marker keys is present (first keys: {sample})"
    )


def t2i_adapter_variant(keys: set[str]) -> str | None:
    """'diffusers', 'light', 'full' or 'full-xl'... of a T2I-Adapter; None if it is not one."""
    if "adapter.body.0.resnets.0.block1.weight" in keys:
        return "diffusers"
    if "adapter.conv_in.weight" in keys or "adapter.body.0.in_conv.weight" in keys:
        return "wrapped"  # the original layout saved inside an {"adapter": ...} dict
    if "body.0.in_conv.weight" in keys:
        return "light"
    if "conv_in.weight" in keys and "body.0.block2.weight" in keys:
        return "full"
    return None


def original_controlnet_keys(keys: Iterable[str], layout: str) -> dict[str, str]:
    """{our key: file key} for the original layouts; drops ControlLDM extras (U-Net, VAE, CLIP)."""
    out = {}
    for key in keys:
        bare = key[len(ORIGINAL_PREFIX):] if key.startswith(ORIGINAL_PREFIX) else None
        if bare is None and layout == ORIGINAL_BARE:
            bare = key
        if bare is not None and bare.startswith(CONTROLNET_MODULES):
            out[bare] = key
    return out


# --- diffusers <-> original: the one mapping table -------------------------------------------

# ResnetBlock2D sub-modules -> ResBlock sub-modules (attention sub-names are identical).
RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
TOP_LEVEL_NAMES = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "controlnet_cond_embedding.conv_in": "input_hint_block.0",
    "controlnet_mid_block": "middle_block_out.0",
}
_DOWN = re.compile(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)")
_MID = re.compile(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)")
_HINT_BLOCK = re.compile(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)")
_ZERO_CONV = re.compile(r"controlnet_down_blocks\.(\d+)\.(.+)")


def _resnet_sub(rest: str) -> str:
    name, _, param = rest.partition(".")
    if name not in RESNET_NAMES:
        raise ControlNetFormatError(f"unexpected diffusers ResNet weight '{rest}'")
    return f"{RESNET_NAMES[name]}.{param}"


class DiffusersKeyMap:
    """Maps diffusers ControlNetModel / UNet2DConditionModel encoder keys to original keys.

    Input-block numbering depends on how many ResNets each down block has, so the map is built
    from the key set: block index = 1 + every ResNet and Downsample of the levels before.
    """

    def __init__(self, keys: Iterable[str]):
        keys = list(keys)
        resnets: dict[int, set[int]] = {}
        has_down: set[int] = set()
        hint_blocks: set[int] = set()
        self.mid_has_attention = any(k.startswith("mid_block.attentions.0.") for k in keys)
        for k in keys:
            if m := _DOWN.fullmatch(k):
                level = int(m.group(1))
                resnets.setdefault(level, set())
                if m.group(2) == "resnets":
                    resnets[level].add(int(m.group(3)))
                elif m.group(2) == "downsamplers":
                    has_down.add(level)
            elif m := _HINT_BLOCK.fullmatch(k):
                hint_blocks.add(int(m.group(1)))
        self.level_start: dict[int, int] = {}
        index = 1
        for level in sorted(resnets):
            self.level_start[level] = index
            index += len(resnets[level]) + (level in has_down)
        self.level_resnets = {level: len(r) for level, r in resnets.items()}
        self.hint_conv_out = 2 * len(hint_blocks) + 2

    def __call__(self, key: str) -> str | None:
        """The original key for a diffusers key, or None for keys with no counterpart."""
        if key.startswith("controlnet_cond_embedding.conv_out."):
            return f"input_hint_block.{self.hint_conv_out}.{key.rsplit('.', 1)[1]}"
        for prefix, target in TOP_LEVEL_NAMES.items():
            if key.startswith(prefix + "."):
                return target + key[len(prefix):]
        if m := _HINT_BLOCK.fullmatch(key):
            return f"input_hint_block.{2 * int(m.group(1)) + 2}.{m.group(2)}"
        if m := _ZERO_CONV.fullmatch(key):
            return f"zero_convs.{m.group(1)}.0.{m.group(2)}"
        if m := _DOWN.fullmatch(key):
            level, kind, i, rest = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            start = self.level_start[level]
            if kind == "resnets":
                return f"input_blocks.{start + i}.0.{_resnet_sub(rest)}"
            if kind == "attentions":
                return f"input_blocks.{start + i}.1.{rest}"
            return f"input_blocks.{start + self.level_resnets[level]}.0.op.{rest.removeprefix('conv.')}"
        if m := _MID.fullmatch(key):
            kind, i, rest = m.group(1), int(m.group(2)), m.group(3)
            if kind == "attentions":
                return f"middle_block.1.{rest}"
            position = i * (2 if self.mid_has_attention else 1)
            return f"middle_block.{position}.{_resnet_sub(rest)}"
        return None  # time_proj has no weights; decoder keys (up_blocks, conv_out...) are not ours


def diffusers_to_original_keys(keys: Iterable[str]) -> dict[str, str]:
    """{original key: diffusers key} for every diffusers key that belongs to a ControlNet."""
    keys = list(keys)
    mapping = DiffusersKeyMap(keys)
    out = {}
    for key in keys:
        target = mapping(key)
        if target is not None:
            out[target] = key
    return out
