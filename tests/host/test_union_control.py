"""ControlNet Union through our control object (SuiteControl around our UnionControlNet).

The reference is ComfyUI's own Union control object on the same weights: ComfyUI's Union model
(comfy.cldm.cldm.ControlNet with control types) holds the same modules under the same names as
ours, so its random weights load into our model strictly. ComfyUI cannot load a tiny Union file
(its diffusers-layout detection knows the full-size shapes only), and its Union branch is 320
channels wide, so the model is built directly at that width (test_foreign_control's).

With one control type and one hint image, ComfyUI's port and the reference (xinsir, diffusers)
compute the same thing: the sample token ComfyUI drops never reaches the condition token.
"""

import importlib

import pytest
import torch
from controlnet_core.union import UNION_CONTROL_TYPES

from .conftest import IMAGE_SIDE
from .conftest import CONTEXT_DIM, LATENT_SIDE, TOKENS
from .test_control_object import (
    COND_OR_UNCOND,
    COND_ROWS,
    STRENGTH,
    UNCOND_ROWS,
    control_on,
    expected_weights,
    flat,
    is_cond_only,
    prepared,
    step_inputs,
)
from .test_foreign_control import ACROSS_IMPLEMENTATIONS, comfy_union_controlnet
from .test_half_precision import HALF_DTYPES, TWO_ROUNDINGS, answer_as_on, relative_deviation
from .test_performance_paths import MODES
from .test_sampling import MIN_EFFECT

DEPTH = "depth"
CANNY = "canny/lineart/anime_lineart/mlsd"


