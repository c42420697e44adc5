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
from controlnet_core.schedule import (
    Keyframe,
    KeyframeWalk,
    SigmaSchedule,
    StrengthSchedule,
    parse_latent_strengths,
    parse_schedule,
    step_keyframe,
)

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


# --- guaranteed steps --------------------------------------------------------------------------

class AcnKeyframeWalk:
    """Advanced-ControlNet's AdvancedControlBase.prepare_current_timestep (adv_control/utils.py),
    transcribed without torch: keyframes are (start_t, strength, guarantee_steps) in start_percent
    order, start_t = percent_to_sigma(start_percent)."""

    def __init__(self, keyframes):
        self.keyframes = keyframes
        self.prev_t = None
        self.current_index = -1
        self.current = None
        self.used_steps = 0

    def effective_guarantee(self, keyframe, max_sigma):
        start_t, _, guarantee_steps = keyframe
        return 0 if start_t > max_sigma else guarantee_steps

    def strength(self, t, max_sigma):
        if t != self.prev_t:
            if self.current is None or self.used_steps >= self.effective_guarantee(self.current, max_sigma):
                for i in range(self.current_index + 1, len(self.keyframes)):
                    if self.keyframes[i][0] >= t:
                        self.current_index, self.current, self.used_steps = i, self.keyframes[i], 0
                        if self.effective_guarantee(self.current, max_sigma) > 0:
                            break
                    else:
                        break
            self.prev_t = t
            self.used_steps += 1
        return self.current[1]


def sampler_calls(percents, repeats):
    """The sigmas a sampler passes at steps at `percents`, each `repeats` times (CFG halves, other conds)."""
    return [edm_percent_to_sigma(p) for p in percents for _ in range(repeats)]


STEP_PERCENTS = [i / 10 for i in range(10)]


def test_guaranteed_keyframes_between_two_steps_each_get_a_step_in_turn():
    """By hand: steps at 0, 0.1, ..., 0.9; the keyframes at 0.31, 0.32, 0.33 all start before the step
    at 0.4. Without guaranteed steps that step takes the last of them; with one each, the steps at
    0.4, 0.5 and 0.6 take them in turn."""
    text = "0.31=0.2, 0.32=0.4, 0.33=0.6"
    expected = {0: [1.0] * 4 + [0.6] * 6, 1: [1.0] * 4 + [0.2, 0.4, 0.6, 0.6, 0.6, 0.6],
                2: [1.0] * 4 + [0.2, 0.2, 0.4, 0.4, 0.6, 0.6]}
    for guarantee_steps, multipliers in expected.items():
        on_sigmas = SigmaSchedule(parse_schedule(text, "hold", guarantee_steps), edm_percent_to_sigma)
        got = [on_sigmas.multiplier(sigma) for sigma in sampler_calls(STEP_PERCENTS, 2)]
        assert got == [m for m in multipliers for _ in range(2)], guarantee_steps


def test_a_sampling_that_starts_after_a_keyframe_does_not_owe_it_steps():
    """A second pass (KSampler Advanced from a later step) starting at 0.5: the keyframe at 0.31
    started before it, so its guaranteed step is not given; the one at 0.55 still gets its step."""
    on_sigmas = SigmaSchedule(parse_schedule("0.31=0.2, 0.55=0.4, 0.56=0.6", "hold", 1), edm_percent_to_sigma)
    second_pass = [0.5, 0.6, 0.7, 0.8]
    max_sigma = edm_percent_to_sigma(0.5)
    assert [on_sigmas.multiplier(edm_percent_to_sigma(p), max_sigma) for p in second_pass] == [0.2, 0.4, 0.6, 0.6]


