"""The control object ComfyUI calls at each step, checked residual by residual.

Expected residuals are the raw ControlNet's outputs on the same inputs times weights written
here from the sources: the original gradio guess mode `strength · 0.825^(12−i)`, the paper's
CFG resolution weighting `64 / h_i` with h_i read off each residual's actual size.
"""

import pytest
import torch

from .conftest import CONTEXT_DIM, LATENT_SIDE, TOKENS

SOFT_BASE = 0.825  # original gradio_*2image.py guess mode
PAPER_LATENT_SIDE = 64  # paper §3.4: 512 px image → 64 latent pixels
STRENGTH = 0.8
TOLERANCE = 1e-5  # of each residual's largest magnitude: batch-size-dependent float rounding
COND_OR_UNCOND = [1, 0]  # the batch: uncond chunk first, then cond (ComfyUI's order varies)
UNCOND_ROWS, COND_ROWS = slice(0, 1), slice(1, 2)


def expected_weights(mode, residuals):
    n = len(residuals)
    if mode == "balanced":
        return [STRENGTH] * n
    if mode in ("prompt_more_important", "controlnet_more_important"):
        return [STRENGTH * SOFT_BASE ** (n - 1 - i) for i in range(n)]
    sides_at_512 = [PAPER_LATENT_SIDE * r.shape[-1] / LATENT_SIDE for r in residuals]
    return [STRENGTH * PAPER_LATENT_SIDE / h for h in sides_at_512]


def step_inputs(host, seed=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, LATENT_SIDE, LATENT_SIDE, generator=gen) * 5
    sigma = torch.full((2,), 4.0)
    cond = {"c_crossattn": torch.randn(2, TOKENS, CONTEXT_DIM, generator=gen)}
    return x, sigma, cond


def control_on(
    host, control_net, mode="balanced", previous_conditioning=None, start=0.0, end=1.0, strength=STRENGTH,
    mask=None, block_weights="", model=None, uncond_multiplier=1.0,
):
    """The control the apply node puts on the positive conditioning, set up for sampling `model`
    (a ModelPatcher; default: the tiny SD1.5 model) as the sampler would."""
    positive, negative = previous_conditioning or (host.positive, host.negative)
    positive, _ = host.node("CNS_ApplyControlNet").apply(
        positive, negative, control_net, host.image, strength, start, end, mode, mask=mask, block_weights=block_weights,
        uncond_multiplier=uncond_multiplier,
    )
    return prepared(host, positive[0][1]["control"], model)


def prepared(host, control, model=None):
    """`control`, set up for sampling `model` (a ModelPatcher; default: the tiny SD1.5 model) as
    ComfyUI's sampler sets it up (pre_run)."""
    base = (model or host.model).model
    control.pre_run(base, lambda p: base.model_sampling.percent_to_sigma(p))
    return control


def builtin_control_on(host, control_net, strength=STRENGTH):
    """The control ComfyUI's built-in Apply ControlNet puts on the positive conditioning,
    prepared for sampling."""
    positive, _ = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        host.positive, host.negative, control_net, host.image, strength, 0.0, 1.0
    )
    return prepared(host, positive[0][1]["control"])


def flat(control_dict):
    """ComfyUI's {'output': input-order residuals, 'middle': [last]} back to one list."""
    return control_dict["output"] + control_dict["middle"]


def raw_residuals(host, control_net, x, sigma, cond, model=None):
    """The ControlNet's forward on these rows, unweighted, with `model`'s sampling (default: the
    tiny SD1.5 model) and the cond's y where it has one (SDXL)."""
    sampling = (model or host.model).model.model_sampling
    hint = host.image.movedim(-1, 1)  # already 8x the latent: no resize
    with torch.no_grad():
        return control_net.loaded.model(
            sampling.calculate_input(sigma, x), hint, sampling.timestep(sigma), cond["c_crossattn"], y=cond.get("y")
        )


