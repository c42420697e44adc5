"""Control modes, masks and block weights on T2I-Adapters (controlnet_core/foreign_control.py,
ForeignAdapter), through our apply and stack nodes.

The reference is ComfyUI's own T2IAdapter object on the same network at strength 1 (what the
built-in Apply ControlNet node gives), times weights written here from the sources: A1111's
adapter soft weights (sd-webui-controlnet scripts/hook.py: `(0.25, 0.62, 0.825, 1.0)`) and the
paper's CFG resolution weighting 64 / h_i with h_i read off each feature's actual size.

ComfyUI's loader builds an adapter's levels 1×, 2×, 4×, 4× as wide as its first, which the tiny
U-Net (64, 128, 128, 128) does not have, so most tests build the adapter directly with ComfyUI's
class; the file tests sample tiny U-Nets of those widths (SD1.x and SDXL).
"""

import pytest
import torch
from safetensors.torch import save_file
from tests.core.tiny import randomize
from workflows.random_models import sd15_unet_config

from .conftest import CHANNEL_MULT, CONTEXT_DIM, IMAGE_SIDE, LATENT_SIDE, MODEL_CHANNELS, TOKENS, UNET_CONFIG
from .test_control_object import (
    COND_OR_UNCOND,
    COND_ROWS,
    PAPER_LATENT_SIDE,
    STRENGTH,
    UNCOND_ROWS,
    control_on,
    is_cond_only,
    step_inputs,
)
from .test_performance_paths import MODES
from .test_sampling import MIN_EFFECT, RELATIVE_TO_EFFECT
from .test_sdxl import CONTEXT_DIM as SDXL_CONTEXT_DIM
from .test_sdxl import POOLED_DIM, SDXL_UNET_CONFIG

A1111_ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)
SD_UNSHUFFLE, SDXL_UNSHUFFLE = 8, 16  # ComfyUI's Adapter: pixel-unshuffle of the image
BATCH = 2  # step_inputs: one uncond and one cond row
ADAPTER_LEVEL_MULT = (1, 2, 4, 4)  # ComfyUI's adapter loader: levels c, 2c, 4c, 4c from the file's first width
SAME_NETWORK = 1e-6  # of each feature's largest magnitude: the same network on the same hint


def comfy_adapter(host, xl=False, seed=11, hint_channels=3):
    """ComfyUI's T2IAdapter control object around ComfyUI's full adapter network, sized for
    the tiny U-Net, random weights; `hint_channels` 1 makes a sketch adapter."""
    import comfy.t2i_adapter.adapter

    unshuffle = SDXL_UNSHUFFLE if xl else SD_UNSHUFFLE
    network = comfy.t2i_adapter.adapter.Adapter(
        channels=[MODEL_CHANNELS * m for m in CHANNEL_MULT], nums_rb=2, cin=hint_channels * unshuffle**2, ksize=1, sk=True,
        use_conv=False, xl=xl,
    )
    randomize(network, seed=seed).eval()
    return host.comfy.controlnet.T2IAdapter(network, network.input_channels, compression_ratio=8, upscale_algorithm="nearest-exact")


def entries(control_dict):
    """(key, index, tensor) of every non-None entry of a control dict, in a fixed order."""
    return [(key, i, t) for key in ("input", "middle", "output") for i, t in enumerate(control_dict.get(key, [])) if t is not None]


def comfy_reference(host, adapter, x, sigma, cond):
    """ComfyUI's own object on this step at strength 1: the unweighted features, placed."""
    reference = adapter.copy().set_cond_hint(host.image.movedim(-1, 1), 1.0)
    with torch.no_grad():
        return reference.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND})


def expected_weights(mode, features):
    """Finest feature first."""
    if mode == "balanced":
        return [STRENGTH] * len(features)
    if mode in ("prompt_more_important", "controlnet_more_important"):
        return [STRENGTH * w for w in A1111_ADAPTER_SOFT]
    return [STRENGTH * PAPER_LATENT_SIDE / (PAPER_LATENT_SIDE * f.shape[-1] / LATENT_SIDE) for f in features]


