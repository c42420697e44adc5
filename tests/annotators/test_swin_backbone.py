"""The Swin backbone against transformers' SwinBackbone with identical random weights, and its key
layout against OneFormer's detectron2 D2SwinTransformer (annotator/oneformer/oneformer/modeling/
backbone/swin.py in lllyasviel/ControlNet-v1-1-nightly).

The oracle is built from tiny transformers.SwinConfig's (eager attention: the original's
softmax(q k^T * scale + bias + mask) v written out), never from_pretrained, with
HF_HUB_OFFLINE=1. Our network gets random weights in the original layout; the oracle gets the
same tensors under transformers' names, by `to_transformers`, whose mapping comes from two places:
  1. transformers' OneFormer conversion script src/transformers/models/oneformer/
     convert_to_hf_oneformer.py (read from huggingface/transformers at commit 08196ab2; the
     installed wheel does not ship it), `replace_swin_backbone`: norm1 / norm2 -> layernorm_before
     / layernorm_after, attn.qkv split in thirds -> query, key, value, attn.proj ->
     attention.output.dense, mlp.fc1 / fc2 -> intermediate.dense / output.dense, downsample kept,
     norm{i} -> hidden_states_norms.stage{i + 1}, patch_embed -> embeddings(.patch_embeddings);
  2. the renames transformers 5 applies on loading (transformers/conversion_mapping.py, "swin" and
     "SwinBackbone"): attention.self.{query,key,value} -> attention.{q,k,v}_proj,
     attention.self.relative_position_bias_table -> attention.relative_position_bias.
     relative_position_bias_table, attention.output.dense -> attention.o_proj, intermediate.dense
     / output.dense -> mlp.fc1 / fc2, and the backbone's own embeddings / encoder under `swin.`.
The original's persistent relative_position_index has no counterpart to load: transformers
rebuilds it as a non-persistent buffer, which `test_relative_position_index` compares with ours.
transformers' SwinModel also has a final `swin.layernorm` that its SwinBackbone never applies
(the per-stage hidden_states_norms replace it) and D2SwinTransformer does not have; the oracle
keeps its own.

transformers' SwinLayer shrinks the window (and drops the shift) on maps no larger than the
window, which the original does not (it pads); its SwinBackbone however runs the encoder with
always_partition=True, which skips that. The main cases keep every stage map larger than the
window anyway, so they do not depend on it; `test_maps_smaller_than_window` covers late stages
no larger than the window, which Swin-L meets from 384 x 384 inputs down (12 x 12 tokens at
stride 32, window 12).

Random weights are fan-in scaled (He); LayerNorm weights are 1 +- NOISE and biases, which start
at zero, +- NOISE; the relative position tables (zeros at construction) are N(0, 1) so that the
bias, its indexing, the shift and its mask all show in the output.
"""

from __future__ import annotations

import math
import os
import re

os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: the oracle must never reach the hub

import pytest  # noqa: E402
import torch  # noqa: E402

transformers = pytest.importorskip("transformers")

from annotators.swin_backbone import SwinBackbone, SwinConfig, swin_config_from_state_dict  # noqa: E402
from annotators.weights import BadWeightsError  # noqa: E402

SEED = 0
BATCH = 2
NOISE = 0.1          # norm weights 1 +- this, biases +- this
TABLE_SCALE = 1.0    # relative position bias tables: N(0, 1)
# Outputs equal within this, relative to each map's largest magnitude. Measured here: at most
# 4e-6 (float32 rounding of two attention implementations). No shift, no shift mask, a transposed
# bias index, padding on the left / top or another 2x2 merge order are each off by 0.5 to 1.8.
TOLERANCE = 2e-5
STAGES = ["stage1", "stage2", "stage3", "stage4"]
ORACLE_IMAGE_SIZE = 64  # transformers' position-embedding grid; unused without absolute embeddings
IN_CHANNELS = 3
MERGE_FACTOR = 2

# Window 3 (shift 1), an odd number of blocks in stage 3 (shifted, plain, shifted... ends plain).
TINY = SwinConfig(embed_dim=12, depths=(2, 2, 3, 2), num_heads=(2, 3, 4, 6), window_size=3)
# Even window (shift 2), patch 2, MLP ratio 2, a single head.
TINY_EVEN = SwinConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4, patch_size=2,
                       mlp_ratio=2)
# The published OneFormer Swin-L (configs/*/oneformer_swin_large_*.yaml).
SWIN_L = SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)

CASES = [
    # 101 x 110 pads to whole patches; token maps 26x28, 13x14, 7x7, 4x4: none divides by the
    # window, 13 and 7 are odd (patch merging pads).
    pytest.param(TINY, 101, 110, id="tiny-padded"),
    # Whole patches; 32x27, 16x14, 8x7, 4x4: widths 27 whole windows, heights not.
    pytest.param(TINY, 128, 108, id="tiny-whole-patches"),
    # 34x38, 17x19, 9x10, 5x5 with window 4.
    pytest.param(TINY_EVEN, 67, 75, id="even-window-padded"),
]


# --- weights ---------------------------------------------------------------------------------------