@pytest.fixture(scope="module")
def union_pair(host):
    """(ComfyUI's Union control object, ours on the same weights)."""
    core = f"{host.pack.__name__}.controlnet_core"  # the pack's modules as ComfyUI imported them
    config_from_state_dict = importlib.import_module(f"{core}.config").config_from_state_dict
    LoadedControlNet = importlib.import_module(f"{core}.loader").LoadedControlNet
    union = importlib.import_module(f"{core}.union")
    UNION_MODULES, UnionControlNet, UnionSpec = union.UNION_MODULES, union.UnionControlNet, union.UnionSpec

    comfys = comfy_union_controlnet(host)
    weights = comfys.control_model.state_dict()
    shared = {k: tuple(v.shape) for k, v in weights.items() if not k.startswith(UNION_MODULES)}
    layers = sum(1 for k in weights if k.startswith("transformer_layes.") and k.endswith(".ln_1.weight"))
    types = weights["task_embedding"].shape[0]
    spec = UnionSpec(types, weights["task_embedding"].shape[1], layers, weights["control_add_embedding.linear_1.weight"].shape[1] // types)
    model = UnionControlNet(config_from_state_dict(shared, {"head_channels": 64}, "the test"), spec).eval()
    model.load_state_dict(weights, strict=True)
    ours = host.comfy_control.SuiteControl(LoadedControlNet(model, "diffusers-union", "tiny_union.safetensors"), torch.device("cpu"))
    return comfys, ours


def with_type(control_net, control_type):
    import comfy_extras.nodes_controlnet  # ComfyUI's extra nodes, not registered in the test host

    return comfy_extras.nodes_controlnet.SetUnionControlNetType().set_controlnet_type(control_net, control_type)[0]


def residuals(host, control_net, mode="balanced", strength=STRENGTH, image=None, inputs=None):
    """One step's residuals (flat) of `control_net` applied by our node with `image` (default:
    the host's), on `inputs` (default: step_inputs: one latent, uncond row then cond row)."""
    if image is not None:
        host.image, saved = image, host.image
    try:
        control = control_on(host, control_net, mode, strength=strength)
    finally:
        if image is not None:
            host.image = saved
    return one_step(control, inputs or step_inputs(host))


def one_step(control, step):
    """One step's residuals (flat) of a prepared `control` on `step` = (x, sigma, cond), then its cleanup."""
    x, sigma, cond = step
    with torch.no_grad():
        out = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
    control.cleanup()
    return out


def assert_close(got, expected, what):
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        scale = e.abs().max().item()
        assert scale > 1e-3, f"{what} residual {i}: no effect to compare"
        assert (g - e).abs().max().item() <= ACROSS_IMPLEMENTATIONS * scale, f"{what} residual {i}"


@pytest.mark.parametrize("control_type", [DEPTH, CANNY, "auto"])
def test_balanced_equals_comfyuis_union_object(host, union_pair, control_type):
    comfys, ours = union_pair
    got = residuals(host, with_type(ours, control_type), strength=1.0)
    assert_close(got, residuals(host, with_type(comfys, control_type), strength=1.0), control_type)
    assert type(ours).__name__ == "SuiteControl"


def test_the_control_type_changes_the_residuals(host, union_pair):
    _, ours = union_pair
    depth, canny = residuals(host, with_type(ours, DEPTH)), residuals(host, with_type(ours, CANNY))
    for i, (d, c) in enumerate(zip(depth, canny)):
        assert (d - c).abs().max().item() > 1e-2 * d.abs().max().item(), f"residual {i}"


@pytest.mark.parametrize("mode", MODES)
def test_modes_weight_the_residuals_and_pick_the_rows(host, union_pair, mode):
    comfys, ours = union_pair
    got = residuals(host, with_type(ours, DEPTH), mode)
    assert_weighted_by_mode(got, residuals(host, with_type(comfys, DEPTH), strength=1.0), mode)


def assert_weighted_by_mode(got, reference, mode):
    """`got` is `reference` (strength 1) weighted as `mode` weights it, on the rows the mode runs;
    cond-only modes leave the uncond rows without control."""
    weights = expected_weights(mode, got)
    rows = COND_ROWS if is_cond_only(mode) else slice(None)
    assert_close([g[rows] for g in got], [w * r[rows] for w, r in zip(weights, reference)], mode)
    if is_cond_only(mode):
        assert all(torch.count_nonzero(g[UNCOND_ROWS]) == 0 for g in got)


def test_each_hint_image_is_fused_on_its_own_as_in_comfyui(host, union_pair):
    """Two different hint images for two latents: each latent's control is what ComfyUI gives it
    (the reference would mix the two images' condition tokens)."""
    comfys, ours = union_pair
    gen = torch.Generator().manual_seed(21)
    images = torch.rand(2, IMAGE_SIDE, IMAGE_SIDE, 3, generator=gen)
    latents = torch.randn(2, 4, LATENT_SIDE, LATENT_SIDE, generator=gen) * 5
    inputs = (latents.repeat(2, 1, 1, 1), torch.full((4,), 4.0), {"c_crossattn": torch.randn(4, TOKENS, CONTEXT_DIM, generator=gen)})
    got = residuals(host, with_type(ours, DEPTH), strength=1.0, image=images, inputs=inputs)
    assert_close(got, residuals(host, with_type(comfys, DEPTH), strength=1.0, image=images, inputs=inputs), "two images")


def test_a_type_the_model_lacks_is_refused_when_applied(host, union_pair):
    """The model is the ProMax-sized one, told it has the Union's 6 types for this test."""
    _, ours = union_pair
    promax = ours.model.union
    ours.model.union = type(promax)(**{**promax.__dict__, "num_control_types": 6})
    try:
        with pytest.raises(host.errors.ControlNetError) as error:
            control_on(host, with_type(ours, "tile"), "balanced")
    finally:
        ours.model.union = promax
    assert str(error.value) == (
        "control type tile (6) is out of range: this ControlNet Union knows 6 types. Tile and repaint need the ProMax model (8 types)."
    )


def test_a_control_type_on_a_plain_controlnet_is_refused(host, files):
    with pytest.raises(host.errors.ControlNetError) as error:
        control_on(host, with_type(host.suite_controlnet(files.original), DEPTH), "balanced")
    assert str(error.value) == (
        f"Set Union ControlNet Type picks a control type for ControlNet Union files; '{files.original}' is a plain "
        "ControlNet, which has none: remove that node"
    )


# --- a Union file through our loader, on a tiny SDXL model (conftest's union_sdxl) ---------------

def reference_forward(union_sdxl, conditions, scales=None):
    """The core model's reference forward (xinsir's computation, sample token included) on the
    step's rows, for (ComfyUI IMAGE, control type name) conditions at the latent's size x8."""
    x, sigma, cond = union_sdxl.step
    sampling = union_sdxl.model.model.model_sampling
    with torch.no_grad():
        return union_sdxl.control_net.loaded.model(
            sampling.calculate_input(sigma, x), [(image.movedim(-1, 1), UNION_CONTROL_TYPES[name]) for image, name in conditions],
            sampling.timestep(sigma), cond["c_crossattn"], y=cond["y"], scales=scales,
        )


def union_conditions(host, *conditions):
    """(image, control type, weight) triples chained through Union Condition nodes."""
    chained = None
    for image, control_type, weight in conditions:
        (chained,) = host.node("CNS_UnionCondition").add(image, control_type, weight, union_conditions=chained)
    return chained


def apply_union(host, union_sdxl, conditions, mode="balanced", strength=1.0, control_net=None, **options):
    """Our Apply ControlNet Union node on the SDXL conditioning: (positive, negative)."""
    return host.node("CNS_ApplyControlNetUnion").apply(
        union_sdxl.positive, union_sdxl.negative, control_net or union_sdxl.control_net, conditions, strength, 0.0, 1.0,
        mode, **options,
    )


def test_a_union_file_through_our_loader_gives_the_reference_forward(host, union_sdxl):
    """One type set with ComfyUI's Set Union ControlNet Type, one hint image: the control object
    is ours, and one step's residuals are the core model's reference forward."""
    control_net = union_sdxl.control_net
    assert (type(control_net).__name__, control_net.loaded.layout, control_net.loaded.family) == ("SuiteControl", "diffusers-union", "SDXL")
    control = control_on(host, with_type(control_net, DEPTH), strength=1.0, model=union_sdxl.model)
    assert_close(one_step(control, union_sdxl.step), reference_forward(union_sdxl, [(host.image, DEPTH)]), "file")


@pytest.mark.parametrize("mode", MODES)
def test_two_conditions_fused_in_one_pass_give_the_reference_forward(host, union_sdxl, mode):
    """Apply ControlNet Union with a depth and a canny map, weighted 0.6 and 1.3 inside the
    fusion: one step is the reference forward with those conditions and scales (diffusers'
    multi-condition computation), weighted by the mode, on the rows the mode runs."""
    depth, canny = union_sdxl.images[:1], union_sdxl.images[1:]
    conditions = union_conditions(host, (depth, DEPTH, 0.6), (canny, CANNY, 1.3))
    positive, _ = apply_union(host, union_sdxl, conditions, mode, strength=STRENGTH)
    control = prepared(host, positive[0][1]["control"], union_sdxl.model)

    got = one_step(control, union_sdxl.step)

    assert_weighted_by_mode(got, reference_forward(union_sdxl, [(depth, DEPTH), (canny, CANNY)], scales=[0.6, 1.3]), mode)


def test_conditions_of_different_sizes_are_each_fitted_to_the_first(host, union_sdxl):
    """The conditions travel packed side by side in the control's hint (so tiling nodes crop them
    alike): a map of another size is resized to the first's size first. A map upscaled 2× by
    repeating pixels comes back exactly, so it fuses as the map itself does."""
    depth, canny = union_sdxl.images[:1], union_sdxl.images[1:]
    canny_twice = canny.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)

    def fused(canny_map):
        positive, _ = apply_union(host, union_sdxl, union_conditions(host, (depth, DEPTH, 0.6), (canny_map, CANNY, 1.3)))
        return one_step(prepared(host, positive[0][1]["control"], union_sdxl.model), union_sdxl.step)

    for i, (got, expected) in enumerate(zip(fused(canny_twice), fused(canny), strict=True)):
        assert torch.equal(got, expected), f"residual {i}"