def step(host, adapter, mode="balanced", **options):
    control = control_on(host, adapter, mode, **options)
    x, sigma, cond = step_inputs(host)
    with torch.no_grad():
        got = control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND})
    control.cleanup()
    return control, got, comfy_reference(host, adapter, x, sigma, cond)


def assert_close(got, expected, scale, what):
    error = (got - expected).abs().max().item()
    assert error <= SAME_NETWORK * scale, f"{what}: max error {error:.2e}"


def assert_soft_weighted(got, reference, what=""):
    """Every row of an SD1.x adapter's `got` is `reference` times A1111's soft weights and the
    strength ('input' lists the deepest feature first)."""
    for (key, i, g), (_, _, r), w in zip(entries(got), entries(reference), [STRENGTH * w for w in A1111_ADAPTER_SOFT[::-1]]):
        r = r.expand_as(g)
        assert_close(g, w * r, w * r.abs().max().item(), f"{what}{key}[{i}]")


@pytest.mark.parametrize("mode", MODES)
def test_modes_weight_the_features_and_pick_the_rows(host, mode):
    control, got, reference = step(host, comfy_adapter(host), mode)
    ours, theirs = entries(got), entries(reference)

    # balanced with no options is ComfyUI's own object, untouched
    assert type(control).__name__ == ("T2IAdapter" if mode == "balanced" else "ForeignAdapter")
    assert [(k, i) for k, i, _ in ours] == [(k, i) for k, i, _ in theirs]  # after the same U-Net blocks
    features = [t for _, _, t in theirs][::-1]  # ComfyUI's 'input' list is deepest first
    weights = expected_weights(mode, features)[::-1]
    for (key, i, g), (_, _, r), w in zip(ours, theirs, weights):
        # ComfyUI keeps one row for a single hint image (it broadcasts); ours has the batch's
        g, r = g.expand(BATCH, *g.shape[1:]), r.expand(BATCH, *r.shape[1:])
        scale = r.abs().max().item()
        assert scale > 1e-3, f"{key}[{i}] is trivially small; the test would prove nothing"
        assert_close(g[COND_ROWS], w * r[COND_ROWS], w * scale, f"{key}[{i}] cond row")
        if is_cond_only(mode):
            assert torch.count_nonzero(g[UNCOND_ROWS]) == 0, f"{key}[{i}]: uncond row not zero"
        else:
            assert_close(g[UNCOND_ROWS], w * r[UNCOND_ROWS], w * scale, f"{key}[{i}] uncond row")


