"""Strength schedules (timestep keyframes) and latent strengths (latent keyframes) on every kind
of control our apply and stack nodes take.

Independent references:
- a hold schedule that is 0 until a percent and 1 from there is ComfyUI's own start_percent, which
  ComfyUI's code applies (its sampler skips the control above percent_to_sigma(start));
- at one step, the residuals are the unscheduled control's times the multiplier numpy's `interp`
  gives at the percent the step's sigma was made from (percent_to_sigma of the tiny model);
- latent strengths of 1 and 0 on a batch of two: the first latent is sampled as with the control,
  bit for bit, the second as without it; soft strengths are checked row by row at one step.
"""

import numpy as np
import pytest
import torch

from .test_control_object import (
    COND_OR_UNCOND,
    STRENGTH,
    TOLERANCE,
    count_calls,
    flat,
    prepared,
    raw_residuals,
    step_inputs,
)
from .test_foreign_control import ACROSS_IMPLEMENTATIONS
from .test_sampling import MIN_EFFECT, RELATIVE_TO_EFFECT
from .test_t2i_adapter_options import comfy_adapter

STEPS = 6  # enough steps for a keyframe at 0.5 to fall between two of them
KEYFRAME_PERCENTS, KEYFRAME_MULTIPLIERS = [0.0, 0.4, 1.0], [0.25, 1.5, 0.5]
LINEAR_TEXT = ", ".join(f"{p}={m}" for p, m in zip(KEYFRAME_PERCENTS, KEYFRAME_MULTIPLIERS))
FROM_HALF = "0=0, 0.5=1"  # hold: off, then on from 50 %


def schedule(host, text, interpolation="hold", guarantee_steps=0):
    (made,) = host.node("CNS_StrengthSchedule").make(text, interpolation, guarantee_steps)
    return made


def apply(host, control_net, start=0.0, strength_schedule=None, latent_strengths=None):
    return host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, control_net, host.image, STRENGTH, start, 1.0, "balanced",
        strength_schedule=strength_schedule, latent_strengths=latent_strengths,
    )


def test_a_schedule_off_until_half_samples_as_start_percent_half_and_runs_nothing_before(host, files):
    control_net = host.suite_controlnet(files.original)
    calls = count_calls(control_net.loaded.model)
    try:
        started = host.sample(*apply(host, control_net, start=0.5), steps=STEPS)
        runs_started = len(calls)
        scheduled = host.sample(*apply(host, control_net, strength_schedule=schedule(host, FROM_HALF)), steps=STEPS)
    finally:
        del control_net.loaded.model.forward
    plain = host.sample(host.positive, host.negative, steps=STEPS)
    assert (started - plain).abs().max().item() > MIN_EFFECT
    assert torch.equal(scheduled, started)
    assert 0 < runs_started < STEPS and len(calls) == 2 * runs_started  # not one call more


@pytest.mark.parametrize("kind", ["ComfyUI's Load ControlNet", "T2I-Adapter"])
def test_controls_comfyui_runs_take_a_schedule_through_the_wrapper(host, files, kind):
    """ComfyUI's own object at start_percent 0.5 against our wrapper with the schedule."""
    control_net = comfy_adapter(host) if kind == "T2I-Adapter" else host.builtin_controlnet(files.original)
    started_conditioning = apply(host, control_net, start=0.5)
    scheduled_conditioning = apply(host, control_net, strength_schedule=schedule(host, FROM_HALF))
    started = host.sample(*started_conditioning, steps=STEPS)
    scheduled = host.sample(*scheduled_conditioning, steps=STEPS)
    plain = host.sample(host.positive, host.negative, steps=STEPS)
    effect = (started - plain).abs().max().item()
    assert type(started_conditioning[0][0][1]["control"]) is type(control_net)
    assert type(scheduled_conditioning[0][0][1]["control"]).__name__ in ("ForeignControl", "ForeignAdapter")
    assert effect > MIN_EFFECT
    assert (scheduled - started).abs().max().item() <= RELATIVE_TO_EFFECT * effect


