"""ControlNet-LLLite files: loaded strictly under the published key names, each module equal to
kohya's formula (tests/core/lllite_reference.py), token grids for any latent size, and every file
we cannot run refused with its exact message."""

import math
import re

import pytest
import torch
from safetensors.torch import save_file

from controlnet_core import ControlNetFormatError, detect_layout, load_controlnet
from controlnet_core.lllite import hint_size, parse_site, token_grid
from tests.core import lllite_reference as kohya

RELATIVE_TOLERANCE = 1e-5
IN_DIM = 64
# One module per depth, at a block of that depth (kohya: input blocks 0-2, 3-5, 6-8).
SITES = {
    1: "lllite_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q",
    2: "lllite_unet_input_blocks_4_1_transformer_blocks_1_attn1_to_v",
    3: "lllite_unet_middle_block_1_transformer_blocks_0_attn2_to_q",
}


def saved(tmp_path, weights: dict, name: str = "kohya_controllllite_xl_tiny.safetensors") -> str:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in weights.items()}, path)
    return str(path)


def all_depths(seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for depth, name in SITES.items():
        weights.update(kohya.module_weights(name, IN_DIM, depth, gen))
    return weights


def test_each_module_computes_kohyas_formula(tmp_path):
    weights = all_depths()
    loaded = load_controlnet(saved(tmp_path, weights))
    assert (loaded.layout, loaded.family) == ("controlnet-lllite", "SDXL")
    model = loaded.model
    assert set(model.state_dict()) == set(weights)  # strict: the file's keys, nothing more
    gen = torch.Generator().manual_seed(1)
    hint = torch.rand(2, 3, 128, 96, generator=gen) * 2 - 1
    with torch.no_grad():
        for depth, name in SITES.items():
            tokens = model.module(name).embed(hint)
            expected_tokens = kohya.cond_emb(weights, name, hint)
            assert tokens.shape == (2, (128 // 8 // 2 ** (depth - 1)) * (96 // 8 // 2 ** (depth - 1)), 32)
            torch.testing.assert_close(tokens, expected_tokens, rtol=RELATIVE_TOLERANCE, atol=1e-6)
            x = torch.randn(2, tokens.shape[1], IN_DIM, generator=gen)
            got = model.module(name)(x, tokens)
            expected = kohya.correction(weights, name, x, expected_tokens)
            torch.testing.assert_close(got, expected, rtol=RELATIVE_TOLERANCE, atol=1e-6)


@pytest.mark.parametrize("block, count", [("input_blocks", 9), ("middle_block", 1), ("output_blocks", 9)])
def test_site_levels_follow_kohyas_depth_rule(block, count):
    for index in range(count):
        place = f"{block}_{index}" if block != "middle_block" else block
        site = parse_site(f"lllite_unet_{place}_1_transformer_blocks_3_attn1_to_k")
        assert (site.transformer, site.attention, site.projection) == (3, "attn1", "k")
        assert site.level + 1 == kohya.kohya_depth(block, index)


@pytest.mark.parametrize("latent", [(8, 8), (9, 11), (13, 6), (1, 3)])
def test_each_level_gets_its_blocks_token_grid_at_any_latent_size(latent):
    """A U-Net block at level l is ceil(side / 2^l) wide (stride-2 downsamples with padding 1
    round up); the hint resized to hint_size gives one token per position there."""
    gen = torch.Generator().manual_seed(2)
    for depth, name in SITES.items():
        level = depth - 1
        weights = kohya.module_weights(name, IN_DIM, depth, gen)
        side = [latent[0], latent[1]]
        for _ in range(level):  # the U-Net's own rounding, applied step by step
            side = [math.floor((s + 2 * 1 - 3) / 2) + 1 for s in side]
        assert token_grid(latent, level) == tuple(side)
        height, width = hint_size(latent, level)
        tokens = kohya.cond_emb(weights, name, torch.zeros(1, 3, height, width))
        assert tokens.shape[1] == side[0] * side[1]
    if latent[0] % 4 == 0 and latent[1] % 4 == 0:
        assert all(hint_size(latent, level) == (latent[0] * 8, latent[1] * 8) for level in range(3))


def test_detected_by_the_module_prefix():
    assert detect_layout([f"{SITES[2]}.down.0.weight"]) == "controlnet-lllite"


def refusal(tmp_path, weights: dict) -> str:
    with pytest.raises(ControlNetFormatError) as error:
        load_controlnet(saved(tmp_path, weights, "bad_lllite.safetensors"))
    return str(error.value)


def test_a_module_on_a_convolution_is_refused(tmp_path):
    weights = all_depths()
    weights[f"{SITES[1]}.down.0.weight"] = weights[f"{SITES[1]}.down.0.weight"][:, :, None, None]
    assert refusal(tmp_path, weights) == (
        f"'bad_lllite.safetensors': module '{SITES[1]}' works on a convolution, which neither kohya's ComfyUI node "
        "nor Advanced-ControlNet applies; ControlNet Suite loads LLLite files whose modules sit on attention"
    )


def test_a_module_on_cross_attention_keys_is_refused(tmp_path):
    name = SITES[3].replace("to_q", "to_k")
    weights = kohya.module_weights(name, IN_DIM, 3, torch.Generator().manual_seed(0))
    assert refusal(tmp_path, weights) == (
        f"'bad_lllite.safetensors': module '{name}' sits on cross-attention's k, which reads the text tokens: a "
        "condition image cannot line up with them. It is not a ControlNet-LLLite file ControlNet Suite knows"
    )


def test_a_module_whose_depth_does_not_fit_its_block_is_refused(tmp_path):
    weights = kohya.module_weights(SITES[2], IN_DIM, 3, torch.Generator().manual_seed(0))  # depth 3 at input block 4
    assert refusal(tmp_path, weights) == (
        f"'bad_lllite.safetensors': module '{SITES[2]}' makes condition tokens for a block 4× smaller than the "
        "latent, but it sits at input block 4, transformer block 1, attn1.to_v, which is 2× smaller: this is not an "
        "SDXL ControlNet-LLLite"
    )


def test_incomplete_modules_unknown_names_and_extra_weights_are_refused(tmp_path):
    weights = all_depths()
    del weights[f"{SITES[2]}.mid.0.weight"]
    assert refusal(tmp_path, weights) == (
        f"'bad_lllite.safetensors': module '{SITES[2]}' has no mid.0.weight: the file is incomplete or not a "
        "ControlNet-LLLite"
    )
    weights = {**all_depths(), "lllite_unet_time_embed.down.0.weight": torch.zeros(2, 2)}
    assert refusal(tmp_path, weights) == (
        "'bad_lllite.safetensors': 'lllite_unet_time_embed' is not a ControlNet-LLLite module name ControlNet Suite knows"
    )
    weights = {**all_depths(), f"{SITES[1]}.down.1.weight": torch.zeros(2, 2)}
    assert re.fullmatch(
        re.escape(f"'bad_lllite.safetensors' has weights a ControlNet-LLLite module does not have ({SITES[1]}.down.1.weight)")
        + ": it is a variant ControlNet Suite does not know",
        refusal(tmp_path, weights),
    )
