"""Global-pooling ControlNets (v1.1 shuffle, recognised by ComfyUI's loader and ours from a file
name ending in _shuffle or _shuffle_fp16): every residual is its spatial mean, and the control
goes to the conditional rows of CFG's batch only, in every mode and whichever loader loaded the
file. ControlNet 1.1's README says the shuffle model "must be put only on the conditional side of
cfg scale"; its gradio_shuffle.py, A1111 and diffusers do so. ComfyUI's built-in apply node does not.

Expected residuals: the same weights under a plain name, run by our model, averaged here, times
the mode weights test_control_object writes out from the sources.
"""

import pytest
import torch

from .test_control_object import (
    COND_OR_UNCOND,
    COND_ROWS,
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
from .test_foreign_control import ACROSS_IMPLEMENTATIONS
from .test_performance_paths import MODES
from .test_tiling_nodes import applied, canvas_images, canvas_inputs, tiled_diffusion_step

SHUFFLE_FILE = "tiny_control_v11e_sd15_shuffle.safetensors"  # the v1.1 name's ending is what marks it
# loader: (load a file, tolerance against our model's forward on the plain-named file)
LOADERS = {"ours": (lambda host, name: host.suite_controlnet(name), TOLERANCE),
           "ComfyUI's": (lambda host, name: host.builtin_controlnet(name), ACROSS_IMPLEMENTATIONS)}


@pytest.fixture(scope="module")
def shuffle_file(host, files):
    """The shared random ControlNet's weights under a shuffle file name."""
    return host.write(SHUFFLE_FILE, {f"control_model.{k}": v for k, v in files.weights.items()})


def network_of(control_net):
    """The module that runs the ControlNet's forward (ours, or ComfyUI's)."""
    return control_net.loaded.model if hasattr(control_net, "loaded") else control_net.control_model


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("mode", MODES)
def test_a_shuffle_controlnet_gives_its_means_to_the_conditional_rows_only(host, files, shuffle_file, loader, mode):
    load, tolerance = LOADERS[loader]
    control_net = load(host, shuffle_file)
    control = control_on(host, control_net, mode)
    x, sigma, cond = step_inputs(host)
    calls = count_calls(network_of(control_net))
    try:
        with torch.no_grad():
            got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
    finally:
        del network_of(control_net).forward
        control.cleanup()
    raw = raw_residuals(host, host.suite_controlnet(files.original), x, sigma, cond)

    assert calls == [1]  # the network runs on the conditional row alone, in every mode
    assert len(got) == len(raw) == 13
    for i, (g, r, w) in enumerate(zip(got, raw, expected_weights(mode, raw))):
        mean = r.mean(dim=(2, 3), keepdim=True)
        scale = r.abs().max().item()
        assert mean.abs().max().item() > 1e-3 * scale, f"residual {i}: its mean is trivially small"
        assert torch.count_nonzero(g[UNCOND_ROWS]) == 0, f"residual {i}: control on the unconditional row"
        cond_row = g[COND_ROWS]
        assert torch.equal(cond_row, cond_row[..., :1, :1].expand_as(cond_row)), f"residual {i}: not one value per channel"
        assert (cond_row - w * mean[COND_ROWS]).abs().max().item() <= tolerance * w * scale, f"residual {i}"


def test_a_plain_named_controlnet_in_balanced_mode_still_controls_both_rows(host, files):
    """The name alone decides: the same weights under a plain name are not pooled and reach both rows."""
    control = control_on(host, host.suite_controlnet(files.original), "balanced")
    x, sigma, cond = step_inputs(host)
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
    control.cleanup()
    assert all(torch.count_nonzero(g[UNCOND_ROWS]) > 0 for g in got)
    assert all(not torch.equal(g, g[..., :1, :1].expand_as(g)) for g in got if g.shape[-1] > 1)


def test_a_shuffle_controlnet_under_tiled_diffusion_is_refused(host, shuffle_file):
    (image,) = canvas_images(23)
    x, sigma, cond = canvas_inputs(24)
    control = applied(host, host.suite_controlnet(shuffle_file), image, "balanced")
    with pytest.raises(host.errors.ControlNetError) as error:
        tiled_diffusion_step(prepared(host, control), x, sigma, cond)
    assert str(error.value) == (
        "this is a global-pooling ControlNet (such as v1.1 shuffle), which runs on the conditional rows only, and "
        "Tiled Diffusion batches the rows of several tiles together in an order that does not tell them apart: "
        "sample it without Tiled Diffusion (Ultimate SD Upscale, which samples tile by tile, takes it)"
    )


@pytest.mark.parametrize("loader", LOADERS)
def test_a_shuffle_controlnet_takes_0_and_refuses_a_value_between(host, shuffle_file, loader):
    """A global-pooling ControlNet controls the cond rows only in every mode: 0 says the same (and
    changes nothing), a value between 0 and 1 would scale nothing."""
    control_net = LOADERS[loader][0](host, shuffle_file)
    x, sigma, cond = step_inputs(host)

    def residuals(**options):
        control = control_on(host, control_net, "balanced", **options)
        with torch.no_grad():
            return flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))

    assert all(torch.equal(a, b) for a, b in zip(residuals(uncond_multiplier=0.0), residuals()))
    with pytest.raises(host.errors.ControlNetError) as error:
        control_on(host, control_net, "balanced", uncond_multiplier=0.5)
    assert str(error.value) == (
        "uncond_multiplier 0.5 has nothing to scale: this is a global-pooling ControlNet (such as v1.1 shuffle), "
        "which gives the unconditional branch no control in every mode. Set uncond_multiplier to 1"
    )