@pytest.mark.parametrize("interpolation", ["linear", "hold"])
@pytest.mark.parametrize("loader", ["ours", "ComfyUI's"])
def test_each_step_is_weighted_by_the_schedule_at_its_percent(host, files, interpolation, loader):
    control_net = host.suite_controlnet(files.original) if loader == "ours" else host.builtin_controlnet(files.original)
    positive, _ = host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, control_net, host.image, STRENGTH, 0.0, 1.0, "balanced",
        strength_schedule=schedule(host, LINEAR_TEXT, interpolation),
    )
    control = prepared(host, positive[0][1]["control"])
    sampling = host.model.model.model_sampling
    x, _, cond = step_inputs(host)
    for percent in (0.1, 0.4, 0.55, 0.9):
        sigma = torch.full((2,), sampling.percent_to_sigma(percent))
        if interpolation == "linear":
            multiplier = np.interp(percent, KEYFRAME_PERCENTS, KEYFRAME_MULTIPLIERS)
        else:
            multiplier = KEYFRAME_MULTIPLIERS[np.searchsorted(KEYFRAME_PERCENTS, percent, side="right") - 1]
        with torch.no_grad():
            got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
        raw = raw_residuals(host, host.suite_controlnet(files.original), x, sigma, cond)
        tolerance = TOLERANCE if loader == "ours" else ACROSS_IMPLEMENTATIONS
        for i, (g, r) in enumerate(zip(got, raw)):
            scale = STRENGTH * multiplier * r.abs().max().item()
            assert (g - STRENGTH * multiplier * r).abs().max().item() <= tolerance * scale, f"{percent=} residual {i}"
    control.cleanup()


def test_a_stack_entry_with_a_schedule_equals_the_apply_node_with_it(host, files):
    control_net = host.suite_controlnet(files.original)
    linear = schedule(host, LINEAR_TEXT, "ease-in-out")
    (stack,) = host.node("CNS_ControlStackEntry").add(
        control_net, host.image, STRENGTH, 0.0, 1.0, "balanced", strength_schedule=linear
    )
    stacked = host.sample(*host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, stack), steps=STEPS)
    applied = host.sample(*apply(host, control_net, strength_schedule=linear), steps=STEPS)
    unscheduled = host.sample(*apply(host, control_net), steps=STEPS)
    assert torch.equal(stacked, applied)
    assert (applied - unscheduled).abs().max().item() > MIN_EFFECT  # the schedule did something


def test_a_schedule_on_a_union_samples_as_start_percent(host, union_sdxl):
    conditions = host.node("CNS_UnionCondition").add(union_sdxl.images[:1], "depth", 1.0)[0]
    union = host.node("CNS_ApplyControlNetUnion")

    def sampled(start, strength_schedule=None):
        conditioning = union.apply(
            union_sdxl.positive, union_sdxl.negative, union_sdxl.control_net, conditions, STRENGTH, start, 1.0,
            "balanced", strength_schedule=strength_schedule,
        )
        return host.sample(*conditioning, model=union_sdxl.model, steps=STEPS)

    started = sampled(0.5)
    plain = host.sample(union_sdxl.positive, union_sdxl.negative, model=union_sdxl.model, steps=STEPS)
    assert (started - plain).abs().max().item() > MIN_EFFECT
    assert torch.equal(sampled(0.0, schedule(host, FROM_HALF)), started)


def step_percents(host, steps=STEPS):
    """The percent of each step's sigma with host.sample's sampler (euler, normal): where to put keyframes."""
    from controlnet_core.schedule import percent_of_sigma

    sampling = host.model.get_model_object("model_sampling")
    sigmas = host.comfy.samplers.calculate_sigmas(sampling, "normal", steps)[:-1]
    return [percent_of_sigma(float(sigma), 0.0, 1.0, sampling.percent_to_sigma) for sigma in sigmas]


