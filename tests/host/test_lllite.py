"""ControlNet-LLLite through our loader and apply nodes, on test_sdxl's tiny SDXL U-Net.

The reference is kohya's own mechanism (sd-scripts networks/control_net_lllite.py): each module
wraps a projection Linear of the U-Net, whose input x becomes x + multiplier · module(x). Here
that wrapping is a forward pre-hook on ComfyUI's to_q / to_k / to_v, found through the module
path kohya's names are made of, and the module's math is tests/core/lllite_reference.py's, on the
file's tensors. Neither our site parsing nor ComfyUI's attention patches take part in it.
"""

from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.core import lllite_reference as kohya

from .conftest import IMAGE_SIDE, LATENT_SIDE, TOKENS
from .test_control_object import prepared
from .test_sampling import MIN_EFFECT, RELATIVE_TO_EFFECT, apply_ours
from .test_sdxl import ADM_CHANNELS, CONTEXT_DIM, POOLED_DIM, SDXL_UNET_CONFIG

# kohya's module names: "lllite_unet_" + the projection's module path, dots as underscores.
KOHYA_PREFIX = "lllite_unet_"
PROJECTIONS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q")  # what published files hold
SOFT_BASE = 0.825
SDXL_RESIDUALS = 10  # input blocks 0..8, then the middle block
COND_OR_UNCOND = [1, 0]  # the step's batch: uncond row, then cond row
UNCOND_ROW, COND_ROW = 0, 1


def lllite_weights(unet, seed: int, zero_up: bool = False, in_dim: int | None = None) -> dict:
    """A module on every projection published files patch, shaped for `unet`."""
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for path, module in unet.named_modules():
        parts = path.split(".")
        block = parts[0]
        if not path.endswith(PROJECTIONS) or block not in ("input_blocks", "middle_block", "output_blocks"):
            continue
        index = 0 if block == "middle_block" else int(parts[1])
        name = KOHYA_PREFIX + path.replace(".", "_")
        depth = kohya.kohya_depth(block, index)
        weights.update(kohya.module_weights(name, in_dim or module.in_features, depth, gen, zero_up=zero_up))
    return weights


@pytest.fixture(scope="module")
def lllite(host) -> SimpleNamespace:
    model = host.tiny_model(family="SDXL", unet_config=SDXL_UNET_CONFIG, seed=2)
    unet = model.model.diffusion_model
    weights = lllite_weights(unet, seed=5)
    gen = torch.Generator().manual_seed(8)

    def conditioning():
        context = torch.randn(1, TOKENS, CONTEXT_DIM, generator=gen)
        return [[context, {"pooled_output": torch.randn(1, POOLED_DIM, generator=gen)}]]

    return SimpleNamespace(
        model=model,
        unet=unet,
        weights=weights,
        file=host.write("kohya_controllllite_xl_tiny.safetensors", weights),
        zero=host.write("kohya_controllllite_xl_zero.safetensors", lllite_weights(unet, seed=5, zero_up=True)),
        positive=conditioning(),
        negative=conditioning(),
    )