def count_calls(model):
    calls = []
    original = model.forward

    def forward(x, *args, **kwargs):
        calls.append(x.shape[0])
        return original(x, *args, **kwargs)

    model.forward = forward
    return calls


@pytest.mark.parametrize(
    "mode", ["balanced", "prompt_more_important", "controlnet_more_important", "cfg_resolution_weighting"]
)
def test_mode_weights_and_branches(host, files, mode):
    control_net = host.suite_controlnet(files.original)
    control = control_on(host, control_net, mode)
    x, sigma, cond = step_inputs(host)
    calls = count_calls(control_net.loaded.model)
    try:
        with torch.no_grad():
            got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
    finally:
        del control_net.loaded.model.forward
        control.cleanup()
    raw = raw_residuals(host, control_net, x, sigma, cond)

    assert calls == [1 if is_cond_only(mode) else 2]  # cond-only modes run the conditional row only
    assert len(got) == 13
    assert_mode_weighted(got, raw, mode, TOLERANCE)


def is_cond_only(mode):
    return mode in ("controlnet_more_important", "cfg_resolution_weighting")


def assert_mode_weighted(got, raw, mode, tolerance):
    """`got` is `raw` times the mode's weights on the cond row (within `tolerance` of each
    residual's largest magnitude), and on the uncond row too, or exactly zero there in cond-only
    modes."""
    for i, (g, r, w) in enumerate(zip(got, raw, expected_weights(mode, raw))):
        scale = r.abs().max().item()
        assert scale > 1e-3, f"residual {i} is trivially small"
        assert (g[COND_ROWS] - w * r[COND_ROWS]).abs().max().item() <= tolerance * w * scale, f"residual {i}"
        if is_cond_only(mode):
            assert torch.count_nonzero(g[UNCOND_ROWS]) == 0, f"residual {i}: uncond row not zero"
        else:
            assert (g[UNCOND_ROWS] - w * r[UNCOND_ROWS]).abs().max().item() <= tolerance * w * scale, f"residual {i}"


def test_uncond_only_batch_in_cond_only_mode_runs_nothing(host, files):
    control_net = host.suite_controlnet(files.original)
    control = control_on(host, control_net, "controlnet_more_important")
    x, sigma, cond = step_inputs(host)
    calls = count_calls(control_net.loaded.model)
    try:
        assert control.get_control(x[:1], sigma[:1], {"c_crossattn": cond["c_crossattn"][:1]}, 1, {"cond_or_uncond": [1]}) is None
    finally:
        del control_net.loaded.model.forward
    assert calls == []


def test_outside_start_end_returns_the_previous_control_without_running(host, files):
    builtin = host.builtin_controlnet(files.second)
    previous = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        host.positive, host.negative, builtin, host.image, 0.5, 0.0, 1.0
    )
    control_net = host.suite_controlnet(files.original)
    alone = control_on(host, control_net, start=0.5, end=1.0)
    chained = control_on(host, control_net, start=0.5, end=1.0, previous_conditioning=previous)
    builtin_only = previous[0][0][1]["control"]

    base = host.model.model
    early_sigma = base.model_sampling.percent_to_sigma(0.2)  # before start_percent 0.5
    x, _, cond = step_inputs(host)
    sigma = torch.full((2,), early_sigma)
    calls = count_calls(control_net.loaded.model)
    encodes = []
    control_net.loaded.model.encode_hint = lambda hint: encodes.append(1)
    try:
        options = {"cond_or_uncond": [0, 1]}
        assert alone.get_control(x, sigma, cond, 2, options) is None  # nothing: exactly zero residuals
        got = chained.get_control(x, sigma, cond, 2, options)
        expected = builtin_only.get_control(x, sigma, cond, 2, options)
    finally:
        del control_net.loaded.model.forward, control_net.loaded.model.encode_hint
    assert calls == [] and encodes == []
    assert set(got) == set(expected)
    for key in expected:
        assert len(got[key]) == len(expected[key])
        for g, e in zip(got[key], expected[key]):
            assert torch.equal(g, e)


