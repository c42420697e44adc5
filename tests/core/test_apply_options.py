"""ApplyOptions: what the apply and stack nodes hand to a control, checked when it is made."""

import pytest
import torch

from controlnet_core.apply_options import ApplyOptions
from controlnet_core.control_modes import BALANCED, CONTROL_MODES
from controlnet_core.errors import ControlNetError
from controlnet_core.schedule import parse_latent_strengths, parse_schedule


@pytest.mark.parametrize("start, end", [(0.6, 0.4), (-0.1, 0.5), (0.2, 1.5)])
def test_a_range_outside_0_1_or_reversed_is_refused(start, end):
    with pytest.raises(ControlNetError) as error:
        ApplyOptions(start_percent=start, end_percent=end)
    assert str(error.value) == f"start_percent ({start}) must not exceed end_percent ({end}); both lie in 0..1"


def test_an_unknown_mode_is_refused():
    with pytest.raises(ControlNetError) as error:
        ApplyOptions(control_mode="guess")
    assert str(error.value) == f"unknown control mode 'guess'; choose one of {', '.join(CONTROL_MODES)}"


def test_a_single_point_range_is_allowed():
    assert ApplyOptions(start_percent=0.5, end_percent=0.5).percent_range == (0.5, 0.5)


def test_plain_means_balanced_with_no_other_option():
    assert ApplyOptions().is_plain()
    assert ApplyOptions(strength=2.0, start_percent=0.1, end_percent=0.9, block_weights="  ").is_plain()
    not_plain = [
        ApplyOptions(control_mode=mode) for mode in CONTROL_MODES if mode != BALANCED
    ] + [
        ApplyOptions(mask=torch.ones(1, 8, 8)),
        ApplyOptions(block_weights="middle block only"),
        ApplyOptions(strength_schedule=parse_schedule("0=1, 1=0", "linear")),
        ApplyOptions(latent_strengths=parse_latent_strengths("0=0.5")),
    ]
    assert [options.is_plain() for options in not_plain] == [False] * len(not_plain)


@pytest.mark.parametrize("uncond_multiplier", [-0.1, 1.5])
def test_an_uncond_multiplier_outside_0_1_is_refused(uncond_multiplier):
    with pytest.raises(ControlNetError) as error:
        ApplyOptions(uncond_multiplier=uncond_multiplier)
    assert str(error.value) == (
        f"uncond_multiplier ({uncond_multiplier}) lies in 0..1 (1: the same control on both branches)"
    )


@pytest.mark.parametrize("mode", ["controlnet_more_important", "cfg_resolution_weighting"])
def test_an_uncond_multiplier_between_0_and_1_in_a_cond_only_mode_is_refused(mode):
    with pytest.raises(ControlNetError) as error:
        ApplyOptions(control_mode=mode, uncond_multiplier=0.25)
    assert str(error.value) == (
        f"uncond_multiplier 0.25 has nothing to scale: control mode '{mode}' gives the unconditional branch no "
        "control. Set uncond_multiplier to 1, or choose balanced or prompt_more_important"
    )
    # 0 and 1 say what the mode does already
    assert ApplyOptions(control_mode=mode, uncond_multiplier=0.0).uncond_multiplier == 0.0
    assert ApplyOptions(control_mode=mode, uncond_multiplier=1.0).uncond_multiplier == 1.0


@pytest.mark.parametrize("uncond_multiplier", [0.0, 0.5])
def test_an_uncond_multiplier_below_1_is_not_plain(uncond_multiplier):
    assert not ApplyOptions(uncond_multiplier=uncond_multiplier).is_plain()
