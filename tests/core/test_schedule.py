"""Strength schedules (controlnet_core/schedule.py) against independent formulas.

The curves are Advanced-ControlNet's `StrengthInterpolation.get_weights` written out here with
numpy (utils.py: linspace; diff·u² + a; diff·(1 − (1 − u)²) + a; diff·(1 − cos πu)/2 + a); piecewise
linear schedules are numpy's `interp`, which also holds the end values; hold schedules are a
right-sided `searchsorted`. The sigma side uses EDM's log-linear `percent_to_sigma`, whose inverse
is written in closed form.
"""

import math

import numpy as np
import pytest

from controlnet_core.errors import ControlNetError
from controlnet_core.schedule import SigmaSchedule, parse_latent_strengths, parse_schedule

GRID = np.linspace(0.0, 1.0, 101)
EXACT = 1e-12


def acn_weights(start: float, end: float, length: int, method: str) -> np.ndarray:
    """Advanced-ControlNet's StrengthInterpolation.get_weights, in numpy."""
    diff, index = end - start, np.linspace(0, 1, length)
    return {
        "linear": np.linspace(start, end, length),
        "ease-in": diff * np.power(index, 2) + start,
        "ease-out": diff * (1 - np.power(1 - index, 2)) + start,
        "ease-in-out": diff * ((1 - np.cos(index * np.pi)) / 2) + start,
    }[method]


@pytest.mark.parametrize("method", ["linear", "ease-in", "ease-out", "ease-in-out"])
def test_two_keyframes_follow_acns_curves(method):
    schedule = parse_schedule("0=1.5, 1=0.25", method)
    got = [schedule.at(p) for p in GRID]
    np.testing.assert_allclose(got, acn_weights(1.5, 0.25, len(GRID), method), rtol=0, atol=EXACT)


def test_linear_keyframes_are_piecewise_linear_and_hold_their_ends():
    schedule = parse_schedule("0.2=0.5, 0.7=2\n0.9=0", "linear")
    expected = np.interp(GRID, [0.0, 0.2, 0.7, 0.9], [1.0, 0.5, 2.0, 0.0])  # starts at 1 at percent 0
    np.testing.assert_allclose([schedule.at(p) for p in GRID], expected, rtol=0, atol=EXACT)


def test_hold_keeps_each_value_until_the_next_keyframe():
    percents, values = [0.0, 0.25, 0.6], [0.0, 1.2, 0.3]
    schedule = parse_schedule("0=0; 0.25=1.2; 0.6=0.3", "hold")
    expected = np.array(values)[np.searchsorted(percents, GRID, side="right") - 1]
    assert [schedule.at(p) for p in GRID] == list(expected)


def test_a_schedule_starts_at_one_before_its_first_keyframe():
    assert parse_schedule("0.5=0", "hold").at(0.49) == 1.0
    assert parse_schedule("0.5=0", "linear").at(0.25) == 0.5


EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 120.0


def edm_percent_to_sigma(percent: float) -> float:
    """ComfyUI's ModelSamplingContinuousEDM.percent_to_sigma (log-linear in the percent)."""
    if percent <= 0.0:
        return 999999999.9
    if percent >= 1.0:
        return 0.0
    low = math.log(EDM_SIGMA_MIN)
    return math.exp((math.log(EDM_SIGMA_MAX) - low) * (1.0 - percent) + low)


def edm_sigma_to_percent(sigma: float) -> float:
    low, high = math.log(EDM_SIGMA_MIN), math.log(EDM_SIGMA_MAX)
    return 1.0 - (math.log(sigma) - low) / (high - low)


@pytest.mark.parametrize("method", ["linear", "ease-in", "ease-out", "ease-in-out", "hold"])
def test_on_sigmas_a_step_gets_the_multiplier_at_its_percent(method):
    schedule = parse_schedule("0=0.2, 0.3=1.4, 0.55=0.6, 1=0", method)
    on_sigmas = SigmaSchedule(schedule, edm_percent_to_sigma)
    for sigma in np.geomspace(EDM_SIGMA_MAX * 0.999, EDM_SIGMA_MIN * 1.001, 57):
        expected = schedule.at(edm_sigma_to_percent(sigma))
        assert on_sigmas.multiplier(float(sigma)) == pytest.approx(expected, abs=1e-9), sigma


def test_on_sigmas_a_keyframe_takes_effect_at_its_own_sigma_as_start_percent_does():
    """ComfyUI runs a control from start_percent when sigma <= percent_to_sigma(start_percent)."""
    on_sigmas = SigmaSchedule(parse_schedule("0=0.2, 0.4=0.9", "hold"), edm_percent_to_sigma)
    at_keyframe = edm_percent_to_sigma(0.4)
    assert on_sigmas.multiplier(at_keyframe) == 0.9
    assert on_sigmas.multiplier(math.nextafter(at_keyframe, math.inf)) == 0.2