def random_weights(config: SwinConfig, seed: int) -> dict[str, torch.Tensor]:
    """Our state dict with random values (the relative position index kept as built)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, value in SwinBackbone(config).state_dict().items():
        if key.endswith("relative_position_index"):
            weights[key] = value
            continue
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("relative_position_bias_table"):
            weights[key] = TABLE_SCALE * noise
        elif value.ndim >= 2:
            weights[key] = noise * math.sqrt(2.0 / value[0].numel())
        elif key.endswith("weight"):
            weights[key] = 1.0 + NOISE * noise
        else:
            weights[key] = NOISE * noise
    return weights


# Applied in order to each original key (module docstring, 1 then 2); mlp.fc1 / fc2 and
# downsample.{reduction,norm} keep their names below `swin.encoder.`.
RENAMES = [
    (r"^patch_embed\.proj\.", "swin.embeddings.patch_embeddings.projection."),
    (r"^patch_embed\.norm\.", "swin.embeddings.norm."),
    (r"^norm(\d+)\.", lambda found: f"hidden_states_norms.stage{int(found[1]) + 1}."),
    (r"^layers\.", "swin.encoder.layers."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.attn\.proj\.", ".attention.o_proj."),
    (r"\.attn\.relative_position_bias_table$", ".attention.relative_position_bias.relative_position_bias_table"),
]


def to_transformers(original: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original-layout tensors under transformers 5's SwinBackbone names (module docstring)."""
    converted = {}
    for key, value in original.items():
        if key.endswith(".attn.relative_position_index"):
            continue  # rebuilt by transformers, compared in test_relative_position_index
        if ".attn.qkv." in key:  # replace_swin_backbone: query, key, value thirds
            block, _, part = key.rpartition(".attn.qkv.")
            for name, third in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"swin.encoder.{block}.attention.{name}.{part}"] = third
            continue
        for pattern, replacement in RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


def transformers_config(config: SwinConfig) -> transformers.SwinConfig:
    return transformers.SwinConfig(
        embed_dim=config.embed_dim, depths=list(config.depths), num_heads=list(config.num_heads),
        window_size=config.window_size, patch_size=config.patch_size, mlp_ratio=float(config.mlp_ratio),
        image_size=ORACLE_IMAGE_SIZE, out_features=STAGES, attn_implementation="eager",
    )


def models(config: SwinConfig) -> tuple[SwinBackbone, torch.nn.Module]:
    """Ours and transformers' SwinBackbone with the same random weights, in eval mode."""
    weights = random_weights(config, SEED)
    ours = SwinBackbone(config).eval()
    ours.load_state_dict(weights, strict=True)
    oracle = transformers.SwinBackbone(transformers_config(config)).eval()
    converted = to_transformers(weights)
    # The final SwinModel LayerNorm, which the backbone never applies, is the only name left over.
    assert set(oracle.state_dict()) - set(converted) == {"swin.layernorm.weight", "swin.layernorm.bias"}
    converted.update({key: value for key, value in oracle.state_dict().items() if key.startswith("swin.layernorm.")})
    oracle.load_state_dict(converted, strict=True)
    return ours, oracle


def assert_same_maps(config: SwinConfig, height: int, width: int) -> None:
    ours, oracle = models(config)
    image = torch.randn(BATCH, IN_CHANNELS, height, width, generator=torch.Generator().manual_seed(SEED + 1))
    with torch.no_grad():
        got = ours(image)
        expected = oracle(image).feature_maps
    assert len(got) == len(expected) == len(config.depths)
    for stage, (mine, theirs) in enumerate(zip(got, expected)):
        side = config.patch_size * MERGE_FACTOR ** stage
        assert mine.shape == theirs.shape == (BATCH, config.embed_dim * MERGE_FACTOR ** stage,
                                              math.ceil(height / side), math.ceil(width / side))
        assert mine.is_contiguous()
        scale = theirs.abs().max().item()
        assert scale > 0.1
        error = (mine - theirs).abs().max().item() / scale
        assert error < TOLERANCE, f"stage {stage}: {error:.2e} of the largest magnitude"


# --- the network -----------------------------------------------------------------------------------

@pytest.mark.parametrize("config, height, width", CASES)
def test_maps_match_transformers(config: SwinConfig, height: int, width: int) -> None:
    """The four normalised stage maps equal transformers' feature maps (shift, masks, padding)."""
    assert_same_maps(config, height, width)


def test_maps_smaller_than_window() -> None:
    """40 x 57 gives token maps 10x15, 5x8, 3x4, 2x2: stages 3 and 4 are no larger than the
    window of 3, which the original pads to whole windows (its shift mask then hides the
    padding's wrap-around)."""
    assert_same_maps(TINY, 40, 57)


