"""uncond_multiplier (Advanced-ControlNet's): the unconditional rows of CFG's batch get the control
times u, the conditional rows the whole control; u = 0 takes the conditional-rows-only path.

Expected residuals are the raw network's outputs times the mode weights test_control_object
writes out from the sources, times u on the uncond row, for our ControlNet and ComfyUI's object;
a Union's are its own at u = 1 with the uncond row times u. T2I-Adapters are checked in
test_t2i_adapter_options, LLLites in test_lllite (against kohya's wrapping), global-pooling
ControlNets in test_global_pooling, and Advanced-ControlNet's own Soft Weights node against ours
in test_advanced_controlnet.
"""

import pytest
import torch

from .test_control_object import (
    COND_OR_UNCOND,
    COND_ROWS,
    SOFT_BASE,
    STRENGTH,
    TOLERANCE,
    UNCOND_ROWS,
    control_on,
    count_calls,
    expected_weights,
    flat,
    prepared,
    raw_residuals,
    step_inputs,
)
from .test_global_pooling import LOADERS
from .test_sampling import MIN_EFFECT, RELATIVE_TO_EFFECT
from .test_tiling_nodes import applied, canvas_images, canvas_inputs, tiled_diffusion_step
from .test_union_control import CANNY, DEPTH, union_conditions

RESIDUALS = 13  # SD1.x: 12 input blocks and the middle block
BOTH_BRANCH_MODES = ["balanced", "prompt_more_important"]


def one_step(host, control_net, mode, uncond_multiplier, x=None, mask=None):
    """Our apply node's control on one uncond + cond step, the network's calls counted."""
    control = control_on(host, control_net, mode, mask=mask, uncond_multiplier=uncond_multiplier)
    step_x, sigma, cond = step_inputs(host)
    x = step_x if x is None else x
    network = control_net.loaded.model if hasattr(control_net, "loaded") else control_net.control_model
    calls = count_calls(network)
    try:
        with torch.no_grad():
            got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
    finally:
        del network.forward
        control.cleanup()
    return got, calls, (x, sigma, cond)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("mode", BOTH_BRANCH_MODES)
@pytest.mark.parametrize("uncond_multiplier", [0.0, 0.35])
def test_the_uncond_row_gets_the_control_times_the_multiplier(host, files, loader, mode, uncond_multiplier):
    load, tolerance = LOADERS[loader]
    got, calls, inputs = one_step(host, load(host, files.original), mode, uncond_multiplier)
    raw = raw_residuals(host, host.suite_controlnet(files.original), *inputs)

    assert calls == [1 if uncond_multiplier == 0.0 else 2]  # 0: the network runs the cond row only
    assert len(got) == RESIDUALS
    for i, (g, r, w) in enumerate(zip(got, raw, expected_weights(mode, raw))):
        scale = r.abs().max().item()
        assert scale > 1e-3, f"residual {i} is trivially small"
        assert (g[COND_ROWS] - w * r[COND_ROWS]).abs().max().item() <= tolerance * w * scale, f"residual {i}"
        expected_uncond = uncond_multiplier * w * r[UNCOND_ROWS]
        assert (g[UNCOND_ROWS] - expected_uncond).abs().max().item() <= tolerance * w * scale, f"residual {i}"
        if uncond_multiplier == 0.0:
            assert torch.count_nonzero(g[UNCOND_ROWS]) == 0, f"residual {i}: uncond row not zero"


def test_one_latents_cond_and_uncond_rows_with_a_mask(host, files):
    """The rows of one latent (the model runs what precedes its cross-attention once) and a mask
    on the left half: the uncond row is the masked control times u."""
    uncond_multiplier = 0.6
    mask = torch.ones(1, host.image.shape[1], host.image.shape[2])
    mask[..., mask.shape[-1] // 2 :] = 0.0
    x, _, _ = step_inputs(host)
    got, _, inputs = one_step(host, host.suite_controlnet(files.original), "balanced", uncond_multiplier,
                              x=x[:1].repeat(2, 1, 1, 1), mask=mask)
    raw = raw_residuals(host, host.suite_controlnet(files.original), *inputs)
    for i, (g, r) in enumerate(zip(got, raw)):
        half = r.shape[-1] // 2
        if half == 0:
            continue  # a 1x1 residual straddles the edge
        tolerance = TOLERANCE * STRENGTH * r.abs().max().item()
        assert torch.count_nonzero(g[..., half:]) == 0, f"residual {i}: control outside the mask"
        assert (g[COND_ROWS, ..., :half] - STRENGTH * r[COND_ROWS, ..., :half]).abs().max().item() <= tolerance
        expected_uncond = uncond_multiplier * STRENGTH * r[UNCOND_ROWS, ..., :half]
        assert (g[UNCOND_ROWS, ..., :half] - expected_uncond).abs().max().item() <= tolerance


def sampled_stack(host, *entries):
    """ComfyUI's sampler on our stack of (control_net, strength, mode, options) entries."""
    stack = None
    for control_net, strength, mode, options in entries:
        (stack,) = host.node("CNS_ControlStackEntry").add(
            control_net, host.image, strength, 0.0, 1.0, mode, control_stack=stack, **options
        )
    return host.sample(*host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, stack))