def test_mask_and_block_weights(host):
    mask = torch.ones(1, IMAGE_SIDE, IMAGE_SIDE)
    mask[..., IMAGE_SIDE // 2 :] = 0.0  # control on the left half only
    user = [0.5, 1.0, 2.0, 3.0]  # finest first
    _, got, reference = step(host, comfy_adapter(host), mask=mask, block_weights=", ".join(map(str, user)))
    ours, theirs = entries(got), entries(reference)
    for (key, i, g), (_, _, r), u in zip(ours, theirs, user[::-1]):
        r = r.expand_as(g)
        half = r.shape[-1] // 2
        if half == 0:
            continue  # a 1x1 feature straddles the edge
        assert torch.count_nonzero(g[..., half:]) == 0, f"{key}[{i}]: control outside the mask"
        assert_close(g[..., :half], STRENGTH * u * r[..., :half], STRENGTH * u * r.abs().max().item(), f"{key}[{i}]")


@pytest.mark.parametrize("uncond_multiplier", [0.0, 0.4])
def test_uncond_multiplier_scales_the_uncond_rows_features(host, uncond_multiplier):
    """prompt_more_important's soft weights on both rows, the uncond row's times u (0: exactly zero)."""
    _, got, reference = step(host, comfy_adapter(host), "prompt_more_important", uncond_multiplier=uncond_multiplier)
    for (key, i, g), (_, _, r), w in zip(entries(got), entries(reference), [STRENGTH * w for w in A1111_ADAPTER_SOFT[::-1]]):
        g, r = g.expand(BATCH, *g.shape[1:]), r.expand(BATCH, *r.shape[1:])
        scale = r.abs().max().item()
        assert scale > 1e-3, f"{key}[{i}] is trivially small; the test would prove nothing"
        assert_close(g[COND_ROWS], w * r[COND_ROWS], w * scale, f"{key}[{i}] cond row")
        assert_close(g[UNCOND_ROWS], uncond_multiplier * w * r[UNCOND_ROWS], w * scale, f"{key}[{i}] uncond row")
        if uncond_multiplier == 0.0:
            assert torch.count_nonzero(g[UNCOND_ROWS]) == 0, f"{key}[{i}]: uncond row not zero"


@pytest.fixture(scope="module")
def sdxl_model(host):
    """The tiny SDXL U-Net of test_sdxl (levels 64, 128, 128 wide, as the tiny adapters)."""
    return host.tiny_model(family="SDXL", unet_config=SDXL_UNET_CONFIG, seed=2)


def test_sdxl_adapter_places_its_last_feature_after_the_middle_block(host, sdxl_model):
    """ComfyUI's XL adapter: features after input blocks 3, 5, 8 and the middle block, soft
    weights in that order (the middle block's 1.0)."""
    control, got, reference = step(host, comfy_adapter(host, xl=True), "prompt_more_important", model=sdxl_model)
    ours, theirs = entries(got), entries(reference)
    assert [(k, i) for k, i, _ in ours] == [(k, i) for k, i, _ in theirs]
    assert [k for k, _, _ in ours].count("middle") == 1
    features = [t for k, _, t in theirs if k == "input"][::-1] + [t for k, _, t in theirs if k == "middle"]
    by_entry = {id(t): w for t, w in zip(features, expected_weights("prompt_more_important", features))}
    for (key, i, g), (_, _, r) in zip(ours, theirs):
        w = by_entry[id(r)]
        r = r.expand_as(g)
        assert_close(g, w * r, w * r.abs().max().item(), f"{key}[{i}]")
    assert control.block_weights is None
    configured = control_on(host, comfy_adapter(host, xl=True), block_weights="middle block only", model=sdxl_model)
    assert configured.block_weights == [0.0, 0.0, 0.0, 1.0]


def test_an_adapter_on_a_model_of_another_family_is_refused_by_name(host, sdxl_model):
    """ComfyUI's own object would add the features that fit and drop the rest with a warning in
    the log; the wrapper refuses before the U-Net runs. An SD1.x adapter fits SD2.x's U-Net."""
    with pytest.raises(host.errors.FamilyMismatchError) as error:
        control_on(host, comfy_adapter(host, xl=True), "prompt_more_important")
    assert str(error.value) == "this T2I-Adapter is for SDXL, the model is SD1.x: pick a T2I-Adapter made for SD1.x"
    with pytest.raises(host.errors.FamilyMismatchError) as error:
        control_on(host, comfy_adapter(host), "prompt_more_important", model=sdxl_model)
    assert str(error.value) == "this T2I-Adapter is for SD1.x, the model is SDXL: pick a T2I-Adapter made for SDXL"
    sd2_model = host.tiny_model(family="SD20", unet_config={**UNET_CONFIG, "use_linear_in_transformer": True})
    assert host.comfy_control.unet_family(sd2_model.model.model_config.unet_config) == "SD2.x"
    control_on(host, comfy_adapter(host), "prompt_more_important", model=sd2_model)


def test_block_weights_for_an_sd_adapter_name_its_four_input_blocks(host):
    adapter = comfy_adapter(host)
    with pytest.raises(host.errors.ControlNetError) as error:
        control_on(host, adapter, block_weights="1, 1, 1")
    assert str(error.value) == "block_weights has 3 numbers; this control has 4 residuals (4 input blocks, shallowest first): give 4"
    with pytest.raises(host.errors.ControlNetError) as error:
        control_on(host, adapter, block_weights="middle block only")
    assert str(error.value) == (
        "block_weights 'middle block only': this control adds nothing at the middle block (its 4 outputs follow input "
        "blocks); choose lowest resolution only or highest resolution only, or give 4 numbers"
    )
    assert control_on(host, adapter, block_weights="lowest resolution only").block_weights == [0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "latents, hints", [(1, 1), (2, 1), (2, 2)], ids=["one latent", "two latents, one hint", "two latents, two hints"]
)
def test_sampling_with_an_all_ones_mask_on_a_stack_equals_comfyuis_own_adapter(host, files, latents, hints):
    """Through ComfyUI's sampler, on top of another control: the wrapper (forced by a mask of
    ones, which changes nothing) gives the latents ComfyUI's own T2IAdapter gives. The hint is
    1.5x the latent's pixel size, so both resize it."""
    adapter = comfy_adapter(host)
    side = IMAGE_SIDE * 3 // 2
    images = torch.rand(hints, side, side, 3, generator=torch.Generator().manual_seed(5))

    def sampled(adapter_mask):
        stack = None
        for net, image, mask in ((host.suite_controlnet(files.second), host.image, None), (adapter, images, adapter_mask)):
            (stack,) = host.node("CNS_ControlStackEntry").add(net, image, STRENGTH, 0.0, 1.0, "balanced", mask=mask, control_stack=stack)
        positive, negative = host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, stack)
        return type(positive[0][1]["control"]).__name__, host.sample(positive, negative, batch=latents)

    (first_only,) = host.node("CNS_ControlStackEntry").add(host.suite_controlnet(files.second), host.image, STRENGTH, 0.0, 1.0, "balanced")
    baseline = host.sample(*host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, first_only), batch=latents)
    comfy_kind, comfys = sampled(None)
    ours_kind, ours = sampled(torch.ones(1, IMAGE_SIDE, IMAGE_SIDE))
    effect = (comfys - baseline).abs().max().item()
    assert (comfy_kind, ours_kind) == ("T2IAdapter", "ForeignAdapter")
    assert effect > MIN_EFFECT
    assert (ours - comfys).abs().max().item() <= RELATIVE_TO_EFFECT * effect