@pytest.mark.parametrize("window", [3, 4, 12])
def test_relative_position_index(window: int) -> None:
    """Our persistent index equals the one transformers rebuilds, and the paper's rule: query
    (y, x) and key (y', x') read table row (y - y' + w - 1) * (2w - 1) + (x - x' + w - 1)."""
    config = SwinConfig(embed_dim=8, depths=(2, 2, 2, 2), num_heads=(1, 1, 1, 1), window_size=window)
    ours = SwinBackbone(config).layers[0].blocks[0].attn.relative_position_index
    oracle = transformers.SwinBackbone(transformers_config(config))
    theirs = oracle.swin.encoder.layers[0].blocks[0].attention.relative_position_bias.relative_position_index
    tokens = window * window
    assert ours.shape == (tokens, tokens) and ours.dtype == torch.long
    assert torch.equal(ours.flatten(), theirs)
    for query in range(tokens):
        for key in range(tokens):
            dy = query // window - key // window
            dx = query % window - key % window
            assert ours[query, key] == (dy + window - 1) * (2 * window - 1) + dx + window - 1


# --- the published layout --------------------------------------------------------------------------

def original_shapes(config: SwinConfig) -> dict[str, tuple[int, ...]]:
    """D2SwinTransformer's state dict (ape=False, patch_norm=True, qkv_bias=True, out_indices
    0..3), written out from its module tree: PatchEmbed(proj conv, norm), BasicLayer(blocks of
    SwinTransformerBlock(norm1, attn=WindowAttention(relative_position_bias_table,
    relative_position_index buffer, qkv, proj), norm2, mlp=Mlp(fc1, fc2)), downsample=
    PatchMerging(reduction without bias, norm over 4C) but for the last), norm{i} per output."""
    embed, patch, window = config.embed_dim, config.patch_size, config.window_size
    shapes = {
        "patch_embed.proj.weight": (embed, IN_CHANNELS, patch, patch),
        "patch_embed.proj.bias": (embed,),
        "patch_embed.norm.weight": (embed,),
        "patch_embed.norm.bias": (embed,),
    }
    stages = len(config.depths)
    for i, (depth, heads) in enumerate(zip(config.depths, config.num_heads)):
        dim = embed * 2 ** i
        hidden = dim * config.mlp_ratio
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}"
            shapes.update({
                f"{block}.norm1.weight": (dim,), f"{block}.norm1.bias": (dim,),
                f"{block}.attn.relative_position_bias_table": ((2 * window - 1) ** 2, heads),
                f"{block}.attn.relative_position_index": (window * window, window * window),
                f"{block}.attn.qkv.weight": (3 * dim, dim), f"{block}.attn.qkv.bias": (3 * dim,),
                f"{block}.attn.proj.weight": (dim, dim), f"{block}.attn.proj.bias": (dim,),
                f"{block}.norm2.weight": (dim,), f"{block}.norm2.bias": (dim,),
                f"{block}.mlp.fc1.weight": (hidden, dim), f"{block}.mlp.fc1.bias": (hidden,),
                f"{block}.mlp.fc2.weight": (dim, hidden), f"{block}.mlp.fc2.bias": (dim,),
            })
        if i < stages - 1:
            shapes[f"layers.{i}.downsample.reduction.weight"] = (2 * dim, 4 * dim)
            shapes[f"layers.{i}.downsample.norm.weight"] = (4 * dim,)
            shapes[f"layers.{i}.downsample.norm.bias"] = (4 * dim,)
        shapes[f"norm{i}.weight"] = (dim,)
        shapes[f"norm{i}.bias"] = (dim,)
    return shapes


def test_swin_large_layout() -> None:
    """Swin-L's keys and shapes are D2SwinTransformer's, and its parameters transformers' (but
    for the final swin.layernorm, which only transformers' SwinModel has)."""
    with torch.device("meta"):
        ours = SwinBackbone(SWIN_L)
        oracle = transformers.SwinBackbone(transformers_config(SWIN_L))
    state = ours.state_dict()
    assert {key: tuple(value.shape) for key, value in state.items()} == original_shapes(SWIN_L)
    assert [name for name, _ in ours.named_buffers()] == [key for key in state if key.endswith("relative_position_index")]

    final_norm = oracle.swin.layernorm
    theirs = sum(p.numel() for p in oracle.parameters()) - sum(p.numel() for p in final_norm.parameters())
    assert sum(p.numel() for p in ours.parameters()) == theirs
    expected = {key: value.shape for key, value in oracle.state_dict().items() if not key.startswith("swin.layernorm.")}
    assert {key: value.shape for key, value in to_transformers(state).items()} == expected


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_config_from_tiny_state_dict(prefix: str) -> None:
    for config in (TINY, TINY_EVEN):
        weights = {prefix + key: value for key, value in SwinBackbone(config).state_dict().items()}
        weights["sem_seg_head.predictor.layers.0.blocks.0.norm1.weight"] = torch.zeros(1)  # not the backbone
        assert swin_config_from_state_dict(weights, prefix) == config


def test_config_from_swin_large_state_dict() -> None:
    with torch.device("meta"):
        state = SwinBackbone(SWIN_L).state_dict()
    assert swin_config_from_state_dict(state) == SWIN_L
    assert swin_config_from_state_dict({f"backbone.{key}": value for key, value in state.items()}, "backbone.") == SWIN_L


def test_config_without_backbone() -> None:
    state = SwinBackbone(TINY).state_dict()
    with pytest.raises(BadWeightsError, match="patch_embed.proj.weight"):
        swin_config_from_state_dict(state, "backbone.")