def test_one_condition_is_set_union_type_with_its_weight_on_the_strength(host, union_sdxl):
    """A single condition's weight scales the residuals (diffusers' rule): Apply ControlNet Union
    with (depth, weight 0.5) at strength 0.8 runs what Set Union ControlNet Type + Apply
    ControlNet at strength 0.4 runs."""
    conditions = union_conditions(host, (host.image, DEPTH, 0.5))
    positive, _ = apply_union(host, union_sdxl, conditions, strength=0.8)
    got = one_step(prepared(host, positive[0][1]["control"], union_sdxl.model), union_sdxl.step)

    typed = with_type(union_sdxl.control_net, DEPTH)
    expected = one_step(control_on(host, typed, strength=0.8 * 0.5, model=union_sdxl.model), union_sdxl.step)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(g, e), f"residual {i}"


def test_one_condition_of_weight_zero_adds_no_control(host, union_sdxl):
    """Its weight multiplies the strength, so nothing is applied, as at strength 0; with a second
    condition a weight of 0 only acts inside the fusion, and the control is applied."""
    zero = union_conditions(host, (host.image, DEPTH, 0.0))
    positive, negative = apply_union(host, union_sdxl, zero, strength=0.8)
    assert (positive, negative) == (union_sdxl.positive, union_sdxl.negative)
    assert "control" not in positive[0][1]
    (stack,) = host.node("CNS_UnionStackEntry").add(union_sdxl.control_net, zero, 0.8, 0.0, 1.0, "balanced")
    assert stack == ()
    with_second = union_conditions(host, (host.image, DEPTH, 0.0), (union_sdxl.images[1:], CANNY, 1.0))
    assert "control" in apply_union(host, union_sdxl, with_second, strength=0.8)[0][0][1]


