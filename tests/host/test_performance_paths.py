"""The control object's fast paths give what the plain path gives.

The fast paths (bench/sampling.py measures them): the hint is encoded once per run, not at
every step; cond-only modes run the conditional rows only; cond and uncond rows of one latent
run once up to the first cross-attention; residuals are weighted and summed with earlier
controls in place; the model's activations stay contiguous. Each test builds the plain path
from the parts (the model's own `forward` with the raw hint, control_modes' copying functions,
`earlier + ours`) and compares. Where the fast path runs the same operations on the same
numbers, results must be bit-identical (torch.equal), not merely close; where it runs rows in a
smaller batch, they must agree to fp32 rounding.

Also here: a ControlNet stored in one dtype and computed in another (ComfyUI's manual_cast, as
`--fp16-unet` on a CPU gives) computes what the same weights, rounded to that dtype, compute in
fp32, and matches ComfyUI's built-in on the same file; and the large-kernel matrix product
(controlnet_core/cpu_conv.py) is reached through ComfyUI's weight-casting layers.
"""

import importlib

import pytest
import torch

from .test_control_object import COND_OR_UNCOND, builtin_control_on, control_on, flat, step_inputs

MODES = ["balanced", "prompt_more_important", "controlnet_more_important", "cfg_resolution_weighting"]
COND_ONLY = {"controlnet_more_important", "cfg_resolution_weighting"}
STRENGTH = 0.7
BLOCK_WEIGHTS = "0.5, 1, 1.5, 2, 0.25, 1, 1, 1, 1, 1, 0.3, 1, 2"
# Built-in vs ours on the same weights: they differ only in float rounding (different attention
# kernels); relative to each residual's largest magnitude.
KERNEL_TOLERANCE = 1e-5
# The same rows computed in a batch of another size (rows shared before the first cross-attention):
# CPU kernels block by batch size, so results agree to fp32 rounding, not bit for bit.
BATCH_ROUNDING = 1e-5
# fp16 keeps 11 significant bits: each weight moves by up to 2^-11 ≈ 4.9e-4 of itself; through
# the depth of the network the residuals move by well under 1e-2 of their magnitude.
FP16_WEIGHT_EFFECT = 1e-2


def plain_residuals(host, control, x, sigma, cond, rows=None):
    """What the control computes, the slow way: the model's forward with the hint image at the
    latent's size (encoded inside forward), then control_modes' copying weight function."""
    model = control.loaded.model
    sampling = host.model.model.model_sampling
    hint = host.comfy.utils.common_upscale(
        control.cond_hint_original, x.shape[-1] * 8, x.shape[-2] * 8, "nearest-exact", "center"
    )
    context = cond["c_crossattn"]
    if rows is not None:
        x, sigma, context = x[rows], sigma[rows], context[rows]
    modes = host.comfy_control.control_modes
    with torch.no_grad():
        raw = model(sampling.calculate_input(sigma, x), hint, sampling.timestep(sigma).float(), context)
    weights = modes.mode_weights(control.control_mode, control.strength, control._divisors(), control.block_weights)
    return modes.scale_residuals(raw, weights)


@pytest.mark.parametrize("mode", MODES)
def test_fast_path_is_bit_identical_to_the_plain_path(host, files, mode):
    control_net = host.suite_controlnet(files.original)
    control = control_on(host, control_net, mode, strength=STRENGTH, block_weights=BLOCK_WEIGHTS)
    x, sigma, cond = step_inputs(host)  # two different latents: no rows are shared (see below)
    try:
        with torch.no_grad():
            got = [flat(control.get_control(x, s, cond, 2, {"cond_or_uncond": COND_OR_UNCOND})) for s in (sigma, sigma / 2)]
    finally:
        control.cleanup()
    cond_rows = torch.tensor([i for i, kind in enumerate(COND_OR_UNCOND) if kind == 0])
    uncond_rows = torch.tensor([i for i, kind in enumerate(COND_OR_UNCOND) if kind == 1])
    for step, s in enumerate((sigma, sigma / 2)):  # the second step uses the cached hint encoding
        if mode in COND_ONLY:
            expected = plain_residuals(host, control, x, s, cond, rows=cond_rows)
            for i, (g, e) in enumerate(zip(got[step], expected)):
                assert torch.equal(g[cond_rows], e), f"step {step}, residual {i}"
                assert torch.count_nonzero(g[uncond_rows]) == 0, f"step {step}, residual {i}"
        else:
            expected = plain_residuals(host, control, x, s, cond)
            for i, (g, e) in enumerate(zip(got[step], expected)):
                assert e.abs().max() > 1e-3, f"residual {i} is trivially small"
                assert torch.equal(g, e), f"step {step}, residual {i}"


