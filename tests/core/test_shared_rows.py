"""Rows given once for several contexts (ControlNet.forward with fewer x rows than context rows).

CFG's cond and uncond rows hold the same latent, timestep and hint and differ only in their text
context, so everything before the first cross-attention is the same for them. Given once, the
model runs that part on the fewer rows and tiles them at the first cross-attention; the result
must be what the tiled inputs give, row for row.
"""

import pytest
import torch

from controlnet_core import ControlNet, sd_config
from controlnet_core.model import BasicTransformerBlock, ResBlock
from tests.core.tiny import randomize

# The same rows computed in a batch of another size: CPU kernels block their loops by batch
# size, so results agree to fp32 rounding (measured ~1e-6 of each residual's magnitude at SD1.5
# width), not bit for bit; the bound is the core's usual 1e-5 of the largest value.
RELATIVE_TOLERANCE = 1e-5
CONTEXT_DIM, ADM_CHANNELS = 16, 24
CONFIGS = {
    "SD1.x (conv projections)": sd_config(model_channels=32, channel_mult=(1, 2, 2, 2), context_dim=CONTEXT_DIM, head_channels=16),
    "SD2.x (linear projections)": sd_config(
        model_channels=32, channel_mult=(1, 2, 2, 2), context_dim=CONTEXT_DIM, use_linear_projection=True, head_channels=16
    ),
    # no transformer at the first level: the first cross-attention comes after a downsample
    "SDXL (y, later first transformer)": sd_config(
        model_channels=32,
        channel_mult=(1, 2, 2),
        transformer_depth=(0, 1, 2),
        context_dim=CONTEXT_DIM,
        use_linear_projection=True,
        adm_in_channels=ADM_CHANNELS,
        head_channels=16,
    ),
}
LATENTS, CONTEXTS = 2, 3  # two latents, each with three contexts (e.g. cond, uncond, another cond)


def model_and_inputs(name: str):
    cfg = CONFIGS[name]
    model = randomize(ControlNet(cfg), seed=4).eval()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(LATENTS, 4, 8, 8, generator=gen)
    hint = torch.rand(LATENTS, 3, 64, 64, generator=gen)
    t = torch.tensor([700.0, 40.0])  # distinct rows: a mix-up of rows would show
    y = torch.randn(LATENTS, ADM_CHANNELS, generator=gen) if cfg.adm_in_channels else None
    context = torch.randn(LATENTS * CONTEXTS, 5, CONTEXT_DIM, generator=gen)
    return model, x, hint, t, y, context


def tiled(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """The inputs as the plain path gets them: the latents' rows once per context chunk."""
    return None if tensor is None else tensor.repeat(CONTEXTS, *([1] * (tensor.ndim - 1)))


@pytest.mark.parametrize("name", CONFIGS)
def test_rows_given_once_give_what_the_tiled_rows_give(name):
    model, x, hint, t, y, context = model_and_inputs(name)
    with torch.no_grad():
        expected = model(tiled(x), tiled(hint), tiled(t), context, y=tiled(y))
        got = model(x, hint, t, context, y=y)
    assert len(got) == len(expected)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.shape[0] == LATENTS * CONTEXTS, f"residual {i}"
        assert e.abs().max() > 1e-3, f"residual {i} is trivially small"
        error = (g - e).abs().max().item()
        assert error <= RELATIVE_TOLERANCE * e.abs().max().item(), f"residual {i}: max error {error:.2e}"


@pytest.mark.parametrize("name", CONFIGS)
def test_what_precedes_the_first_cross_attention_runs_on_the_given_rows_only(name):
    model, x, hint, t, y, context = model_and_inputs(name)
    seen: dict[str, list[int]] = {"first ResBlock": [], "first self-attention": [], "cross-attentions": []}
    blocks = [m for m in model.modules() if isinstance(m, BasicTransformerBlock)]
    first_res = next(m for m in model.modules() if isinstance(m, ResBlock))
    hooks = [
        first_res.register_forward_pre_hook(lambda m, a: seen["first ResBlock"].append(a[0].shape[0])),
        blocks[0].attn1.register_forward_pre_hook(lambda m, a: seen["first self-attention"].append(a[0].shape[0])),
    ] + [b.attn2.register_forward_pre_hook(lambda m, a: seen["cross-attentions"].append(a[0].shape[0])) for b in blocks]
    try:
        with torch.no_grad():
            model(x, hint, t, context, y=y)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {
        "first ResBlock": [LATENTS],
        "first self-attention": [LATENTS],
        "cross-attentions": [LATENTS * CONTEXTS] * len(blocks),
    }


def test_context_rows_that_do_not_tile_the_rows_are_refused():
    model, x, hint, t, y, context = model_and_inputs("SD1.x (conv projections)")
    with pytest.raises(ValueError) as error:
        model(x, hint, t, context[:3])
    assert str(error.value) == (
        "context has 3 rows and x 2: give as many context rows as x rows, or a multiple of them"
    )