@pytest.mark.parametrize("seed", range(40))
def test_guaranteed_steps_walk_the_keyframes_as_advanced_controlnet_does(seed):
    """Random hold keyframes with random guarantees per keyframe, a sampler's sigmas each passed 1 to
    3 times, with and without a second-order sampler's in-between sigmas, from the first step or from
    a later one, step by step against the transcription of Advanced-ControlNet's walk."""
    rng = np.random.default_rng(seed)
    percents = np.sort(rng.choice(np.arange(1, 100) / 100, size=rng.integers(1, 7), replace=False))
    keyframes = [Keyframe(0.0, 1.0)] + [
        Keyframe(float(p), float(rng.integers(0, 5)) / 2, int(rng.integers(0, 4))) for p in percents
    ]
    schedule = StrengthSchedule(tuple(keyframes), "hold")
    steps = np.linspace(0.0, 0.95, int(rng.integers(3, 25)))
    if rng.random() < 0.5:  # Heun-like: a call between each two steps
        steps = np.sort(np.concatenate([steps, (steps[1:] + steps[:-1]) / 2]))
    steps = steps[int(rng.integers(0, len(steps) // 2)):]  # perhaps a second pass
    max_sigma = edm_percent_to_sigma(float(steps[0]))
    acn = AcnKeyframeWalk([(edm_percent_to_sigma(k.percent), k.multiplier, k.guarantee_steps) for k in keyframes])
    ours = SigmaSchedule(schedule, edm_percent_to_sigma)
    for percent in steps:
        for _ in range(int(rng.integers(1, 4))):
            sigma = edm_percent_to_sigma(float(percent))
            assert ours.multiplier(sigma, max_sigma) == acn.strength(sigma, max_sigma), (percent, schedule)


def test_a_walk_without_guaranteed_steps_is_the_schedule_at_each_sigma():
    """With no steps guaranteed, the walk picks the last keyframe started, as the plain schedule does."""
    schedule = parse_schedule("0.1=0.2, 0.3=1.4, 0.32=0.6, 0.9=0", "hold")
    plain = SigmaSchedule(schedule, edm_percent_to_sigma)
    sigmas = [edm_percent_to_sigma(k.percent) for k in schedule.keyframes]
    walk = KeyframeWalk()
    for sigma in np.geomspace(EDM_SIGMA_MAX * 0.999, EDM_SIGMA_MIN * 1.001, 31):
        walk = step_keyframe(walk, float(sigma), sigmas, [0] * len(sigmas))
        assert schedule.keyframes[walk.keyframe].multiplier == plain.multiplier(float(sigma)), sigma


def test_an_entry_can_guarantee_its_own_steps():
    """By hand, as above: only the 0.31 keyframe guarantees steps, 2 of them (its own '(2 steps)'):
    the steps at 0.4 and 0.5 take it, the step at 0.6 goes to the last keyframe started (0.33),
    skipping 0.32. A node-wide 1 with the 0.32 entry's own 0 gives 0.31 and 0.33 one step each."""
    cases = {
        ("0.31=0.2 (2 steps), 0.32=0.4, 0.33=0.6", 0): [1.0] * 4 + [0.2, 0.2, 0.6, 0.6, 0.6, 0.6],
        ("0.31=0.2, 0.32=0.4 (0 steps), 0.33=0.6", 1): [1.0] * 4 + [0.2, 0.6, 0.6, 0.6, 0.6, 0.6],
    }
    for (text, guarantee_steps), multipliers in cases.items():
        on_sigmas = SigmaSchedule(parse_schedule(text, "hold", guarantee_steps), edm_percent_to_sigma)
        assert [on_sigmas.multiplier(sigma) for sigma in sampler_calls(STEP_PERCENTS, 2)] == [
            m for m in multipliers for _ in range(2)
        ], text


def test_entry_steps_are_read_per_keyframe():
    schedule = parse_schedule("0=1, 0.3=0.2 (1 step); 0.5=0.5 ( 12 Steps )\n0.8=0", "hold", 3)
    assert [(k.percent, k.multiplier, k.guarantee_steps) for k in schedule.keyframes] == [
        (0.0, 1.0, 3), (0.3, 0.2, 1), (0.5, 0.5, 12), (0.8, 0.0, 3)
    ]
    # an eased schedule takes entries that guarantee nothing
    assert parse_schedule("0.5=0.5 (0 steps)", "linear").keyframes[1].guarantee_steps == 0


@pytest.mark.parametrize("text, interpolation, message", [
    ("0=1, 0.5=0 (2 steps)", "linear", "strength schedule entry '0.5=0 (2 steps)' guarantees steps, which count the steps a keyframe's value is held, so it needs hold interpolation, not linear: set interpolation to hold, or remove the steps"),
    ("0=1, 0.5=0 (-1 steps)", "hold", "strength schedule entry '0.5=0 (-1 steps)': the guaranteed steps must be a whole number of at least 0, for example 0.5=0.8 (2 steps)"),
    ("0=1, 0.5=0 (1.5 steps)", "hold", "strength schedule entry '0.5=0 (1.5 steps)': the guaranteed steps must be a whole number of at least 0, for example 0.5=0.8 (2 steps)"),
    ("0.5=0 (10001 steps)", "hold", "strength schedule entry '0.5=0 (10001 steps)': at most 10000 guaranteed steps"),
    ("0.5=0 (2)", "hold", "strength schedule entry '0.5=0 (2)' is not percent=multiplier (two numbers, for example 0.5=0.8)"),
])
def test_bad_entry_steps_are_refused_by_name(text, interpolation, message):
    with pytest.raises(ControlNetError) as error:
        parse_schedule(text, interpolation)
    assert str(error.value) == message


@pytest.mark.parametrize("interpolation, guarantee_steps, message", [
    ("linear", 1, "guarantee_steps counts the steps each keyframe's value is held, so it needs hold interpolation, not linear: set interpolation to hold, or guarantee_steps to 0"),
    ("ease-in", 3, "guarantee_steps counts the steps each keyframe's value is held, so it needs hold interpolation, not ease-in: set interpolation to hold, or guarantee_steps to 0"),
    ("hold", -1, "guarantee_steps must be a whole number of at least 0, not -1"),
    ("hold", 1.5, "guarantee_steps must be a whole number of at least 0, not 1.5"),
])
def test_bad_guaranteed_steps_are_refused_by_name(interpolation, guarantee_steps, message):
    with pytest.raises(ControlNetError) as error:
        parse_schedule("0=1, 0.5=0", interpolation, guarantee_steps)
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