def test_stack_on_a_builtin_chain_adds_to_the_builtin_residuals(host, files):
    builtin = host.builtin_controlnet(files.second)
    previous = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        host.positive, host.negative, builtin, host.image, 0.5, 0.0, 1.0
    )
    control_net = host.suite_controlnet(files.original)
    (stack,) = host.node("CNS_ControlStackEntry").add(control_net, host.image, STRENGTH, 0.0, 1.0, "prompt_more_important")
    positive, negative = host.node("CNS_ApplyControlStack").apply(*previous, stack)
    assert positive[0][1]["control"] is negative[0][1]["control"]  # one object: the branches batch

    combined = positive[0][1]["control"]
    ours_alone = control_on(host, control_net, "prompt_more_important")
    builtin_alone = previous[0][0][1]["control"]
    prepared(host, combined)
    x, sigma, cond = step_inputs(host)
    options = {"cond_or_uncond": [0, 1]}
    with torch.no_grad():
        got = flat(combined.get_control(x, sigma, cond, 2, options))
        builtin_part = flat(builtin_alone.get_control(x, sigma, cond, 2, options))
        ours_part = flat(ours_alone.get_control(x, sigma, cond, 2, options))
    for i, (g, b, o) in enumerate(zip(got, builtin_part, ours_part)):
        assert b.abs().max() > 1e-3 and o.abs().max() > 1e-3
        assert torch.allclose(g, b + o, rtol=0, atol=1e-6 * (b.abs().max() + o.abs().max())), f"residual {i}"


def test_hint_batch_that_cannot_pair_with_the_latent_batch_is_refused(host, files):
    control_net = host.suite_controlnet(files.original)
    three_images = host.image.repeat(3, 1, 1, 1)
    positive, negative = host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, control_net, three_images, 1.0, 0.0, 1.0, "balanced"
    )
    with pytest.raises(host.errors.ControlNetError) as error:
        host.sample(positive, negative, batch=2)
    assert str(error.value) == (
        "the hint has 3 images and the latent batch has 2: they cannot be paired. "
        "Give 1 hint image, 2, or a number that divides 2"
    )


def test_two_hint_images_pair_with_two_latents(host, files):
    control_net = host.suite_controlnet(files.original)
    images = torch.stack([host.image[0], 1 - host.image[0]])
    control = control_on(host, control_net, "balanced")
    control.cond_hint_original = images.movedim(-1, 1)
    x, sigma, cond = step_inputs(host)
    x = torch.cat([x, x])  # 2 latents x (cond, uncond): rows [c0, c1, u0, u1]
    sigma = torch.full((4,), 4.0)
    cond = {"c_crossattn": torch.cat([cond["c_crossattn"]] * 2)}
    calls = count_calls(control_net.loaded.model)
    try:
        with torch.no_grad():
            got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))
    finally:
        del control_net.loaded.model.forward
    assert calls == [2]  # both chunks hold the same 2 latents: given once, with 4 contexts
    with torch.no_grad():
        model = control_net.loaded.model
        sampling = host.model.model.model_sampling
        raw = model(sampling.calculate_input(sigma, x), torch.cat([images, images]).movedim(-1, 1),
                    sampling.timestep(sigma), cond["c_crossattn"])
    for g, r in zip(got, raw):
        assert torch.allclose(g, STRENGTH * r, rtol=0, atol=TOLERANCE * STRENGTH * r.abs().max())