def test_two_conditions_sample_with_the_fusion_run_once_per_run(host, union_sdxl, monkeypatch):
    """Through ComfyUI's sampler: the conditions change the sampled latent, are fused once per
    sampling run (not at each step), and a second run gives the same latent (the cache is
    dropped in cleanup)."""
    model = union_sdxl.control_net.loaded.model
    conditions = union_conditions(host, (union_sdxl.images[:1], DEPTH, 1.0), (union_sdxl.images[1:], CANNY, 1.0))
    plain = host.sample(union_sdxl.positive, union_sdxl.negative, model=union_sdxl.model)
    fused, encode_conditions = [], model.encode_conditions
    monkeypatch.setattr(model, "encode_conditions", lambda *args: fused.append(1) or encode_conditions(*args))
    first = host.sample(*apply_union(host, union_sdxl, conditions), model=union_sdxl.model, steps=3)
    second = host.sample(*apply_union(host, union_sdxl, conditions), model=union_sdxl.model, steps=3)
    assert (first - plain).abs().max().item() > MIN_EFFECT
    assert torch.equal(first, second)
    assert len(fused) == 2  # one per run, 3 steps each


def test_a_union_stack_entry_applies_what_apply_controlnet_union_applies(host, union_sdxl):
    """Two Union Stack Entries (a masked two-condition entry in ControlNet-more-important mode,
    then a one-condition entry with block weights), applied by Apply Control Stack, give one
    step bit-equal to two Apply ControlNet Union nodes chained with the same options."""
    depth, canny = union_sdxl.images[:1], union_sdxl.images[1:]
    both = union_conditions(host, (depth, DEPTH, 0.6), (canny, CANNY, 1.3))
    one = union_conditions(host, (canny, CANNY, 0.5))
    mask = torch.zeros(IMAGE_SIDE, IMAGE_SIDE)
    mask[:, : IMAGE_SIDE // 2] = 1.0
    entries = [
        dict(conditions=both, strength=0.7, mode="controlnet_more_important", options={"mask": mask}),
        dict(conditions=one, strength=1.2, mode="balanced", options={"block_weights": "lowest resolution only"}),
    ]
    stack, positive, negative = None, union_sdxl.positive, union_sdxl.negative
    for entry in entries:
        (stack,) = host.node("CNS_UnionStackEntry").add(
            union_sdxl.control_net, entry["conditions"], entry["strength"], 0.0, 1.0, entry["mode"], control_stack=stack,
            **entry["options"],
        )
        positive, negative = host.node("CNS_ApplyControlNetUnion").apply(
            positive, negative, union_sdxl.control_net, entry["conditions"], entry["strength"], 0.0, 1.0, entry["mode"],
            **entry["options"],
        )
    stacked, _ = host.node("CNS_ApplyControlStack").apply(union_sdxl.positive, union_sdxl.negative, stack)

    got = one_step(prepared(host, stacked[0][1]["control"], union_sdxl.model), union_sdxl.step)
    expected = one_step(prepared(host, positive[0][1]["control"], union_sdxl.model), union_sdxl.step)
    single = one_step(prepared(host, apply_union(host, union_sdxl, one, strength=1.2)[0][0][1]["control"], union_sdxl.model), union_sdxl.step)
    for i, (g, e, s) in enumerate(zip(got, expected, single, strict=True)):
        assert torch.equal(g, e), f"residual {i}"
        assert not torch.equal(g, s), f"residual {i}: the first entry added nothing"


@pytest.mark.parametrize("dtype_name", sorted(HALF_DTYPES))
def test_fused_conditions_in_half_precision_round_as_much_as_one_condition(host, union_sdxl, dtype_name, monkeypatch):
    """As on a GPU, the Union file loads and computes in fp16 or bf16, fusion transformer
    included. Two fused conditions in that dtype lie within twice the rounding of one condition
    (Set Union ControlNet Type + Apply ControlNet: the same network with one condition token
    fewer) from their fp32 result: test_half_precision's bound, two roundings of one size."""
    dtype = HALF_DTYPES[dtype_name]
    depth, canny = union_sdxl.images[:1], union_sdxl.images[1:]

    def fused():
        control_net = host.suite_controlnet("tiny_union.safetensors")
        positive, _ = apply_union(host, union_sdxl, union_conditions(host, (depth, DEPTH, 0.6), (canny, CANNY, 1.3)),
                                  control_net=control_net)
        return one_step(prepared(host, positive[0][1]["control"], union_sdxl.model), union_sdxl.step)

    def single():
        control_net = with_type(host.suite_controlnet("tiny_union.safetensors"), DEPTH)
        return one_step(control_on(host, control_net, strength=1.0, model=union_sdxl.model), union_sdxl.step)

    answer_as_on(host, monkeypatch, dtype)
    half, single_half = fused(), single()
    answer_as_on(host, monkeypatch, torch.float32)
    full, single_full = fused(), single()

    assert {r.dtype for r in half + single_half} == {dtype} and {r.dtype for r in full} == {torch.float32}
    rounding = [relative_deviation(h, f) for h, f in zip(single_half, single_full, strict=True)]
    assert min(rounding) > 0  # the dtype really rounds: the bound below is not vacuous
    for i, (h, f, r) in enumerate(zip(half, full, rounding, strict=True)):
        assert relative_deviation(h, f) <= TWO_ROUNDINGS * r, f"residual {i}"


def refusal(host, call):
    with pytest.raises(host.errors.ControlNetError) as error:
        call()
    return str(error.value)


def stack_union(host, union_sdxl, conditions, control_net=None):
    """Our Union Stack Entry on a new stack, at strength 1 in balanced mode: the stack."""
    return host.node("CNS_UnionStackEntry").add(control_net or union_sdxl.control_net, conditions, 1.0, 0.0, 1.0, "balanced")


@pytest.mark.parametrize("node", [apply_union, stack_union], ids=["apply", "stack entry"])
def test_union_nodes_refuse_what_they_cannot_run(host, union_sdxl, files, node):
    image = host.image
    assert refusal(host, lambda: union_conditions(host, (image, DEPTH, 1.0), (image, DEPTH, 0.5))) == (
        f"the Union conditions already have a {DEPTH} image: a ControlNet Union takes one image per control type. "
        "Remove one of the two, or give it another type"
    )
    conditions = union_conditions(host, (image, DEPTH, 1.0))
    plain = host.suite_controlnet(files.original)
    assert refusal(host, lambda: node(host, union_sdxl, conditions, control_net=plain)) == (
        f"Union conditions need a ControlNet Union/ProMax file; '{files.original}' is a plain ControlNet: give it an "
        "image with Apply ControlNet or Control Stack Entry instead"
    )
    builtin = host.builtin_controlnet(files.original)
    assert refusal(host, lambda: node(host, union_sdxl, conditions, control_net=builtin)) == (
        "Union conditions run on ControlNet Union files loaded with ControlNet Suite's Load ControlNet; this "
        "ControlNet comes from another loader: load the file with ControlNet Suite's Load ControlNet"
    )
    typed = with_type(union_sdxl.control_net, CANNY)
    assert refusal(host, lambda: node(host, union_sdxl, conditions, control_net=typed)) == (
        "the control types come from the Union Condition nodes here; remove the Set Union ControlNet Type node "
        "after 'tiny_union.safetensors'"
    )
    three = torch.rand(3, IMAGE_SIDE, IMAGE_SIDE, 3)
    uneven = union_conditions(host, (union_sdxl.images, DEPTH, 1.0), (three, CANNY, 1.0))
    assert refusal(host, lambda: node(host, union_sdxl, uneven)) == (
        "the Union conditions' images come in batches of 2, 3: give each condition 1 image or 3"
    )


def test_conditions_whose_largest_batch_cannot_pair_with_the_latents_are_refused(host, union_sdxl):
    """The first condition has 1 image, the second 2: the hint batch is 2, which 3 latents
    cannot take (checked on the largest batch, not the first condition's)."""
    conditions = union_conditions(host, (host.image, DEPTH, 1.0), (union_sdxl.images, CANNY, 1.0))
    positive, negative = apply_union(host, union_sdxl, conditions)
    assert refusal(host, lambda: host.sample(positive, negative, batch=3, model=union_sdxl.model)) == (
        "the hint has 2 images and the latent batch has 3: they cannot be paired. "
        "Give 1 hint image, 3, or a number that divides 3"
    )
