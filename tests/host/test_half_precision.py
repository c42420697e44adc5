"""The dtypes a GPU computes in (fp16, bf16), run on this CPU.

On a GPU ComfyUI loads a ControlNet in fp16 (bf16 where fp16 is not fast) and computes in it;
on a CPU it keeps fp32, so the other host tests never run our half-precision path. PyTorch runs
fp16 and bf16 convolutions, attention and norms on the CPU too: these tests make ComfyUI's
model management answer as it does on a GPU (`should_use_fp16` / `should_use_bf16`) and run the
same code. Speed is not measured here (`bench/sampling.py --device cuda` does that on a GPU).

The tolerance is derived from the host, not chosen: half precision moves every result away from
its fp32 value by rounding that grows with depth, and ComfyUI's built-in ControlNet on the same
file shows by how much (its half-precision residuals against its fp32 ones). Two computations
that each round that much can differ by up to the sum of the two errors, so ours may differ
from the built-in, or from our own fp32 result, by at most twice the built-in's rounding.
"""

import pytest
import torch

from .conftest import CONTEXT_DIM, LATENT_SIDE, TOKENS
from .test_control_object import STRENGTH, builtin_control_on, control_on, flat
from .test_performance_paths import BLOCK_WEIGHTS, COND_ONLY, MODES
from .test_sampling import apply_builtin, apply_ours

HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Two roundings of the same size differ by at most their sum.
TWO_ROUNDINGS = 2.0
CHUNKS = [1, 0]  # uncond, cond: as ComfyUI batches CFG


def answer_as_on(host, monkeypatch, dtype: torch.dtype) -> None:
    """Make ComfyUI's model management pick `dtype` for models loaded from now on, as it does on
    a GPU that computes in it; float32 makes it answer as on a CPU again."""
    mm = host.comfy.model_management
    monkeypatch.setattr(mm, "should_use_fp16", lambda *args, **kwargs: dtype == torch.float16)
    monkeypatch.setattr(mm, "should_use_bf16", lambda *args, **kwargs: dtype == torch.bfloat16)


@pytest.fixture(params=sorted(HALF_DTYPES))
def gpu_dtype(request, host, monkeypatch) -> torch.dtype:
    dtype = HALF_DTYPES[request.param]
    answer_as_on(host, monkeypatch, dtype)
    return dtype


def one_latent_step(seed=5):
    """CFG's batch at one step: one latent as its uncond and cond rows, and the two contexts."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(1, 4, LATENT_SIDE, LATENT_SIDE, generator=gen) * 5).repeat(2, 1, 1, 1)
    sigma = torch.full((2,), 4.0)
    cond = {"c_crossattn": torch.randn(2, TOKENS, CONTEXT_DIM, generator=gen)}
    return x, sigma, cond


def run_control(control, step) -> list[torch.Tensor]:
    x, sigma, cond = step
    with torch.no_grad():
        return flat(control.get_control(x, sigma, cond, len(CHUNKS), {"cond_or_uncond": CHUNKS}))


def builtin_residuals(host, file_name, step) -> list[torch.Tensor]:
    """ComfyUI's built-in ControlNet, loaded in whatever dtype model management picks now."""
    return run_control(builtin_control_on(host, host.builtin_controlnet(file_name), STRENGTH), step)


def relative_deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| over b's largest magnitude, computed in fp32."""
    b = b.float()
    return ((a.float() - b).abs().max() / b.abs().max()).item()


def builtin_rounding(host, files, gpu_dtype, step, monkeypatch) -> tuple[list[torch.Tensor], list[float]]:
    """The built-in's residuals in the GPU's dtype, and per residual how far they lie from its
    fp32 ones. Leaves model management answering as on a CPU (fp32)."""
    half = builtin_residuals(host, files.original, step)
    assert {r.dtype for r in half} == {gpu_dtype}
    answer_as_on(host, monkeypatch, torch.float32)
    full = builtin_residuals(host, files.original, step)
    assert {r.dtype for r in full} == {torch.float32}
    return half, [relative_deviation(h, f) for h, f in zip(half, full)]


def test_loads_computes_and_caches_in_the_gpu_dtype(host, files, gpu_dtype):
    """An fp32 file is loaded in the GPU's dtype, computed in it without ComfyUI's per-layer
    casting (as the built-in does), and the hint encoding kept between steps is in it too
    (half the memory of fp32)."""
    ours = host.suite_controlnet(files.original)
    builtin = host.builtin_controlnet(files.original)
    assert {p.dtype for p in ours.loaded.model.parameters()} == {gpu_dtype}
    assert builtin.control_model.dtype == gpu_dtype and builtin.manual_cast_dtype is None
    assert ours.loaded.model.compute_dtype is None and ours.loaded.model.dtype == gpu_dtype

    control = control_on(host, ours)
    residuals = run_control(control, one_latent_step())
    assert {r.dtype for r in residuals} == {gpu_dtype}
    ((_, encoded),) = control._encoded_hints.values()  # (hint, its encoding)
    assert encoded.dtype == gpu_dtype
    control.cleanup()


