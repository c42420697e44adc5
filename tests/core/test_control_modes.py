"""Control modes, block weights and masks over residual lists (no ComfyUI needed).

Expected weights are written out from the sources, not recomputed with the module's formulas:
- guess mode / "prompt more important": the values of 0.825^(12-i) for i = 0..12 as tabulated
  in reference/formats_algorithms.md §4.2 (original gradio code);
- CFG resolution weighting: paper §3.4, w_i = 64/h_i with SD1.5's block sides at 512 px
  (64, 64, 64 | 32, 32, 32 | 16, 16, 16 | 8, 8, 8 | middle 8).
"""

import pytest
import torch

from controlnet_core import sd_config
from controlnet_core.control_modes import (
    BALANCED,
    CFG_RESOLUTION_WEIGHTING,
    CONTROLNET_MORE_IMPORTANT,
    PROMPT_MORE_IMPORTANT,
    cond_rows,
    is_cond_only,
    mask_residuals,
    mode_weights,
    parse_block_weights,
    scatter_rows,
    uncond_row_factors,
    zero_uncond_rows,
)
from controlnet_core.errors import ControlNetError

GUESS_MODE_TABLE = [0.0994, 0.1205, 0.1461, 0.177, 0.2146, 0.2601, 0.3153, 0.3822, 0.4633, 0.5615, 0.6806, 0.825, 1.0]
SD15_SIDES_AT_512 = [64, 64, 64, 32, 32, 32, 16, 16, 16, 8, 8, 8, 8]
SDXL_SIDES_AT_512 = [64, 64, 64, 32, 32, 32, 16, 16, 16, 16]  # 3 levels, middle at the deepest
TABLE_PRECISION = 1e-4  # the table is rounded to 4 decimals

SD15_DIVISORS = sd_config().output_resolution_divisors()
SDXL_DIVISORS = sd_config(channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), adm_in_channels=2816,
                          context_dim=2048, use_linear_projection=True).output_resolution_divisors()