def test_sampling_equals_a_both_branch_control_plus_a_cond_only_one(host, files):
    """Balanced at strength s with u: the cond rows get s, the uncond rows u·s. A stack gives the
    same sum with a balanced control at u·s and a conditional-branch-only one at (1 − u)·s whose
    block weights undo guess mode's soft weights (1 / 0.825^(12−i))."""
    s, u = STRENGTH, 0.35
    net = host.suite_controlnet(files.original)
    ours = sampled_stack(host, (net, s, "balanced", {"uncond_multiplier": u}))
    unsoft = ", ".join(str(SOFT_BASE ** -(RESIDUALS - 1 - i)) for i in range(RESIDUALS))
    composed = sampled_stack(
        host,
        (net, u * s, "balanced", {}),
        (net, (1 - u) * s, "controlnet_more_important", {"block_weights": unsoft}),
    )
    both_branches = sampled_stack(host, (net, s, "balanced", {}))
    effect = (ours - both_branches).abs().max().item()  # what u changes
    assert effect > MIN_EFFECT
    assert (ours - composed).abs().max().item() <= RELATIVE_TO_EFFECT * effect


def test_prompt_more_important_at_0_samples_exactly_as_controlnet_more_important(host, files):
    net = host.suite_controlnet(files.original)
    at_zero = sampled_stack(host, (net, STRENGTH, "prompt_more_important", {"uncond_multiplier": 0.0}))
    guess_mode = sampled_stack(host, (net, STRENGTH, "controlnet_more_important", {}))
    both_branches = sampled_stack(host, (net, STRENGTH, "prompt_more_important", {}))
    assert (at_zero - both_branches).abs().max().item() > MIN_EFFECT
    assert torch.equal(at_zero, guess_mode)


def test_1_is_the_control_without_the_option(host, files):
    net = host.suite_controlnet(files.original)
    assert torch.equal(
        sampled_stack(host, (net, STRENGTH, "balanced", {"uncond_multiplier": 1.0})),
        sampled_stack(host, (net, STRENGTH, "balanced", {})),
    )


def test_a_union_scales_its_uncond_row(host, union_sdxl):
    """Two fused conditions on one latent's rows: the uncond row is u times the one u = 1 gives,
    the cond row the same."""
    uncond_multiplier = 0.45
    x, sigma, cond = union_sdxl.step
    conditions = union_conditions(host, (union_sdxl.images[:1], DEPTH, 0.6), (union_sdxl.images[1:], CANNY, 1.3))

    def residuals(**options):
        positive, _ = host.node("CNS_ApplyControlNetUnion").apply(
            union_sdxl.positive, union_sdxl.negative, union_sdxl.control_net, conditions, STRENGTH, 0.0, 1.0,
            "balanced", **options,
        )
        control = prepared(host, positive[0][1]["control"], union_sdxl.model)
        with torch.no_grad():
            return flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))

    got, full = residuals(uncond_multiplier=uncond_multiplier), residuals()
    for i, (g, f) in enumerate(zip(got, full)):
        scale = f.abs().max().item()
        assert scale > 1e-3, f"residual {i} is trivially small"
        assert torch.equal(g[COND_ROWS], f[COND_ROWS]), f"residual {i}"
        assert (g[UNCOND_ROWS] - uncond_multiplier * f[UNCOND_ROWS]).abs().max().item() <= 1e-6 * scale, f"residual {i}"


def test_a_cond_only_mode_refuses_a_value_between_through_the_node(host, files):
    with pytest.raises(host.errors.ControlNetError) as error:
        control_on(host, host.suite_controlnet(files.original), "cfg_resolution_weighting", uncond_multiplier=0.5)
    assert str(error.value) == (
        "uncond_multiplier 0.5 has nothing to scale: control mode 'cfg_resolution_weighting' gives the "
        "unconditional branch no control. Set uncond_multiplier to 1, or choose balanced or prompt_more_important"
    )


@pytest.mark.parametrize("uncond_multiplier", [0.0, 0.5])
def test_under_tiled_diffusion_it_is_refused(host, files, uncond_multiplier):
    (image,) = canvas_images(25)
    x, sigma, cond = canvas_inputs(26)
    control = applied(host, host.suite_controlnet(files.original), image, "balanced", uncond_multiplier=uncond_multiplier)
    with pytest.raises(host.errors.ControlNetError) as error:
        tiled_diffusion_step(prepared(host, control), x, sigma, cond)
    assert str(error.value) == (
        f"this control has uncond_multiplier {uncond_multiplier}, and Tiled Diffusion batches the rows of several "
        "tiles together in an order that does not tell the conditional rows from the unconditional ones: set "
        "uncond_multiplier to 1 with Tiled Diffusion (Ultimate SD Upscale, which samples tile by tile, takes it)"
    )