def test_residuals_are_contiguous(host, files):
    """A channels-last activation inside the model (a transposed view) would make every later
    convolution re-lay-out its weights at each call; the residuals show whether one leaked."""
    control_net = host.suite_controlnet(files.original)
    control = control_on(host, control_net)
    x, sigma, cond = step_inputs(host)
    with torch.no_grad():
        got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))
    assert all(r.is_contiguous() for r in got)


class FixedControl:
    """A previous control in a chain that returns fixed tensors, one of them in two entries
    (comfy.controlnet allows controls to share a tensor between entries)."""

    def __init__(self, residuals):
        shared = residuals[1]
        self.out = {"input": [], "middle": [residuals[-1]], "output": [residuals[0], shared, shared, *residuals[3:-1]]}

    def get_control(self, *args):
        return {key: list(value) for key, value in self.out.items()}

    def pre_run(self, *args):
        pass

    def cleanup(self):
        pass


def test_stacked_residuals_add_in_place_as_earlier_plus_ours(host, files):
    control_net, second = host.suite_controlnet(files.original), host.suite_controlnet(files.second)
    x, sigma, cond = step_inputs(host)
    options = {"cond_or_uncond": [0, 1]}
    gen = torch.Generator().manual_seed(5)
    alone = control_on(host, control_net, "prompt_more_important")
    with torch.no_grad():
        shapes = [r.shape for r in flat(alone.get_control(x, sigma, cond, 2, options))]
    earliest = FixedControl([torch.randn(s, generator=gen) for s in shapes])
    snapshot = {key: [t.clone() for t in value] for key, value in earliest.out.items()}

    first = control_on(host, control_net, "prompt_more_important")
    first.set_previous_controlnet(earliest)
    chained = control_on(host, second, "controlnet_more_important")
    chained.set_previous_controlnet(first)
    other = control_on(host, second, "controlnet_more_important")
    with torch.no_grad():
        got = flat(chained.get_control(x, sigma, cond, 2, options))
        ours_first = flat(alone.get_control(x, sigma, cond, 2, options))
        ours_second = flat(other.get_control(x, sigma, cond, 2, options))
    earliest_flat = flat(earliest.get_control())
    for i, (g, e, a, b) in enumerate(zip(got, earliest_flat, ours_first, ours_second)):
        assert a.abs().max() > 1e-3 and b.abs().max() > 1e-3
        assert torch.equal(g, (e + a) + b), f"residual {i}"
    for key, value in earliest.out.items():  # the earlier control's tensors are untouched
        assert all(torch.equal(t, s) for t, s in zip(value, snapshot[key])), key


def test_sum_that_does_not_fit_ours_is_not_written_in_place(host):
    add_into = host.comfy_control.add_into
    ours = torch.ones(1, 2, 3, 3, dtype=torch.float16)
    wider = torch.full((2, 2, 3, 3), 0.5, dtype=torch.float16)  # a larger batch than ours
    assert torch.equal(add_into(ours, wider), torch.full((2, 2, 3, 3), 1.5, dtype=torch.float16))
    finer = torch.full((1, 2, 3, 3), 0.25, dtype=torch.float32)  # promotes to fp32
    summed = add_into(ours, finer)
    assert summed.dtype == torch.float32 and torch.equal(summed, torch.full((1, 2, 3, 3), 1.25))
    assert torch.equal(ours, torch.ones(1, 2, 3, 3, dtype=torch.float16))  # neither wrote into ours
    same = torch.full((1, 2, 3, 3), 2.0, dtype=torch.float16)
    assert add_into(ours, same) is ours and torch.equal(ours, torch.full((1, 2, 3, 3), 3.0, dtype=torch.float16))


