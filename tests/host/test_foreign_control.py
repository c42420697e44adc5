"""Control modes, masks and block weights on ControlNets that ComfyUI's own control object runs
(controlnet_core/foreign_control.py): a file loaded with ComfyUI's built-in loader, through our
apply and stack nodes.

The expected residuals come from our own model on the same file (an independent forward: the
balanced equality with the built-in is tested in test_sampling), times the weights that
test_control_object writes out from the sources.
"""

import pytest
import torch

from .conftest import IMAGE_SIDE
from .test_control_object import (
    COND_OR_UNCOND,
    COND_ROWS,
    STRENGTH,
    UNCOND_ROWS,
    assert_mode_weighted,
    control_on,
    count_calls,
    expected_weights,
    flat,
    is_cond_only,
    raw_residuals,
    step_inputs,
)
from .test_performance_paths import MODES
from .test_sampling import MIN_EFFECT, RELATIVE_TO_EFFECT

# ComfyUI's forward against ours on the same weights, per residual: float rounding of two
# attention kernels (measured: at most 1.4e-6 of each residual's largest magnitude).
ACROSS_IMPLEMENTATIONS = 1e-5
OPTIONS = (
    "control modes other than balanced, masks, block weights, strength schedules, latent strengths and uncond "
    "multipliers"
)


def close(got, expected, scale):
    return (got - expected).abs().max().item() <= ACROSS_IMPLEMENTATIONS * scale


@pytest.mark.parametrize("mode", MODES[1:])
def test_modes_weight_and_pick_the_rows_of_a_builtin_loaded_controlnet(host, files, mode):
    builtin_net = host.builtin_controlnet(files.original)
    control = control_on(host, builtin_net, mode)
    x, sigma, cond = step_inputs(host)
    calls = count_calls(builtin_net.control_model)
    try:
        with torch.no_grad():
            got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
    finally:
        del builtin_net.control_model.forward
        control.cleanup()
    raw = raw_residuals(host, host.suite_controlnet(files.original), x, sigma, cond)

    assert type(control).__name__ == "ForeignControl"
    assert calls == [1 if is_cond_only(mode) else 2]  # cond-only modes run ComfyUI's model on the cond row only
    assert len(got) == 13
    assert_mode_weighted(got, raw, mode, ACROSS_IMPLEMENTATIONS)


def test_mask_and_block_weights_on_a_builtin_loaded_controlnet(host, files):
    builtin_net = host.builtin_controlnet(files.original)
    mask = torch.ones(1, IMAGE_SIDE, IMAGE_SIDE)
    mask[..., IMAGE_SIDE // 2 :] = 0.0  # control on the left half only
    user = [0.0, 0.5, 1.0, 1.5, 2.0, 0.0, 0.5, 1.0, 1.5, 2.0, 0.0, 0.5, 3.0]
    control = control_on(host, builtin_net, mask=mask, block_weights=", ".join(map(str, user)))
    x, sigma, cond = step_inputs(host)
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))
    control.cleanup()
    raw = raw_residuals(host, host.suite_controlnet(files.original), x, sigma, cond)
    for i, (g, r, u) in enumerate(zip(got, raw, user)):
        half = r.shape[-1] // 2
        if half == 0:
            continue  # a 1x1 residual straddles the edge
        assert torch.count_nonzero(g[..., half:]) == 0, f"residual {i}: control outside the mask"
        assert close(g[..., :half], STRENGTH * u * r[..., :half], STRENGTH * max(u, 1) * r.abs().max().item()), f"residual {i}"


@pytest.mark.parametrize("mode", ["controlnet_more_important", "prompt_more_important"])
def test_sampling_a_stack_with_a_builtin_loaded_controlnet_equals_ours(host, files, mode):
    """Through ComfyUI's sampler, on top of another control: ComfyUI's loader and ours give the
    same latent in a both-branch and a cond-only mode, with a mask."""
    mask = torch.zeros(1, IMAGE_SIDE, IMAGE_SIDE)
    mask[..., IMAGE_SIDE // 4 :, :] = 1.0  # control below the top quarter

    def sampled(control_net):
        stack = None
        for net, entry_mode, entry_mask in ((host.suite_controlnet(files.second), "balanced", None), (control_net, mode, mask)):
            (stack,) = host.node("CNS_ControlStackEntry").add(net, host.image, STRENGTH, 0.0, 1.0, entry_mode, mask=entry_mask, control_stack=stack)
        return host.sample(*host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, stack))

    (first_only,) = host.node("CNS_ControlStackEntry").add(host.suite_controlnet(files.second), host.image, STRENGTH, 0.0, 1.0, "balanced")
    baseline = host.sample(*host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, first_only))
    ours = sampled(host.suite_controlnet(files.original))
    builtin_loaded = sampled(host.builtin_controlnet(files.original))
    effect = (ours - baseline).abs().max().item()
    assert effect > MIN_EFFECT
    assert (builtin_loaded - ours).abs().max().item() <= RELATIVE_TO_EFFECT * effect


def test_balanced_without_options_keeps_comfyuis_own_object(host, files):
    builtin_net = host.builtin_controlnet(files.original)
    positive, _ = host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, builtin_net, host.image, STRENGTH, 0.0, 1.0, "balanced"
    )
    assert type(positive[0][1]["control"]) is type(builtin_net)