@pytest.mark.parametrize("guarantee_steps", [1, 2])
def test_guaranteed_steps_give_a_keyframe_between_two_steps_its_steps(host, files, guarantee_steps):
    """Keyframes 0 then 1 both fall between steps 2 and 3: without guaranteed steps the 0 is skipped
    (the unscheduled control); with them, steps 3.. run nothing for `guarantee_steps` steps, as a
    plain schedule whose keyframes lie between those steps does."""
    p = step_percents(host)
    skipped = f"{(2 * p[2] + p[3]) / 3}=0, {(p[2] + 2 * p[3]) / 3}=1"  # both between steps 2 and 3
    last_off = 3 + guarantee_steps - 1
    between_steps = f"{(p[2] + p[3]) / 2}=0, {(p[last_off] + p[last_off + 1]) / 2}=1"
    control_net = host.suite_controlnet(files.original)
    calls = count_calls(control_net.loaded.model)
    try:
        guaranteeing = schedule(host, skipped, "hold", guarantee_steps)
        guaranteed = host.sample(*apply(host, control_net, strength_schedule=guaranteeing), steps=STEPS)
        runs_guaranteed = len(calls)
        reference = host.sample(*apply(host, control_net, strength_schedule=schedule(host, between_steps)), steps=STEPS)
    finally:
        del control_net.loaded.model.forward
    unguaranteed = host.sample(*apply(host, control_net, strength_schedule=schedule(host, skipped)), steps=STEPS)
    unscheduled = host.sample(*apply(host, control_net), steps=STEPS)
    # the 0 keyframe's own steps: the 1 after it is the last keyframe, so its guarantee changes nothing
    zero_first, one_then = skipped.split(", ")
    per_entry = schedule(host, f"{zero_first} ({guarantee_steps} steps), {one_then}", "hold")
    assert torch.equal(unguaranteed, unscheduled)
    assert torch.equal(guaranteed, reference)
    assert torch.equal(host.sample(*apply(host, control_net, strength_schedule=per_entry), steps=STEPS), reference)
    assert (guaranteed - unscheduled).abs().max().item() > MIN_EFFECT
    assert runs_guaranteed == STEPS - guarantee_steps


def test_guaranteed_steps_count_the_steps_before_start_percent(host, files):
    """As Advanced-ControlNet's: the 0 keyframe between steps 2 and 3 has its step at step 3, before
    start_percent, so from step 4 (where the control starts) the 1 keyframe is in effect."""
    p = step_percents(host)
    skipped = f"{(2 * p[2] + p[3]) / 3}=0, {(p[2] + 2 * p[3]) / 3}=1"
    control_net = host.suite_controlnet(files.original)
    start = (p[3] + p[4]) / 2
    guaranteed = host.sample(*apply(host, control_net, start, schedule(host, skipped, "hold", 1)), steps=STEPS)
    assert torch.equal(guaranteed, host.sample(*apply(host, control_net, start), steps=STEPS))


def test_a_bad_schedule_is_refused_by_the_node(host):
    with pytest.raises(host.errors.ControlNetError) as error:
        schedule(host, "0.5=0.2, 0.1=1")
    assert str(error.value) == (
        "strength schedule keyframes must go in increasing percent order, each percent once: '0.1=1' comes after "
        "'0.5=0.2'"
    )


def test_sampling_without_pre_run_is_refused_rather_than_ignoring_the_schedule(host, files):
    positive, _ = apply(host, host.suite_controlnet(files.original), strength_schedule=schedule(host, FROM_HALF))
    x, sigma, cond = step_inputs(host)
    with pytest.raises(host.errors.ControlNetError) as error:
        positive[0][1]["control"].get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND})
    assert str(error.value) == (
        "this control has a strength schedule, and sampling started without telling it the model's sigmas (pre_run was "
        "not called): the node that samples does not set controls up as ComfyUI's samplers do. Sample with a ComfyUI "
        "sampler node, or remove the strength schedule"
    )


def test_a_control_comfyui_cannot_weight_is_refused_a_schedule(host):
    class OtherPacksControl(host.comfy.controlnet.ControlBase):
        pass

    with pytest.raises(host.errors.ControlNetError) as error:
        apply(host, OtherPacksControl(), strength_schedule=schedule(host, FROM_HALF))
    assert str(error.value).startswith(
        "control modes other than balanced, masks, block weights, strength schedules, latent strengths and uncond "
        "multipliers need an SD1.x/SD2.x/SDXL ControlNet or T2I-Adapter"
    )


# --- latent strengths ------------------------------------------------------------------------------

def latent_strengths(host, text, others=1.0):
    (made,) = host.node("CNS_LatentStrengths").make(text, others)
    return made


