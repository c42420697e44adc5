"""SDXL in ComfyUI's sampler: a tiny SDXL-shaped U-Net and ControlNet with random weights.

SDXL differs from SD1.x for a control in one input: the `y` vector (pooled text and size
embeddings, built by ComfyUI from the conditioning's `pooled_output`) enters the time embedding,
so CFG's cond and uncond rows differ from the first layer on and our model runs both rows (no
shared rows), and cond-only modes must pick the cond rows of `y` with those of the latent.
"""

from types import SimpleNamespace

import pytest
import torch

from .conftest import LATENT_SIDE, TOKENS
from .test_control_object import control_on, flat, raw_residuals
from .test_performance_paths import BATCH_ROUNDING
from .test_sampling import MIN_EFFECT, RELATIVE_TO_EFFECT, apply_builtin, apply_ours

# SDXL's shape at a tiny width: 3 levels, no attention at the first, linear projections in the
# transformers, 64-channel heads, and SDXL's real y width (ComfyUI builds y from a 1280-wide
# pooled CLIP-G output and six 256-wide size embeddings: 2816).
WIDTH = 64
CHANNEL_MULT = (1, 2, 2)
TRANSFORMER_DEPTH = (0, 1, 1)
CONTEXT_DIM = 64
POOLED_DIM = 1280
ADM_CHANNELS = 2816
SDXL_UNET_CONFIG = dict(
    image_size=32,
    in_channels=4,
    out_channels=4,
    model_channels=WIDTH,
    num_res_blocks=[2, 2, 2],
    channel_mult=list(CHANNEL_MULT),
    transformer_depth=[d for d in TRANSFORMER_DEPTH for _ in range(2)],  # per input ResBlock
    transformer_depth_output=[d for d in TRANSFORMER_DEPTH for _ in range(3)],  # per output ResBlock
    transformer_depth_middle=1,
    context_dim=CONTEXT_DIM,
    use_spatial_transformer=True,
    use_linear_in_transformer=True,
    legacy=False,
    num_classes="sequential",  # y goes through label_emb
    adm_in_channels=ADM_CHANNELS,
    num_head_channels=64,
    use_checkpoint=False,
    use_temporal_resblock=False,
    use_temporal_attention=False,
)


@pytest.fixture(scope="module")
def sdxl(host) -> SimpleNamespace:
    """The tiny SDXL U-Net (a ModelPatcher), one ControlNet file for it, and conditioning with
    distinct pooled outputs for the positive and negative prompt."""
    model = host.tiny_model(family="SDXL", unet_config=SDXL_UNET_CONFIG, seed=2)
    weights = host.controlnet_state_dict(
        seed=31, channel_mult=CHANNEL_MULT, transformer_depth=TRANSFORMER_DEPTH, context_dim=CONTEXT_DIM,
        use_linear_projection=True, adm_in_channels=ADM_CHANNELS,
    )
    file_name = host.write("tiny_sdxl_full.safetensors", {f"control_model.{k}": v for k, v in weights.items()})
    gen = torch.Generator().manual_seed(9)

    def conditioning():
        context = torch.randn(1, TOKENS, CONTEXT_DIM, generator=gen)
        return [[context, {"pooled_output": torch.randn(1, POOLED_DIM, generator=gen)}]]

    return SimpleNamespace(model=model, file=file_name, positive=conditioning(), negative=conditioning())


def test_balanced_full_strength_equals_builtin(host, sdxl):
    ours_net = host.suite_controlnet(sdxl.file)
    assert ours_net.loaded.family == "SDXL"
    plain = host.sample(sdxl.positive, sdxl.negative, model=sdxl.model)
    builtin_net = host.builtin_controlnet(sdxl.file)
    builtin = host.sample(*apply_builtin(host, sdxl.positive, sdxl.negative, builtin_net), model=sdxl.model)
    ours = host.sample(*apply_ours(host, sdxl.positive, sdxl.negative, ours_net), model=sdxl.model)
    effect = (builtin - plain).abs().max().item()
    assert effect > MIN_EFFECT
    assert (ours - builtin).abs().max().item() <= RELATIVE_TO_EFFECT * effect