def test_a_sampling_run_does_each_piece_of_work_once(host, files):
    """Over a whole run with three stacked controls: each encodes its hint once; balanced runs
    the latent's row once up to the first cross-attention and both rows from there (CFG's cond
    and uncond hold the same latent), cond-only modes the conditional row only."""
    names = [files.original, files.second, files.original]
    modes = ["balanced", "controlnet_more_important", "cfg_resolution_weighting"]
    nets = [host.suite_controlnet(n) for n in names]
    rows = {i: [] for i in range(3)}  # (rows into the model, rows into its first cross-attention) per step
    encodes = {i: 0 for i in range(3)}
    handles = []
    for i, net in enumerate(nets):
        model = net.loaded.model
        first_cross_attention = next(m for name, m in model.named_modules() if name.endswith("attn2"))
        handles.append(model.register_forward_pre_hook(lambda m, a, i=i: rows[i].append((a[0].shape[0],))))
        handles.append(first_cross_attention.register_forward_pre_hook(
            lambda m, a, i=i: rows[i].append(rows[i].pop() + (a[0].shape[0],))))
        handles.append(model.input_hint_block.register_forward_pre_hook(
            lambda m, a, i=i: encodes.__setitem__(i, encodes[i] + 1)))
    stack = None
    for net, mode in zip(nets, modes):
        (stack,) = host.node("CNS_ControlStackEntry").add(net, host.image, 0.8, 0.0, 1.0, mode, control_stack=stack)
    steps = 3
    try:
        host.sample(*host.node("CNS_ApplyControlStack").apply(host.positive, host.negative, stack), steps=steps)
    finally:
        for h in handles:
            h.remove()
    assert encodes == {0: 1, 1: 1, 2: 1}
    assert rows == {0: [(1, 2)] * steps, 1: [(1, 1)] * steps, 2: [(1, 1)] * steps}


@pytest.mark.parametrize("mode", ["balanced", "prompt_more_important"])
def test_cond_and_uncond_of_one_latent_share_the_rows_before_cross_attention(host, files, mode):
    """ComfyUI's CFG batch: the same latent and sigma in the cond and uncond chunks. The model
    gets the latent once (seen at its input) and gives what the plain path gives for both rows,
    to fp32 rounding (a batch of 1 and one of 2 round differently on the CPU)."""
    control = control_on(host, host.suite_controlnet(files.original), mode)
    x, sigma, cond = step_inputs(host)
    x = x[:1].repeat(2, 1, 1, 1)
    rows_in = []
    hook = control.loaded.model.register_forward_pre_hook(lambda m, a: rows_in.append(a[0].shape[0]))
    try:
        with torch.no_grad():
            got = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": COND_OR_UNCOND}))
    finally:
        hook.remove()
        control.cleanup()
    assert rows_in == [1]
    expected = plain_residuals(host, control, x, sigma, cond)
    assert not torch.equal(expected[-1][0], expected[-1][1])  # the two contexts give different rows
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and e.abs().max() > 1e-3, f"residual {i}"
        error = (g - e).abs().max().item()
        assert error <= BATCH_ROUNDING * e.abs().max().item(), f"residual {i}: max error {error:.2e}"


def test_chunks_are_shared_only_when_every_input_repeats(host):
    same_chunks = host.comfy_control.same_chunks
    gen = torch.Generator().manual_seed(7)
    a, b = torch.randn(1, 4, 2, 2, generator=gen), torch.randn(1, 4, 2, 2, generator=gen)
    sigma = torch.full((4,), 3.0)
    assert same_chunks(2, torch.cat([a, b, a, b]), sigma, None)
    assert not same_chunks(2, torch.cat([a, b, b, a]), sigma, None)  # same rows, other order
    assert not same_chunks(2, torch.cat([a, b, a, b]), torch.tensor([3.0, 3.0, 3.0, 2.0]), None)
    y = torch.randn(4, 6, generator=gen)  # SDXL's pooled text differs between cond and uncond
    assert not same_chunks(2, torch.cat([a, b, a, b]), sigma, y)
    assert same_chunks(2, torch.cat([a, b, a, b]), sigma, y[:2].repeat(2, 1))


# --- stored in one dtype, computed in another (ComfyUI's manual_cast) ---------------------------

@pytest.fixture
def fp16_unet(host, monkeypatch):
    """ComfyUI started with --fp16-unet: models are stored in fp16; a CPU computes in fp32."""
    from comfy.cli_args import args

    monkeypatch.setattr(args, "fp16_unet", True)


def residuals_of(host, control_net, mode="balanced"):
    control = control_on(host, control_net, mode)
    x, sigma, cond = step_inputs(host)
    with torch.no_grad():
        return flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))