@pytest.mark.parametrize("loader", ["ours", "ComfyUI's"])
def test_latent_strengths_of_one_and_zero_control_the_first_latent_only(host, files, loader):
    control_net = host.suite_controlnet(files.original) if loader == "ours" else host.builtin_controlnet(files.original)
    first_only = host.sample(*apply(host, control_net, latent_strengths=latent_strengths(host, "1=0")), batch=2)
    controlled = host.sample(*apply(host, control_net), batch=2)
    plain = host.sample(host.positive, host.negative, batch=2)
    assert (controlled[0] - plain[0]).abs().max().item() > MIN_EFFECT
    if loader == "ours":
        assert torch.equal(first_only[0], controlled[0])
    else:  # our wrapper against ComfyUI's own object, which runs it without options
        effect = (controlled[0] - plain[0]).abs().max().item()
        assert (first_only[0] - controlled[0]).abs().max().item() <= RELATIVE_TO_EFFECT * effect
    assert torch.equal(first_only[1], plain[1])


def test_latent_strengths_multiply_the_mask_row_by_row_in_a_cond_only_mode(host, files):
    """Two latents, uncond chunk then cond chunk: each cond row is the raw residual times the
    mode's weight, the mask and its latent's strength; the uncond rows get nothing."""
    from .conftest import CONTEXT_DIM, IMAGE_SIDE, LATENT_SIDE, TOKENS

    mask = torch.ones(1, IMAGE_SIDE, IMAGE_SIDE)
    mask[..., IMAGE_SIDE // 2:] = 0.0  # control on the left half only
    positive, _ = host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, host.suite_controlnet(files.original), host.image, STRENGTH, 0.0, 1.0,
        "controlnet_more_important", mask=mask, latent_strengths=latent_strengths(host, "0=0.3, -1=1.7"),
    )
    control = prepared(host, positive[0][1]["control"])
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(4, 4, LATENT_SIDE, LATENT_SIDE, generator=gen) * 5
    sigma = torch.full((4,), 4.0)
    cond = {"c_crossattn": torch.randn(4, TOKENS, CONTEXT_DIM, generator=gen)}
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [1, 0]}))
    control.cleanup()
    raw = raw_residuals(host, host.suite_controlnet(files.original), x, sigma, cond)
    for i, (g, r) in enumerate(zip(got, raw)):
        weight = STRENGTH * 0.825 ** (len(raw) - 1 - i)  # the original guess mode's soft weight
        half = r.shape[-1] // 2
        assert torch.count_nonzero(g[:2]) == 0, f"residual {i}: control on the uncond rows"
        if half == 0:
            continue  # a 1x1 residual straddles the mask's edge
        for row, latent_strength in ((2, 0.3), (3, 1.7)):
            assert torch.count_nonzero(g[row, ..., half:]) == 0, f"residual {i}: control outside the mask"
            expected = weight * latent_strength * r[row, ..., :half]
            assert (g[row, ..., :half] - expected).abs().max().item() <= TOLERANCE * expected.abs().max().item(), (
                f"residual {i}, row {row}"
            )


def test_latent_strengths_naming_a_latent_the_batch_lacks_are_refused_when_sampling(host, files):
    strengths = latent_strengths(host, "0:3=0.5")
    with pytest.raises(host.errors.ControlNetError) as error:
        host.sample(*apply(host, host.suite_controlnet(files.original), latent_strengths=strengths), batch=2)
    assert str(error.value) == (
        "latent strength entry '0:3=0.5' names latents the batch does not have: it has 2 (indices 0..1, or -2..-1 from "
        "the end)"
    )


def test_latent_strengths_under_tiled_diffusion_are_refused(host, files):
    """Tiled Diffusion sets `cond_hint` at the latent's pixel size before each call (see
    test_tiling_nodes); its batches of tiles do not say which latent a row belongs to."""
    from .conftest import IMAGE_SIDE

    positive, _ = apply(host, host.suite_controlnet(files.original), latent_strengths=latent_strengths(host, "0=0.5"))
    control = prepared(host, positive[0][1]["control"])
    x, sigma, cond = step_inputs(host)
    control.cond_hint = torch.rand(2, 3, IMAGE_SIDE, IMAGE_SIDE)
    with pytest.raises(host.errors.ControlNetError) as error:
        control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND})
    control.cleanup()
    assert str(error.value).startswith("this control has latent strengths, and Tiled Diffusion batches the tiles")