def test_balanced_residuals_match_the_builtin_within_its_rounding(host, files, gpu_dtype, monkeypatch):
    """One latent's cond and uncond rows (which our model runs as one row up to the first
    cross-attention) against the built-in on the same file, both in the GPU's dtype."""
    step = one_latent_step()
    ours = run_control(control_on(host, host.suite_controlnet(files.original)), step)
    builtin, rounding = builtin_rounding(host, files, gpu_dtype, step, monkeypatch)
    assert max(rounding) > 0  # the dtype really rounds: the bound below is not vacuous
    for i, (o, b, r) in enumerate(zip(ours, builtin, rounding)):
        assert o.shape == b.shape and o.dtype == b.dtype, f"residual {i}"
        assert relative_deviation(o, b) <= TWO_ROUNDINGS * r, f"residual {i}"


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_rounds_no_more_than_the_builtin(host, files, gpu_dtype, mode, monkeypatch):
    """Each control mode in the GPU's dtype against the same mode in fp32: the conditional rows
    within twice the built-in's own rounding; the unconditional rows of cond-only modes exactly
    zero."""
    step = one_latent_step()
    half = run_control(control_on(host, host.suite_controlnet(files.original), mode), step)
    _, rounding = builtin_rounding(host, files, gpu_dtype, step, monkeypatch)  # models load in fp32 from here
    full = run_control(control_on(host, host.suite_controlnet(files.original), mode), step)
    uncond, cond = CHUNKS.index(1), CHUNKS.index(0)
    for i, (h, f, r) in enumerate(zip(half, full, rounding)):
        assert h.dtype == gpu_dtype and f.dtype == torch.float32
        assert relative_deviation(h[cond], f[cond]) <= TWO_ROUNDINGS * r, f"residual {i}"
        if mode in COND_ONLY:
            assert torch.count_nonzero(h[uncond]) == 0, f"residual {i}"
        else:
            assert relative_deviation(h[uncond], f[uncond]) <= TWO_ROUNDINGS * r, f"residual {i}"


def masked_control(host, control_net):
    """Balanced, with block weights and a soft mask (a ramp from 0 to 1 across the image)."""
    side = host.image.shape[1]
    mask = torch.linspace(0.0, 1.0, side).expand(1, side, side).contiguous()
    return control_on(host, control_net, mask=mask, block_weights=BLOCK_WEIGHTS)


def test_mask_and_block_weights_round_no_more_than_the_builtin(host, files, gpu_dtype, monkeypatch):
    """A soft mask, resized to each residual and applied in the GPU's dtype, with block weights:
    within twice the built-in's rounding of the same control in fp32."""
    step = one_latent_step()
    half = run_control(masked_control(host, host.suite_controlnet(files.original)), step)
    _, rounding = builtin_rounding(host, files, gpu_dtype, step, monkeypatch)  # models load in fp32 from here
    full = run_control(masked_control(host, host.suite_controlnet(files.original)), step)
    for i, (h, f, r) in enumerate(zip(half, full, rounding)):
        assert h.dtype == gpu_dtype
        assert relative_deviation(h, f) <= TWO_ROUNDINGS * r, f"residual {i}"


def test_sampling_with_a_half_precision_unet(host, files, gpu_dtype, monkeypatch):
    """A whole sampling run with the U-Net and the ControlNet in the GPU's dtype: ours ends
    within twice what half precision changes in the built-in's run (its ControlNet in the GPU's
    dtype against the same run with its ControlNet in fp32, the U-Net in the GPU's dtype in both)."""
    unet = host.tiny_model(gpu_dtype)
    plain = host.sample(host.positive, host.negative, model=unet)

    def with_builtin():
        net = host.builtin_controlnet(files.original)
        return host.sample(*apply_builtin(host, host.positive, host.negative, net), model=unet)

    ours_net = host.suite_controlnet(files.original)
    assert ours_net.loaded.model.dtype == gpu_dtype
    ours = host.sample(*apply_ours(host, host.positive, host.negative, ours_net), model=unet)
    builtin_half = with_builtin()
    answer_as_on(host, monkeypatch, torch.float32)
    builtin_full = with_builtin()

    assert torch.isfinite(ours).all()
    assert (builtin_half - plain).abs().max() > 1e-2  # the control shows in the result
    rounding = (builtin_half - builtin_full).abs().max().item()
    assert rounding > 0
    assert (ours - builtin_half).abs().max().item() <= TWO_ROUNDINGS * rounding