def refusal(host, control_net, mode, **options):
    """The message our apply node refuses `control_net` with, given `mode` and `options`."""
    with pytest.raises(host.errors.ControlNetError) as error:
        host.node("CNS_ApplyControlNet").apply(
            host.positive, host.negative, control_net, host.image, 1.0, 0.0, 1.0, mode, **options
        )
    return str(error.value)


def test_t2i_adapter_of_another_shape_with_a_mode_is_refused_by_name(host):
    """Published T2I-Adapters take every option (test_t2i_adapter_options); one whose network
    has no four feature levels does not."""
    adapter = host.comfy.controlnet.T2IAdapter(None, channels_in=3, compression_ratio=8, upscale_algorithm="nearest-exact")
    assert refusal(host, adapter, "controlnet_more_important") == (
        f"{OPTIONS} need a T2I-Adapter with 4 feature levels and a constant strength, as the published ones have; "
        "this one differs: use balanced mode with no other option"
    )


def test_a_stable_cascade_controlnet_with_a_mode_is_refused_by_name(host):
    """ComfyUI's loader gives Stable Cascade ControlNets its T2IAdapter object too."""
    import comfy.ldm.cascade.controlnet

    cascade = comfy.ldm.cascade.controlnet.ControlNet(c_in=3, c_proj=8, proj_blocks=[0, 4], bottleneck_mode="simple")
    control_net = host.comfy.controlnet.T2IAdapter(cascade, cascade.input_channels, compression_ratio=32, upscale_algorithm="bilinear")
    assert refusal(host, control_net, "prompt_more_important") == (
        f"{OPTIONS} work on SD1.x/SD2.x/SDXL controls; this is a Stable Cascade ControlNet, whose outputs go to "
        "Stable Cascade's own blocks: use balanced mode with no other option"
    )


def test_other_control_objects_with_a_mask_are_refused_by_name(host, files):
    class OtherPacksControl(host.comfy.controlnet.ControlBase):
        pass

    assert refusal(host, OtherPacksControl(), "balanced", mask=torch.ones(1, IMAGE_SIDE, IMAGE_SIDE)) == (
        f"{OPTIONS} need an SD1.x/SD2.x/SDXL ControlNet or T2I-Adapter, loaded with ControlNet Suite's 'Load ControlNet' "
        f"node or ComfyUI's; this control is a {__name__}.OtherPacksControl, whose outputs are placed differently: use "
        "balanced mode with no other option"
    )


def comfy_union_controlnet(host):
    """ComfyUI's own ControlNet Union model (comfy.cldm.cldm.ControlNet with control types) in
    ComfyUI's control object, as ComfyUI's loader makes it from a Union file; random weights.
    ComfyUI cannot load a tiny Union file (its diffusers-layout detection knows the full-size
    shapes only), so the model is built directly. Its union branch is 320 channels wide, so the
    model is too, at one level of one ResBlock."""
    from tests.core.tiny import randomize

    from .conftest import CONTEXT_DIM

    union = host.comfy.cldm.cldm.ControlNet(
        image_size=32, in_channels=4, model_channels=320, hint_channels=3, num_res_blocks=1, channel_mult=(1,),
        num_head_channels=64, use_spatial_transformer=True, transformer_depth=[1], transformer_depth_middle=1, context_dim=CONTEXT_DIM,
        legacy=False, union_controlnet_num_control_type=8, operations=host.comfy.ops.manual_cast,
    )
    return host.comfy.controlnet.ControlNet(randomize(union, seed=5).eval(), load_device=torch.device("cpu"))


def test_union_controlnet_with_a_control_type_in_a_cond_only_mode(host):
    """ComfyUI's SetUnionControlNetType picks the type on the loader's output; our apply node
    keeps it, runs the cond row only and weights it as the mode says."""
    import comfy_extras.nodes_controlnet  # ComfyUI's extra nodes, not registered in the test host

    set_type = comfy_extras.nodes_controlnet.SetUnionControlNetType().set_controlnet_type
    union_net = comfy_union_controlnet(host)
    depth, canny = set_type(union_net, "depth")[0], set_type(union_net, "canny/lineart/anime_lineart/mlsd")[0]
    x, sigma, cond = step_inputs(host)
    options = {"cond_or_uncond": COND_OR_UNCOND}

    def residuals(control_net, mode, strength):
        control = control_on(host, control_net, mode, strength=strength)
        with torch.no_grad():
            out = flat(control.get_control(x, sigma, cond, 2, options))
        control.cleanup()
        return out

    got = residuals(depth, "controlnet_more_important", STRENGTH)
    reference = residuals(depth, "balanced", 1.0)  # ComfyUI's own object, unweighted
    other_type = residuals(canny, "balanced", 1.0)
    assert len(got) == 3  # stem, one ResBlock, middle block
    for i, (g, r, o, w) in enumerate(zip(got, reference, other_type, expected_weights("controlnet_more_important", got))):
        scale = r.abs().max().item()
        assert (r - o).abs().max().item() > 1e-2 * scale, f"residual {i}: the control type changed nothing"
        assert close(g[COND_ROWS], w * r[COND_ROWS], w * scale), f"residual {i}"
        assert torch.count_nonzero(g[UNCOND_ROWS]) == 0, f"residual {i}: uncond row not zero"