@pytest.mark.parametrize("mode, rows", [("balanced", 2), ("controlnet_more_important", 1)])
def test_cond_and_uncond_rows_are_not_shared(host, sdxl, mode, rows):
    """y differs between the prompts, so every call gets both rows (balanced) or the cond row."""
    control_net = host.suite_controlnet(sdxl.file)
    model = control_net.loaded.model
    seen = []
    handle = model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    try:
        host.sample(*apply_ours(host, sdxl.positive, sdxl.negative, control_net, mode=mode), model=sdxl.model)
    finally:
        handle.remove()
    assert seen and set(seen) == {rows}


def test_cond_only_mode_runs_the_cond_rows_of_y(host, sdxl):
    """One step by hand: the cond row's residuals are the model's forward on that row's latent,
    context and y (weighted by the mode); the uncond row gets none."""
    control_net = host.suite_controlnet(sdxl.file)
    control = control_on(
        host, control_net, "controlnet_more_important", (sdxl.positive, sdxl.negative), strength=1.0, model=sdxl.model
    )
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(1, 4, LATENT_SIDE, LATENT_SIDE, generator=gen) * 5).repeat(2, 1, 1, 1)
    sigma = torch.full((2,), 4.0)
    cond = {
        "c_crossattn": torch.randn(2, TOKENS, CONTEXT_DIM, generator=gen),
        "y": torch.randn(2, ADM_CHANNELS, generator=gen),
    }
    chunks = [1, 0]  # uncond row first
    cond_row = slice(chunks.index(0), chunks.index(0) + 1)
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": chunks}))
    cond_only = {key: value[cond_row] for key, value in cond.items()}
    raw = raw_residuals(host, control_net, x[cond_row], sigma[cond_row], cond_only, model=sdxl.model)
    modes = host.comfy_control.control_modes
    weights = modes.mode_weights("controlnet_more_important", 1.0, control._divisors(), None)
    for i, (g, r, w) in enumerate(zip(got, raw, weights)):
        assert torch.count_nonzero(g[chunks.index(1)]) == 0, f"residual {i}"
        scale = r.abs().max().item()
        assert scale > 1e-3
        assert (g[cond_row] - w * r).abs().max().item() <= BATCH_ROUNDING * scale, f"residual {i}"


def test_sd15_controlnet_on_sdxl_is_refused_by_name(host, files, sdxl):
    control_net = host.suite_controlnet(files.original)
    with pytest.raises(host.errors.FamilyMismatchError) as error:
        host.sample(*apply_ours(host, sdxl.positive, sdxl.negative, control_net), model=sdxl.model)
    assert str(error.value) == "this ControlNet is for SD1.x, the model is SDXL: pick a ControlNet made for SDXL"


def test_an_sdxl_controlnet_from_comfyuis_loader_with_options_on_sd15_is_refused_by_name(host, sdxl):
    """Given an option, our apply node wraps ComfyUI's own control object; the wrapper reads the
    family off ComfyUI's model and refuses the mismatch before the U-Net runs (ComfyUI's object
    alone would drop what does not fit with a warning in the log)."""
    builtin_net = host.builtin_controlnet(sdxl.file)
    positive, negative = apply_ours(host, host.positive, host.negative, builtin_net, mode="controlnet_more_important")
    assert type(positive[0][1]["control"]).__name__ == "ForeignControl"
    with pytest.raises(host.errors.FamilyMismatchError) as error:
        host.sample(positive, negative)
    assert str(error.value) == "this ControlNet is for SDXL, the model is SD1.x: pick a ControlNet made for SD1.x"
    # and on the model it was made for, it samples
    host.sample(*apply_ours(host, sdxl.positive, sdxl.negative, builtin_net, mode="controlnet_more_important"), model=sdxl.model)