@pytest.mark.parametrize("text, interpolation, message", [
    ("", "linear", "the strength schedule has no keyframes: write percent=multiplier entries separated by commas, for example 0=1, 0.5=0.5, 1=0"),
    (" , \n", "hold", "the strength schedule has no keyframes: write percent=multiplier entries separated by commas, for example 0=1, 0.5=0.5, 1=0"),
    ("0=1, 0.5", "linear", "strength schedule entry '0.5' is not percent=multiplier (two numbers, for example 0.5=0.8)"),
    ("0.5=1=2", "linear", "strength schedule entry '0.5=1=2' is not percent=multiplier (two numbers, for example 0.5=0.8)"),
    ("half=1", "linear", "strength schedule entry 'half=1' is not percent=multiplier (two numbers, for example 0.5=0.8)"),
    ("1.5=1", "linear", "strength schedule entry '1.5=1': the percent must lie in 0..1"),
    ("-0.1=1", "linear", "strength schedule entry '-0.1=1': the percent must lie in 0..1"),
    ("0.2=-1", "linear", "strength schedule entry '0.2=-1': the multiplier must be a number of at least 0"),
    ("0.2=nan", "linear", "strength schedule entry '0.2=nan': the multiplier must be a number of at least 0"),
    ("0.5=0, 0.3=1", "linear", "strength schedule keyframes must go in increasing percent order, each percent once: '0.3=1' comes after '0.5=0'"),
    ("0.5=0, 0.5=1", "hold", "strength schedule keyframes must go in increasing percent order, each percent once: '0.5=1' comes after '0.5=0'"),
    ("0=1", "cubic", "unknown interpolation 'cubic': use one of hold, linear, ease-in, ease-out, ease-in-out"),
])
def test_bad_schedules_are_refused_by_name(text, interpolation, message):
    with pytest.raises(ControlNetError) as error:
        parse_schedule(text, interpolation)
    assert str(error.value) == message


# --- latent strengths --------------------------------------------------------------------------

def test_latent_strengths_pick_latents_by_index_and_range_later_entries_winning():
    # by hand: 0 → 1; 1 → 0.75; 2: → 0.5 for 2, 3, 4; -1 → the last (4) → 0
    assert parse_latent_strengths("0=1, 1=0.75\n2:=0.5; -1=0").for_batch(5) == [1.0, 0.75, 0.5, 0.5, 0.0]
    # :2 → 0, 1; -3:-1 → 1, 2 (stop excluded); the rest get others
    assert parse_latent_strengths(":2=0.2, -3:-1=0.6", others=0.0).for_batch(4) == [0.2, 0.6, 0.6, 0.0]


@pytest.mark.parametrize("text, latents, message", [
    ("4=1", 4, "latent strength entry '4=1' names latents the batch does not have: it has 4 (indices 0..3, or -4..-1 from the end)"),
    ("-3=1", 2, "latent strength entry '-3=1' names latents the batch does not have: it has 2 (indices 0..1, or -2..-1 from the end)"),
    ("1:6=1", 4, "latent strength entry '1:6=1' names latents the batch does not have: it has 4 (indices 0..3, or -4..-1 from the end)"),
])
def test_latent_strengths_for_latents_the_batch_lacks_are_refused_by_name(text, latents, message):
    strengths = parse_latent_strengths(text)
    with pytest.raises(ControlNetError) as error:
        strengths.for_batch(latents)
    assert str(error.value) == message


@pytest.mark.parametrize("text, message", [
    ("", "the latent strengths have no entries: write index=multiplier entries separated by commas, for example 0=1, 1=0.75, 2=0.5, 3=0.25"),
    ("0.5=1", "latent strength entry '0.5=1' is not index=multiplier or start:stop=multiplier (whole-number indices, for example 2=0.5 or 0:4=0.8)"),
    ("1:2:3=1", "latent strength entry '1:2:3=1' is not index=multiplier or start:stop=multiplier (whole-number indices, for example 2=0.5 or 0:4=0.8)"),
    ("2", "latent strength entry '2' is not index=multiplier or start:stop=multiplier (whole-number indices, for example 2=0.5 or 0:4=0.8)"),
    ("2=-0.5", "latent strength entry '2=-0.5': the multiplier must be a number of at least 0"),
])
def test_bad_latent_strengths_are_refused_by_name(text, message):
    with pytest.raises(ControlNetError) as error:
        parse_latent_strengths(text)
    assert str(error.value) == message