def test_a_second_latent_size_in_one_run_gets_features_of_its_size(host):
    """The features are cached per latent size (a hires pass samples a larger latent with the
    same control): each size gets what ComfyUI's own object gives at that size."""
    adapter = comfy_adapter(host)
    control = control_on(host, adapter, "prompt_more_important")
    for side in (LATENT_SIDE, 2 * LATENT_SIDE):
        x, sigma, cond = step_inputs(host)
        x = torch.nn.functional.interpolate(x, size=(side, side))
        with torch.no_grad():
            got = control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND})
        assert_soft_weighted(got, comfy_reference(host, adapter, x, sigma, cond), f"latent {side}: ")
    control.cleanup()


def adapter_file_samples_as_comfyuis(host, file_name, network, model, positive, negative):
    """Save `network` as `file_name` and sample `model` with it two ways: our Load ControlNet and
    apply node (a mask of ones forces the wrapper) against ComfyUI's ControlNetLoader and Apply
    ControlNet."""
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, host.models_dir / file_name)
    plain = host.sample(positive, negative, model=model)
    comfys = host.sample(*host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, host.builtin_controlnet(file_name), host.image, STRENGTH, 0.0, 1.0), model=model)
    ours_positive, ours_negative = host.node("CNS_ApplyControlNet").apply(
        positive, negative, host.suite_controlnet(file_name), host.image, STRENGTH, 0.0, 1.0, "balanced",
        mask=torch.ones(1, IMAGE_SIDE, IMAGE_SIDE),
    )
    assert type(ours_positive[0][1]["control"]).__name__ == "ForeignAdapter"
    ours = host.sample(ours_positive, ours_negative, model=model)
    effect = (comfys - plain).abs().max().item()
    assert effect > MIN_EFFECT
    assert (ours - comfys).abs().max().item() <= RELATIVE_TO_EFFECT * effect