def test_fp16_storage_computes_in_the_dtype_comfyui_picks(host, files, fp16_unet):
    ours = host.suite_controlnet(files.original)
    builtin = host.comfy.controlnet.load_controlnet(str(host.models_dir / files.original))
    assert {p.dtype for p in ours.loaded.model.parameters()} == {torch.float16}
    assert {p.dtype for p in builtin.control_model.parameters()} == {torch.float16}
    assert builtin.manual_cast_dtype == torch.float32
    assert ours.loaded.model.compute_dtype == builtin.manual_cast_dtype
    assert all(r.dtype == torch.float32 for r in residuals_of(host, ours))


def test_fp16_storage_equals_fp32_with_fp16_rounded_weights(host, files, monkeypatch):
    from comfy.cli_args import args

    rounded = {f"control_model.{k}": v.half().float() for k, v in files.weights.items()}
    rounded_name = host.write("tiny_fp16_rounded.safetensors", rounded)
    fp32_rounded = residuals_of(host, host.suite_controlnet(rounded_name))
    fp32_exact = residuals_of(host, host.suite_controlnet(files.original))
    monkeypatch.setattr(args, "fp16_unet", True)
    fp16_stored = residuals_of(host, host.suite_controlnet(files.original))

    for i, (half, rounded_, exact) in enumerate(zip(fp16_stored, fp32_rounded, fp32_exact)):
        scale = exact.abs().max().item()
        # the same fp32 numbers; PyTorch may pick another kernel for a freshly cast weight
        to_rounded = (half - rounded_).abs().max().item()
        assert to_rounded <= KERNEL_TOLERANCE * scale, f"residual {i}"
        # ... and the fp16 rounding shows, within its bound
        to_exact = (half - exact).abs().max().item()
        assert to_rounded < to_exact <= FP16_WEIGHT_EFFECT * scale, f"residual {i}"


def test_fp16_storage_matches_the_builtin_on_the_same_file(host, files, fp16_unet):
    ours = residuals_of(host, host.suite_controlnet(files.original))
    control = builtin_control_on(host, host.builtin_controlnet(files.original))
    x, sigma, cond = step_inputs(host)
    with torch.no_grad():
        builtin = flat(control.get_control(x, sigma, cond, 2, {"cond_or_uncond": [0, 1]}))
    for i, (o, b) in enumerate(zip(ours, builtin)):
        assert o.dtype == b.dtype == torch.float32
        scale = b.abs().max().item()
        assert scale > 1e-3
        assert (o - b).abs().max().item() <= KERNEL_TOLERANCE * scale, f"residual {i}"


def test_fp16_storage_samples_like_the_builtin(host, files, fp16_unet):
    plain = host.sample(host.positive, host.negative)
    builtin_net = host.builtin_controlnet(files.original)
    builtin = host.sample(*host.nodes.ControlNetApplyAdvanced().apply_controlnet(
        host.positive, host.negative, builtin_net, host.image, 1.0, 0.0, 1.0))
    ours = host.sample(*host.node("CNS_ApplyControlNet").apply(
        host.positive, host.negative, host.suite_controlnet(files.original), host.image, 1.0, 0.0, 1.0, "balanced"))
    effect = (builtin - plain).abs().max().item()
    assert effect > 1e-2
    assert (ours - builtin).abs().max().item() <= 1e-4 * effect


def test_large_kernels_run_as_a_product_through_comfyuis_weight_casting(host, monkeypatch):
    """Our ControlNet's layers come from ComfyUI's ops; with fp16 weights on a CPU ComfyUI casts
    each kernel to fp32 per call (manual_cast). The large-kernel path must see the cast kernel:
    the layer gives exactly the product of the input and the fp32-cast weights (F.conv2d's
    oneDNN result differs in the last bits, so a layer that skipped the path would fail)."""
    cpu_conv = importlib.import_module(f"{host.pack.__name__}.controlnet_core.cpu_conv")
    monkeypatch.setattr(cpu_conv, "GLIBC_DYNAMIC_MMAP", True)
    channels = 1280  # 1280×1280×3×3: 56 MiB once cast to fp32
    layer = cpu_conv.large_kernel_conv2d(host.comfy.ops.manual_cast.Conv2d)(
        channels, channels, 3, padding=1, dtype=torch.float16
    )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen) * 0.01)
        layer.bias.copy_(torch.randn(channels, generator=gen))
        x = torch.randn(1, channels, 8, 8, generator=gen)
        got = layer(x)
        expected = cpu_conv.conv2d_as_matmul(
            x, layer.weight.float(), layer.bias.float(), layer.stride, layer.padding, layer.dilation
        )
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)
