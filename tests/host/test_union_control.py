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
    step_inputs,
)
from .test_foreign_control import ACROSS_IMPLEMENTATIONS, comfy_union_controlnet
from .test_performance_paths import MODES

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
    x, sigma, cond = inputs or step_inputs(host)
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
    reference = residuals(host, with_type(comfys, DEPTH), strength=1.0)
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


def test_a_union_file_through_our_loader_gives_the_reference_forward(host):
    """A diffusers-format Union file (diffusers' own model, tiny SDXL shape, random weights) through
    our Load ControlNet and apply node: the control object is ours, and one step's residuals are
    the reference forward of our core model (xinsir's computation, sample token included) on
    that step's rows."""
    from diffusers import ControlNetUnionModel
    from safetensors.torch import save_file
    from tests.core.tiny import DIFFUSERS_CONFIGS, randomize

    from .test_sdxl import SDXL_UNET_CONFIG

    tiny_sdxl = DIFFUSERS_CONFIGS["SDXL"]
    width = tiny_sdxl["block_out_channels"][0]
    network = ControlNetUnionModel(**tiny_sdxl, num_control_type=8, num_trans_channel=width, num_proj_channel=width)
    weights = {k: v.contiguous() for k, v in randomize(network, seed=7).state_dict().items()}
    save_file(weights, host.models_dir / "tiny_union.safetensors")
    control_net = host.suite_controlnet("tiny_union.safetensors")
    assert (type(control_net).__name__, control_net.loaded.layout, control_net.loaded.family) == ("SuiteControl", "diffusers-union", "SDXL")

    sdxl_model = host.tiny_model(family="SDXL", unet_config=SDXL_UNET_CONFIG, seed=2)
    control = control_on(host, with_type(control_net, DEPTH), strength=1.0, model=sdxl_model)
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(1, 4, LATENT_SIDE, LATENT_SIDE, generator=gen) * 5).repeat(2, 1, 1, 1)
    sigma = torch.full((2,), 4.0)
    cond = {
        "c_crossattn": torch.randn(2, TOKENS, tiny_sdxl["cross_attention_dim"], generator=gen),
        "y": torch.randn(2, tiny_sdxl["projection_class_embeddings_input_dim"], generator=gen),
    }
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
        sampling = sdxl_model.model.model_sampling
        reference = control_net.loaded.model(
            sampling.calculate_input(sigma, x), [(host.image.movedim(-1, 1), 1)], sampling.timestep(sigma),
            cond["c_crossattn"], y=cond["y"],
        )
    control.cleanup()
    assert_close(got, reference, "file")