def kohya_hint_at(image: torch.Tensor, depth: int, latent: tuple[int, int], host) -> torch.Tensor:
    """The condition image for a module of `depth` in [-1, 1]. Kohya feeds the image at the
    generated size; for latent sides that do not divide by the depth's factor, Advanced-ControlNet
    rounds the side up to that factor first (its latent_dims_div2 / div4), which this follows."""
    factor = 2 ** (depth - 1)
    height, width = ((side + factor - 1) // factor * factor * 8 for side in latent)
    hint = image.movedim(-1, 1)
    if tuple(hint.shape[-2:]) != (height, width):
        hint = host.comfy.utils.common_upscale(hint, width, height, "nearest-exact", "center")
    return hint * 2 - 1


@contextmanager
def kohya_wrapped(host, unet, weights, image, latent, multiplier=1.0, row_factors=None, token_masks=None):
    """kohya's LLLite on `unet` for the duration: every projection with a module in `weights`
    gets x + multiplier · module(x) as its input. `row_factors` (per batch row) and
    `token_masks` ({depth: 1×T×1}) scale the correction further."""
    handles = []
    for path, module in unet.named_modules():
        name = KOHYA_PREFIX + path.replace(".", "_")
        if f"{name}.down.0.weight" not in weights:
            continue
        depth = kohya.depth_of(weights, name)
        emb = kohya.cond_emb(weights, name, kohya_hint_at(image, depth, latent, host))

        def wrap(_module, args, name=name, emb=emb, depth=depth):
            x = args[0]
            delta = kohya.correction(weights, name, x, emb.expand(x.shape[0], -1, -1)) * multiplier
            if row_factors is not None:
                delta = delta * row_factors.view(-1, 1, 1)
            if token_masks is not None:
                delta = delta * token_masks[depth]
            return (x + delta, *args[1:])

        handles.append(module.register_forward_pre_hook(wrap))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def sample(host, lllite, positive, negative, latent=(LATENT_SIDE, LATENT_SIDE)):
    noise = host.comfy.sample.prepare_noise(torch.zeros(1, 4, *latent), 0)
    return host.comfy.sample.sample(
        lllite.model, noise, 3, 5.0, "euler", "normal", positive, negative, torch.zeros(1, 4, *latent), seed=0
    )


def test_zero_initialised_modules_leave_the_sampled_latent_unchanged(host, lllite):
    plain = sample(host, lllite, lllite.positive, lllite.negative)
    control_net = host.suite_controlnet(lllite.zero)
    assert torch.equal(sample(host, lllite, *apply_ours(host, lllite.positive, lllite.negative, control_net)), plain)


@pytest.mark.parametrize("latent", [(LATENT_SIDE, LATENT_SIDE), (9, 7)])
def test_balanced_equals_kohyas_wrapped_projections(host, lllite, latent):
    """Sampled end to end; (9, 7): odd latent sides, where the deeper blocks round up."""
    strength = 0.7
    image = torch.rand(1, latent[0] * 8, latent[1] * 8, 3, generator=torch.Generator().manual_seed(3))
    control_net = host.suite_controlnet(lllite.file)
    assert (control_net.loaded.layout, control_net.loaded.family) == ("controlnet-lllite", "SDXL")
    ours = sample(host, lllite, *apply_ours(host, lllite.positive, lllite.negative, control_net, strength, image=image), latent)
    with kohya_wrapped(host, lllite.unet, lllite.weights, image, latent, multiplier=strength):
        reference = sample(host, lllite, lllite.positive, lllite.negative, latent)
    effect = (reference - sample(host, lllite, lllite.positive, lllite.negative, latent)).abs().max().item()
    assert effect > MIN_EFFECT
    assert (ours - reference).abs().max().item() <= RELATIVE_TO_EFFECT * effect


def step_inputs(latent_side=LATENT_SIDE, seed=4):
    """One step's inputs: an uncond row and a cond row (COND_OR_UNCOND), a sigma, text and y."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, latent_side, latent_side, generator=gen) * 5
    cond = {"c_crossattn": torch.randn(2, TOKENS, CONTEXT_DIM, generator=gen), "y": torch.randn(2, ADM_CHANNELS, generator=gen)}
    return x, torch.full((2,), 4.0), cond


def unet_output(lllite, x, sigma, cond, control=None):
    """The U-Net's output for one step, with `control`'s patches (and residuals) when given."""
    options, control_dict = {"cond_or_uncond": COND_OR_UNCOND}, None
    with torch.no_grad():
        if control is not None:
            control_dict = control.get_control(x, sigma, cond, 2, options)
        return lllite.model.model.apply_model(
            x, sigma, c_crossattn=cond["c_crossattn"], y=cond["y"], control=control_dict, transformer_options=options
        )


def one_step(host, lllite, control, row_factors=None, token_masks=None, multiplier=1.0):
    """One U-Net call on an uncond row and a cond row: with `control`'s patches, and with kohya's
    wrapping (row factors and masks as given) in their place."""
    x, sigma, cond = step_inputs()
    got = unet_output(lllite, x, sigma, cond, control)
    with kohya_wrapped(host, lllite.unet, lllite.weights, host.image, (LATENT_SIDE, LATENT_SIDE), multiplier, row_factors, token_masks):
        reference = unet_output(lllite, x, sigma, cond)
    return SimpleNamespace(got=got, reference=reference, plain=unet_output(lllite, x, sigma, cond))


def assert_matches(step):
    effect = (step.reference - step.plain).abs().max().item()
    assert effect > MIN_EFFECT
    assert (step.got - step.reference).abs().max().item() <= RELATIVE_TO_EFFECT * effect


def configured(
    host, lllite, mode="balanced", strength=1.0, start=0.0, end=1.0, mask=None, block_weights="", image=None,
    strength_schedule=None, uncond_multiplier=1.0,
):
    control_net = host.suite_controlnet(lllite.file)
    positive, _ = host.node("CNS_ApplyControlNet").apply(
        lllite.positive, lllite.negative, control_net, host.image if image is None else image, strength, start, end,
        mode, mask=mask, block_weights=block_weights, strength_schedule=strength_schedule,
        uncond_multiplier=uncond_multiplier,
    )
    return prepared(host, positive[0][1]["control"], lllite.model)


def test_cond_only_mode_corrects_the_cond_row_with_the_soft_weight_of_its_depth(host, lllite):
    """controlnet_more_important: the uncond row is exactly the U-Net without control; on the cond
    row a module in input block N takes the soft weight of SDXL ControlNet residual N, one in
    output block j that of the skip it takes (8 − j), the middle block's 1. Here every module of
    a block shares a depth, so the reference wraps per block."""
    strength = 0.9
    control = configured(host, lllite, "controlnet_more_important", strength)
    weights_by_name = {}
    for name in {k.split(".", 1)[0] for k in lllite.weights}:
        place = name[len(KOHYA_PREFIX):].split("_1_transformer_blocks_")[0]
        if place == "middle_block":
            residual = SDXL_RESIDUALS - 1
        elif place.startswith("input_blocks_"):
            residual = int(place.rsplit("_", 1)[1])
        else:
            residual = SDXL_RESIDUALS - 2 - int(place.rsplit("_", 1)[1])
        weights_by_name[name] = strength * SOFT_BASE ** (SDXL_RESIDUALS - 1 - residual)
    # kohya's multiplier is one number per module: scale each module's up layer instead
    scaled = {k: v * weights_by_name[k.split(".", 1)[0]] if ".up.0." in k else v for k, v in lllite.weights.items()}
    step = one_step(host, SimpleNamespace(**{**vars(lllite), "weights": scaled}), control, row_factors=torch.tensor([0.0, 1.0]))
    assert torch.equal(step.got[UNCOND_ROW], step.plain[UNCOND_ROW])
    assert_matches(step)


def test_mask_scales_each_blocks_correction_at_its_token_grid(host, lllite):
    """A mask that is 1 on the image's left half and 0.25 on its right half: every token grid
    (8, 4 and 2 wide here) splits it on a token boundary, so each token is one value or the other."""
    mask = torch.ones(1, IMAGE_SIDE, IMAGE_SIDE)
    mask[:, :, IMAGE_SIDE // 2:] = 0.25
    control = configured(host, lllite, mask=mask)

    def token_mask(depth):
        side = LATENT_SIDE // 2 ** (depth - 1)
        grid = torch.ones(side, side)
        grid[:, side // 2:] = 0.25
        return grid.reshape(1, -1, 1)

    step = one_step(host, lllite, control, token_masks={depth: token_mask(depth) for depth in (1, 2, 3)})
    assert_matches(step)


def test_an_lllite_corrects_the_uncond_row_times_the_multiplier(host, lllite):
    """Against kohya's wrapped projections with a per-row factor (COND_OR_UNCOND: uncond row first)."""
    uncond_multiplier = 0.3
    control = configured(host, lllite, uncond_multiplier=uncond_multiplier)
    assert_matches(one_step(host, lllite, control, row_factors=torch.tensor([uncond_multiplier, 1.0])))


def test_block_weights_pick_modules_by_the_residual_at_their_depth(host, lllite):
    """Ten block weights, the middle block's last: "middle block only" keeps just the modules in
    the middle block; weight 1 on residual 4 keeps those in input block 4 and in output block 4,
    which takes input block 4's skip connection."""
    for block_weights, places in [
        ("middle block only", ("middle_block_",)),
        ("0,0,0,0,1,0,0,0,0,0", ("input_blocks_4_", "output_blocks_4_")),
    ]:
        control = configured(host, lllite, block_weights=block_weights)
        kept = {k: v for k, v in lllite.weights.items() if k[len(KOHYA_PREFIX):].startswith(places)}
        assert kept and len(kept) < len(lllite.weights)
        assert_matches(one_step(host, SimpleNamespace(**{**vars(lllite), "weights": kept}), control))


def test_outside_start_end_no_patch_is_put_in(host, lllite):
    control = configured(host, lllite, start=0.5, end=1.0)
    options = {"cond_or_uncond": COND_OR_UNCOND}
    x = torch.zeros(2, 4, LATENT_SIDE, LATENT_SIDE)
    early = torch.full((2,), 14.0)  # the first step's sigma: before start_percent 0.5
    assert control.get_control(x, early, {}, 2, options) is None
    assert "patches" not in options


def test_a_strength_schedule_weights_the_step_by_its_multiplier_at_the_steps_percent(host, lllite):
    """At the step's sigma (4.0), the schedule's multiplier is numpy's interp at the percent
    ComfyUI's discrete sampling gives that sigma: percent_to_sigma(p) interpolates the log-sigma
    table at timestep 999·(1 − p), so p = 1 − t / 999 with t read back off the table by interp."""
    percents, multipliers = [0.0, 0.2, 0.6, 1.0], [0.2, 1.6, 0.5, 0.0]
    (linear,) = host.node("CNS_StrengthSchedule").make(", ".join(f"{p}={m}" for p, m in zip(percents, multipliers)), "linear")
    log_sigmas = lllite.model.model.model_sampling.log_sigmas.numpy()  # increasing with the timestep
    percent = 1.0 - np.interp(np.log(4.0), log_sigmas, np.arange(len(log_sigmas))) / 999.0
    assert 0.2 < percent < 0.6  # between two keyframes
    strength = 0.7
    control = configured(host, lllite, strength=strength, strength_schedule=linear)
    assert_matches(one_step(host, lllite, control, multiplier=strength * np.interp(percent, percents, multipliers)))


def test_patches_are_added_without_touching_the_dicts_already_there(host, lllite):
    control = configured(host, lllite)
    shared_patch = object()
    shared = {"attn1_patch": [shared_patch], "middle_patch": []}
    options = {"cond_or_uncond": COND_OR_UNCOND, "patches": shared}
    x = torch.zeros(2, 4, LATENT_SIDE, LATENT_SIDE)
    control.get_control(x, torch.full((2,), 4.0), {}, 2, options)
    assert shared == {"attn1_patch": [shared_patch], "middle_patch": []}  # the shared dict and lists as they were
    assert options["patches"]["attn1_patch"][0] is shared_patch and len(options["patches"]["attn1_patch"]) == 2
    assert len(options["patches"]["attn2_patch"]) == 1


def test_on_top_of_a_controlnet_both_apply(host, lllite):
    """A ControlNet chain keeps its residuals under an LLLite applied after it: sampling both
    equals the ControlNet applied with kohya's wrapping in place of the LLLite. A control stack
    of the two gives the same latent as the two apply nodes."""
    from .test_sdxl import CHANNEL_MULT, TRANSFORMER_DEPTH

    cn_weights = host.controlnet_state_dict(
        seed=31, channel_mult=CHANNEL_MULT, transformer_depth=TRANSFORMER_DEPTH, context_dim=CONTEXT_DIM,
        use_linear_projection=True, adm_in_channels=ADM_CHANNELS,
    )
    controlnet = host.suite_controlnet(host.write("tiny_sdxl_for_lllite.safetensors", cn_weights))
    with_cn = apply_ours(host, lllite.positive, lllite.negative, controlnet)
    both = sample(host, lllite, *apply_ours(host, *with_cn, host.suite_controlnet(lllite.file)))
    with kohya_wrapped(host, lllite.unet, lllite.weights, host.image, (LATENT_SIDE, LATENT_SIDE)):
        reference = sample(host, lllite, *with_cn)
    effect = (reference - sample(host, lllite, *with_cn)).abs().max().item()
    assert effect > MIN_EFFECT
    assert (both - reference).abs().max().item() <= RELATIVE_TO_EFFECT * effect

    entry = host.node("CNS_ControlStackEntry")
    (stack,) = entry.add(controlnet, host.image, 1.0, 0.0, 1.0, "balanced")
    (stack,) = entry.add(host.suite_controlnet(lllite.file), host.image, 1.0, 0.0, 1.0, "balanced", control_stack=stack)
    stacked = host.node("CNS_ApplyControlStack").apply(lllite.positive, lllite.negative, stack)
    assert torch.equal(sample(host, lllite, *stacked), both)


def test_an_sd15_model_is_refused_before_sampling(host, lllite):
    positive, negative = apply_ours(host, host.positive, host.negative, host.suite_controlnet(lllite.file))
    with pytest.raises(host.errors.FamilyMismatchError) as error:
        host.sample(positive, negative)
    assert str(error.value) == "this ControlNet-LLLite is for SDXL, the model is SD1.x: pick a ControlNet-LLLite made for SD1.x"


def test_an_lllite_for_other_widths_is_refused_before_sampling(host, lllite):
    """Real SDXL widths (640 at input block 4) on the tiny SDXL U-Net (128)."""
    weights = lllite_weights(lllite.unet, seed=5, in_dim=640)
    control_net = host.suite_controlnet(host.write("kohya_controllllite_xl_wide.safetensors", weights))
    positive, negative = apply_ours(host, lllite.positive, lllite.negative, control_net)
    with pytest.raises(host.errors.FamilyMismatchError) as error:
        sample(host, lllite, positive, negative)
    assert str(error.value) == (
        "'kohya_controllllite_xl_wide.safetensors' corrects 640-wide features at input block 4, transformer block 0, "
        "attn1.to_q, where this model's are 128 wide: the ControlNet-LLLite was made for another model"
    )


def test_union_conditions_are_refused_by_name(host, lllite):
    condition = host.node("CNS_UnionCondition")
    (conditions,) = condition.add(host.image, "depth", 1.0)
    with pytest.raises(host.errors.ControlNetError) as error:
        host.node("CNS_ApplyControlNetUnion").apply(
            lllite.positive, lllite.negative, host.suite_controlnet(lllite.file), conditions, 1.0, 0.0, 1.0, "balanced"
        )
    assert str(error.value) == (
        "Union conditions need a ControlNet Union/ProMax file; 'kohya_controllllite_xl_tiny.safetensors' is a "
        "ControlNet-LLLite: give it an image with Apply ControlNet or Control Stack Entry instead"
    )


def test_ultimate_sd_upscale_tiles_get_their_crop_of_the_image(host, lllite):
    """Ultimate SD Upscale copies the control and crops `cond_hint_original` per tile
    (tests/host/test_tiling_nodes.py): each tile's step equals the LLLite configured with that
    tile's crop, and differs from the whole image squeezed onto the tile."""
    from .test_tiling_nodes import CANVAS, PIXELS, TILES, pixel_crop, ultimate_sd_upscale_tile

    image = torch.rand(1, CANVAS * PIXELS, CANVAS * PIXELS, 3, generator=torch.Generator().manual_seed(12))
    whole = configured(host, lllite, image=image)
    x, sigma, cond = step_inputs()
    squeezed = unet_output(lllite, x, sigma, cond, whole)
    for top, left in TILES:
        tile = prepared(host, ultimate_sd_upscale_tile(whole, top, left), lllite.model)
        direct = configured(host, lllite, image=pixel_crop(image, top, left))
        got, expected = unet_output(lllite, x, sigma, cond, tile), unet_output(lllite, x, sigma, cond, direct)
        assert torch.allclose(got, expected, rtol=0, atol=1e-6 * expected.abs().max().item())
        assert (got - squeezed).abs().max().item() > MIN_EFFECT


def test_memory_estimate_counts_every_modules_condition_tokens(host, lllite):
    """cond_emb_dim (twice conditioning1.0's width) × the module's token grid, per module, in fp32."""
    control = configured(host, lllite)
    elements = 0
    for key, weight in lllite.weights.items():
        if key.endswith(".conditioning1.0.weight"):
            name = key.split(".", 1)[0]
            depth = kohya.depth_of(lllite.weights, name)
            elements += 2 * weight.shape[0] * (LATENT_SIDE // 2 ** (depth - 1)) ** 2
    assert control.inference_memory_requirements(torch.float32) == elements * 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_and_computes_in_the_gpus_dtype(host, lllite, monkeypatch, dtype):
    """With model management answering as on a GPU, the LLLite loads in that dtype and, on a U-Net
    computing in it, gives kohya's wrapping run in the same dtype to within one rounding step of
    the output's largest value (the same operations in the same order)."""
    from .test_half_precision import answer_as_on

    answer_as_on(host, monkeypatch, dtype)
    control_net = host.suite_controlnet(lllite.file)
    assert control_net.model.dtype == dtype
    half = SimpleNamespace(**{**vars(lllite), "model": host.tiny_model(dtype, family="SDXL", unet_config=SDXL_UNET_CONFIG, seed=2)})
    half.unet, half.weights = half.model.model.diffusion_model, {k: v.to(dtype) for k, v in lllite.weights.items()}
    positive, _ = host.node("CNS_ApplyControlNet").apply(
        lllite.positive, lllite.negative, control_net, host.image, 1.0, 0.0, 1.0, "balanced"
    )
    control = prepared(host, positive[0][1]["control"], half.model)
    x, sigma, cond = step_inputs()
    got = unet_output(half, x, sigma, cond, control)
    with kohya_wrapped(host, half.unet, half.weights, host.image.to(dtype), (LATENT_SIDE, LATENT_SIDE)):
        reference = unet_output(half, x, sigma, cond)
    assert got.dtype == reference.dtype
    effect = (reference.float() - unet_output(half, x, sigma, cond).float()).abs().max().item()
    assert effect > MIN_EFFECT
    assert (got.float() - reference.float()).abs().max().item() <= torch.finfo(dtype).eps * reference.float().abs().max().item()


def test_a_union_control_type_on_an_lllite_is_refused_when_applied(host, lllite):
    from .test_union_control import DEPTH, with_type

    control_net = with_type(host.suite_controlnet(lllite.file), DEPTH)
    with pytest.raises(host.errors.ControlNetError) as error:
        apply_ours(host, lllite.positive, lllite.negative, control_net)
    assert str(error.value) == (
        "Set Union ControlNet Type picks a control type for ControlNet Union files; "
        "'kohya_controllllite_xl_tiny.safetensors' is a ControlNet-LLLite, which has none: remove that node"
    )


def test_latent_strengths_of_one_and_zero_correct_the_first_latent_only(host, lllite):
    """A batch of two: the first latent sampled as with the LLLite, bit for bit, the second as without."""
    (first_only_strengths,) = host.node("CNS_LatentStrengths").make("1=0", 1.0)
    control_net = host.suite_controlnet(lllite.file)

    def sampled(positive, negative):
        latent = torch.zeros(2, 4, LATENT_SIDE, LATENT_SIDE)
        noise = host.comfy.sample.prepare_noise(latent, 0)
        return host.comfy.sample.sample(lllite.model, noise, 3, 5.0, "euler", "normal", positive, negative, latent, seed=0)

    def applied(**options):
        return host.node("CNS_ApplyControlNet").apply(
            lllite.positive, lllite.negative, control_net, host.image, 1.0, 0.0, 1.0, "balanced", **options
        )

    first_only = sampled(*applied(latent_strengths=first_only_strengths))
    controlled, plain = sampled(*applied()), sampled(lllite.positive, lllite.negative)
    assert (controlled[0] - plain[0]).abs().max().item() > MIN_EFFECT
    assert torch.equal(first_only[0], controlled[0])
    assert torch.equal(first_only[1], plain[1])