@pytest.mark.parametrize("one_latent", [False, True], ids=["two latents", "cond and uncond of one latent"])
def test_mask_of_the_same_aspect_ratio_is_resized_and_restricts_the_control(host, files, one_latent):
    control_net = host.suite_controlnet(files.original)
    mask = torch.ones(1, 2 * LATENT_SIDE * 8, 2 * LATENT_SIDE * 8)  # twice the image's size
    mask[..., mask.shape[-1] // 2 :] = 0.0  # control on the left half only
    control = control_on(host, control_net, "balanced", mask=mask)
    x, sigma, cond = step_inputs(host)
    if one_latent:  # the model then runs the rows before its first cross-attention once
        x = x[:1].repeat(2, 1, 1, 1)
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))
    raw = raw_residuals(host, control_net, x, sigma, cond)
    for i, (g, r) in enumerate(zip(got, raw)):
        half = r.shape[-1] // 2
        if half == 0:
            continue  # a 1x1 residual straddles the edge
        assert torch.count_nonzero(g[..., half:]) == 0, f"residual {i}: control outside the mask"
        assert torch.allclose(g[..., :half], STRENGTH * r[..., :half], rtol=0, atol=TOLERANCE * STRENGTH * r.abs().max())


def test_mask_of_another_aspect_ratio_is_refused_at_apply_time(host, files):
    control_net = host.suite_controlnet(files.original)
    with pytest.raises(host.errors.ControlNetError) as error:
        host.node("CNS_ApplyControlNet").apply(
            host.positive, host.negative, control_net, host.image, 1.0, 0.0, 1.0, "balanced", mask=torch.ones(1, 64, 32)
        )
    assert str(error.value) == (
        "the mask is 32×64 px and the image 64×64 px: their aspect ratios differ, so it is unclear how the mask "
        "lines up with the image. Resize or crop the mask to 64×64"
    )


def test_block_weights_of_the_wrong_length_are_refused_at_apply_time(host, files):
    control_net = host.suite_controlnet(files.original)
    with pytest.raises(host.errors.ControlNetError, match="has 10 numbers; this control has 13 residuals"):
        host.node("CNS_ApplyControlNet").apply(
            host.positive, host.negative, control_net, host.image, 1.0, 0.0, 1.0, "balanced",
            block_weights=",".join(["1"] * 10),
        )


def test_block_weights_multiply_the_residuals(host, files):
    control_net = host.suite_controlnet(files.original)
    user = [0.0, 0.5, 1.0, 1.5, 2.0, 0.0, 0.5, 1.0, 1.5, 2.0, 0.0, 0.5, 3.0]
    control = control_on(host, control_net, "balanced", block_weights=", ".join(str(u) for u in user))
    x, sigma, cond = step_inputs(host)
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))
    raw = raw_residuals(host, control_net, x, sigma, cond)
    for g, r, u in zip(got, raw, user):
        assert torch.allclose(g, STRENGTH * u * r, rtol=0, atol=TOLERANCE * STRENGTH * r.abs().max())


def test_memory_estimate_covers_residuals_and_hint_encoding(host, files):
    control_net = host.suite_controlnet(files.original)
    control = control_on(host, control_net)
    x, sigma, cond = step_inputs(host)
    raw = raw_residuals(host, control_net, x[:1], sigma[:1], {"c_crossattn": cond["c_crossattn"][:1]})
    with torch.no_grad():
        encoded = control_net.loaded.model.encode_hint(host.image.movedim(-1, 1))
    bytes_per_float = 4  # fp32 on CPU
    cfg_branches = 2
    expected = (cfg_branches * sum(r.numel() for r in raw) + encoded.numel()) * bytes_per_float
    assert control.inference_memory_requirements(torch.float32) == expected

    builtin = host.builtin_controlnet(files.second)
    previous = host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        host.positive, host.negative, builtin, host.image, 0.5, 0.0, 1.0
    )
    chained = control_on(host, control_net, previous_conditioning=previous)
    builtin_estimate = previous[0][0][1]["control"].inference_memory_requirements(torch.float32)
    assert chained.inference_memory_requirements(torch.float32) == expected + builtin_estimate