def test_an_adapter_file_through_our_loader_samples_as_comfyuis_loader_and_apply_node(host):
    """An SD1.x T2I-Adapter file end to end, on a tiny U-Net whose levels are 1x, 2x, 4x, 4x as
    wide as its first (the widths ComfyUI's adapter loader builds)."""
    import comfy.t2i_adapter.adapter

    network = comfy.t2i_adapter.adapter.Adapter(
        channels=[MODEL_CHANNELS * m for m in ADAPTER_LEVEL_MULT], nums_rb=2, cin=3 * SD_UNSHUFFLE**2, ksize=1, sk=True,
        use_conv=False, xl=False,
    )
    model = host.tiny_model(unet_config=sd15_unet_config(MODEL_CHANNELS, ADAPTER_LEVEL_MULT, CONTEXT_DIM))
    adapter_file_samples_as_comfyuis(
        host, "tiny_t2i_adapter.safetensors", randomize(network, seed=12), model, host.positive, host.negative
    )


def test_an_sdxl_adapter_file_through_our_loader_samples_as_comfyuis_loader_and_apply_node(host):
    """An SDXL T2I-Adapter file end to end (ComfyUI reads XL from the 16x pixel-unshuffle's 768
    input channels): its features go after input blocks 3, 5, 8 and the middle block of a tiny
    SDXL U-Net whose levels are 1x, 2x, 4x as wide as its first, with distinct pooled outputs
    for the two prompts."""
    import comfy.t2i_adapter.adapter

    network = comfy.t2i_adapter.adapter.Adapter(
        channels=[MODEL_CHANNELS * m for m in ADAPTER_LEVEL_MULT], nums_rb=2, cin=3 * SDXL_UNSHUFFLE**2, ksize=1, sk=True,
        use_conv=False, xl=True,
    )
    unet_config = {**SDXL_UNET_CONFIG, "model_channels": MODEL_CHANNELS, "channel_mult": list(ADAPTER_LEVEL_MULT[:3])}
    model = host.tiny_model(family="SDXL", unet_config=unet_config, seed=3)
    gen = torch.Generator().manual_seed(8)
    positive, negative = (
        [[torch.randn(1, TOKENS, SDXL_CONTEXT_DIM, generator=gen), {"pooled_output": torch.randn(1, POOLED_DIM, generator=gen)}]]
        for _ in range(2)
    )
    adapter_file_samples_as_comfyuis(
        host, "tiny_t2i_adapter_xl.safetensors", randomize(network, seed=13), model, positive, negative
    )


def test_a_sketch_adapter_takes_the_mean_of_an_rgb_hint_as_comfyui_does(host):
    sketch = comfy_adapter(host, hint_channels=1)
    assert sketch.channels_in == 1
    _, got, reference = step(host, sketch, "prompt_more_important")
    assert_soft_weighted(got, reference)


@pytest.mark.parametrize("xl", [False, True], ids=["SD1.x", "SDXL"])
def test_memory_estimate_covers_the_cached_features_and_their_weighted_copies(host, sdxl_model, xl):
    """ComfyUI's sampler reserves what controls say they hold beside the U-Net: the features
    kept for the run (one row per hint image) and their weighted copies for the cond and uncond
    rows. Sized from the features ComfyUI's own object gives at the hint's latent size."""
    adapter = comfy_adapter(host, xl=xl)
    control = control_on(host, adapter, "prompt_more_important", model=sdxl_model if xl else None)
    x, sigma, cond = step_inputs(host)
    assert x.shape[-1] * 8 == host.image.shape[-2] and host.image.shape[0] == 1
    features_row = sum(t[:1].numel() for _, _, t in entries(comfy_reference(host, adapter, x, sigma, cond)))
    bytes_per_float = 4  # fp32 on the CPU
    kept, cfg_copies = 1, 2
    assert control.inference_memory_requirements(torch.float32) == (kept + cfg_copies) * features_row * bytes_per_float