def test_divisors_are_the_block_resolutions():
    assert [64 // d for d in SD15_DIVISORS] == SD15_SIDES_AT_512
    assert [64 // d for d in SDXL_DIVISORS] == SDXL_SIDES_AT_512


def test_balanced_is_strength_everywhere():
    assert mode_weights(BALANCED, 0.7, SD15_DIVISORS) == [0.7] * 13
    assert not is_cond_only(BALANCED)


@pytest.mark.parametrize("mode", [PROMPT_MORE_IMPORTANT, CONTROLNET_MORE_IMPORTANT])
def test_soft_modes_follow_the_guess_mode_table(mode):
    weights = mode_weights(mode, 2.0, SD15_DIVISORS)
    assert weights == pytest.approx([2.0 * w for w in GUESS_MODE_TABLE], abs=2.0 * TABLE_PRECISION)
    assert weights[-1] == 2.0  # the middle block keeps the full strength
    assert is_cond_only(mode) == (mode == CONTROLNET_MORE_IMPORTANT)


def test_soft_weights_for_sdxl_end_at_the_middle_block():
    weights = mode_weights(PROMPT_MORE_IMPORTANT, 1.0, SDXL_DIVISORS)
    assert weights == pytest.approx(GUESS_MODE_TABLE[-10:], abs=TABLE_PRECISION)


def test_cfg_resolution_weighting_is_64_over_h():
    expected = [64 / h for h in SD15_SIDES_AT_512]
    assert mode_weights(CFG_RESOLUTION_WEIGHTING, 0.5, SD15_DIVISORS) == [0.5 * w for w in expected]
    assert mode_weights(CFG_RESOLUTION_WEIGHTING, 1.0, SDXL_DIVISORS) == [64 / h for h in SDXL_SIDES_AT_512]
    assert is_cond_only(CFG_RESOLUTION_WEIGHTING)


def test_block_weights_multiply_the_mode_weights():
    user = [float(i) / 12 for i in range(13)]
    weights = mode_weights(PROMPT_MORE_IMPORTANT, 1.5, SD15_DIVISORS, user)
    assert weights == pytest.approx([1.5 * t * u for t, u in zip(GUESS_MODE_TABLE, user)], abs=1.5 * TABLE_PRECISION)


def test_unknown_mode_is_refused():
    with pytest.raises(ControlNetError, match="unknown control mode 'guess'"):
        mode_weights("guess", 1.0, SD15_DIVISORS)


def test_parse_block_weights():
    assert parse_block_weights("", SD15_DIVISORS) is None
    assert parse_block_weights(" 1, 0.5 ,0,0,0,0,0,0,0,0,0,0, 2 ", SD15_DIVISORS) == [1, 0.5] + [0] * 10 + [2]
    assert parse_block_weights("middle block only", SD15_DIVISORS) == [0.0] * 12 + [1.0]
    assert parse_block_weights("lowest resolution only", SD15_DIVISORS) == [0.0] * 9 + [1.0] * 4
    assert parse_block_weights("highest resolution only", SDXL_DIVISORS) == [1.0] * 3 + [0.0] * 7
    with pytest.raises(ControlNetError, match="has 12 numbers; this control has 13 residuals"):
        parse_block_weights(",".join(["1"] * 12), SD15_DIVISORS)
    with pytest.raises(ControlNetError, match="neither 13 comma-separated numbers nor a preset"):
        parse_block_weights("strong", SD15_DIVISORS)


SD_ADAPTER_DIVISORS = [1, 2, 4, 8]  # an SD1.x T2I-Adapter's features: 64, 32, 16, 8 at 512 px
A1111_ADAPTER_SOFT = [0.25, 0.62, 0.825, 1.0]  # sd-webui-controlnet scripts/hook.py, T2I_Adapter soft injection


def test_adapter_soft_weights_replace_the_controlnet_ones_in_both_soft_modes():
    from controlnet_core.control_modes import ADAPTER_SOFT_WEIGHTS

    for mode in (PROMPT_MORE_IMPORTANT, CONTROLNET_MORE_IMPORTANT):
        assert mode_weights(mode, 2.0, SD_ADAPTER_DIVISORS, soft=ADAPTER_SOFT_WEIGHTS) == [2.0 * w for w in A1111_ADAPTER_SOFT]
    assert mode_weights(BALANCED, 2.0, SD_ADAPTER_DIVISORS, soft=ADAPTER_SOFT_WEIGHTS) == [2.0] * 4
    assert mode_weights(CFG_RESOLUTION_WEIGHTING, 1.0, SD_ADAPTER_DIVISORS, soft=ADAPTER_SOFT_WEIGHTS) == [64 / h for h in (64, 32, 16, 8)]
    with pytest.raises(ControlNetError, match="4 soft weights for 13 residuals"):
        mode_weights(PROMPT_MORE_IMPORTANT, 1.0, SD15_DIVISORS, soft=ADAPTER_SOFT_WEIGHTS)


def test_block_weights_without_a_middle_block():
    assert parse_block_weights("lowest resolution only", SD_ADAPTER_DIVISORS, ends_at_middle_block=False) == [0, 0, 0, 1]
    with pytest.raises(ControlNetError, match=r"'without middle block': this control adds nothing at the middle block"):
        parse_block_weights("without middle block", SD_ADAPTER_DIVISORS, ends_at_middle_block=False)
    with pytest.raises(ControlNetError, match=r"this control has 4 residuals \(4 input blocks, shallowest first\): give 4"):
        parse_block_weights("1, 2", SD_ADAPTER_DIVISORS, ends_at_middle_block=False)


def random_residuals(batch=4):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(batch, 3, side, side, generator=gen) for side in (8, 4, 2)]


def test_zero_uncond_rows_zeroes_exactly_the_uncond_chunks():
    residuals = random_residuals(batch=4)
    out = zero_uncond_rows(residuals, [1, 0])  # chunk 0 = uncond (rows 0-1), chunk 1 = cond (rows 2-3)
    for r, o in zip(residuals, out):
        assert torch.count_nonzero(o[:2]) == 0
        assert torch.equal(o[2:], r[2:])


def test_uncond_row_factors_give_each_uncond_chunks_rows_the_multiplier():
    # chunks uncond, cond, uncond of 2 rows each (ComfyUI: 0 = cond, 1 = uncond)
    assert uncond_row_factors([1, 0, 1], 2, 0.25).flatten().tolist() == [0.25, 0.25, 1.0, 1.0, 0.25, 0.25]
    assert uncond_row_factors([0], 3, 0.5).shape == (3, 1, 1, 1)
    assert uncond_row_factors([0], 3, 0.5).flatten().tolist() == [1.0, 1.0, 1.0]


def test_cond_rows_and_scatter_rows():
    assert cond_rows(6, [0, 1, 0]).tolist() == [0, 1, 4, 5]
    assert cond_rows(2, [1]).tolist() == []
    computed = [torch.ones(2, 1, 2, 2), 2 * torch.ones(2, 1, 1, 1)]
    full = scatter_rows(computed, cond_rows(4, [1, 0]), 4)
    assert [f.shape[0] for f in full] == [4, 4]
    assert torch.count_nonzero(full[0][:2]) == 0 and torch.equal(full[0][2:], computed[0])
    assert torch.equal(full[1][2:], computed[1])


def test_mask_is_resized_to_each_residual():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1.0  # left half of the image
    residuals = [torch.ones(1, 2, 16, 16), torch.ones(1, 2, 8, 8), torch.ones(1, 2, 4, 4)]
    for r, side in zip(mask_residuals(residuals, mask), (16, 8, 4)):
        # a bilinear halving of a step edge on an even column keeps it sharp
        assert torch.equal(r[..., : side // 2], torch.ones(1, 2, side, side // 2))
        assert torch.count_nonzero(r[..., side // 2 :]) == 0
