"""Large kernels on small CPU maps run as a matrix product (controlnet_core/cpu_conv.py).

The product is the same convolution summed in another order, so it is compared with F.conv2d
within fp32 rounding; the rule that picks it is checked case by case; and a whole model with
the rule forced on for every layer gives what the same model gives through F.conv2d.
"""

import pytest
import torch
import torch.nn.functional as F

from controlnet_core import ControlNet, cpu_conv, sd_config
from tests.core.tiny import randomize

# fp32 sums of up to a few thousand products: agreement to ~1e-6 of the output's magnitude; the
# bound is 1e-5 of the largest output, as for the other fp32 comparisons of the core.
RELATIVE_TOLERANCE = 1e-5
# 1280→1280 3×3, the deepest SD1.x/SD2.x kernel: 56 MiB in fp32, above glibc's 32 MiB.
DEEP_CHANNELS = 1280


def assert_close_to(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert expected.abs().max() > 1e-3, "the comparison would prove nothing"
    error = (got - expected).abs().max().item()
    assert error <= RELATIVE_TOLERANCE * expected.abs().max().item(), f"max error {error:.2e}"


@pytest.mark.parametrize(
    "batch, size, kernel, stride, padding, dilation, bias",
    [
        (1, (8, 8), 3, 1, 1, 1, True),
        (2, (8, 8), 3, 2, 1, 1, True),  # a Downsample
        (2, (5, 7), 3, 1, 1, 1, False),  # odd, non-square map, no bias
        (1, (9, 6), 3, 2, 1, 1, True),  # stride 2 on odd sides
        (3, (8, 8), 1, 1, 0, 1, True),  # a zero conv's shape
        (1, (10, 10), 3, 1, 2, 2, True),  # dilated
    ],
)
def test_matmul_equals_conv2d(batch, size, kernel, stride, padding, dilation, bias):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 24, *size, generator=gen)
    weight = torch.randn(16, 24, kernel, kernel, generator=gen)
    b = torch.randn(16, generator=gen) if bias else None
    expected = F.conv2d(x, weight, b, stride=stride, padding=padding, dilation=dilation)
    got = cpu_conv.conv2d_as_matmul(x, weight, b, (stride, stride), (padding, padding), (dilation, dilation))
    assert_close_to(got, expected)


@pytest.fixture
def glibc(monkeypatch):
    """The rule as it applies on a glibc machine with the default allocator settings."""
    monkeypatch.setattr(cpu_conv, "GLIBC_DYNAMIC_MMAP", True)


def deep_conv(**kw) -> torch.nn.Conv2d:
    return torch.nn.Conv2d(DEEP_CHANNELS, DEEP_CHANNELS, 3, padding=1, **kw)


def test_rule_takes_large_kernels_on_small_maps(glibc):
    layer = deep_conv(stride=2)
    assert cpu_conv.prefers_matmul(torch.zeros(1, DEEP_CHANNELS, 8, 8), layer.weight, layer)
    assert cpu_conv.prefers_matmul(torch.zeros(2, DEEP_CHANNELS, 16, 16), layer.weight, layer)  # 2·8·8 out
    layer = deep_conv()
    assert cpu_conv.prefers_matmul(torch.zeros(2, DEEP_CHANNELS, 16, 16), layer.weight, layer)  # 512 out


def test_rule_leaves_everything_else_to_torch(glibc):
    layer = deep_conv()
    large_map = torch.zeros(1, DEEP_CHANNELS, 32, 32)  # 1024 output pixels: oneDNN is faster
    assert not cpu_conv.prefers_matmul(large_map, layer.weight, layer)
    small = torch.nn.Conv2d(640, 640, 3, padding=1)  # 14 MiB: below the mmap threshold
    assert not cpu_conv.prefers_matmul(torch.zeros(1, 640, 8, 8), small.weight, small)
    x = torch.zeros(1, DEEP_CHANNELS, 8, 8)
    assert not cpu_conv.prefers_matmul(x.half(), layer.weight.half(), layer)  # 28 MiB in fp16
    assert not cpu_conv.prefers_matmul(x.bfloat16(), layer.weight.float(), layer)  # bf16 compute
    grouped = torch.nn.Conv2d(DEEP_CHANNELS, DEEP_CHANNELS * 2, 3, padding=1, groups=2)
    assert not cpu_conv.prefers_matmul(x, grouped.weight, grouped)


def test_rule_is_off_without_glibcs_dynamic_threshold(monkeypatch):
    monkeypatch.setattr(cpu_conv, "GLIBC_DYNAMIC_MMAP", False)
    layer = deep_conv()
    assert not cpu_conv.prefers_matmul(torch.zeros(1, DEEP_CHANNELS, 8, 8), layer.weight, layer)


def test_a_user_set_mmap_threshold_turns_the_rule_off(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1000000000")
    assert not cpu_conv.glibc_dynamic_mmap_threshold()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1000000000")
    assert not cpu_conv.glibc_dynamic_mmap_threshold()


def test_large_kernel_layer_runs_the_product_where_the_rule_says(glibc):
    torch.manual_seed(0)
    layer_class = cpu_conv.large_kernel_conv2d(torch.nn.Conv2d)
    layer = layer_class(DEEP_CHANNELS, DEEP_CHANNELS, 3, padding=1)
    plain = torch.nn.Conv2d(DEEP_CHANNELS, DEEP_CHANNELS, 3, padding=1)
    plain.load_state_dict(layer.state_dict())  # same keys, same weights
    with torch.no_grad():
        for side, matmul in ((8, True), (32, False)):
            x = torch.randn(1, DEEP_CHANNELS, side, side)
            got = layer(x)
            product = cpu_conv.conv2d_as_matmul(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
            assert torch.equal(got, product if matmul else plain(x)), f"{side}×{side}"
            assert_close_to(got, plain(x))


def test_whole_model_with_the_product_everywhere_matches_plain_convolutions(monkeypatch):
    """Every convolution of a small ControlNet forced onto the product (threshold 0) against
    the same model through F.conv2d (rule off); the product must really have run."""
    cfg = sd_config(model_channels=32, channel_mult=(1, 2, 2, 2), context_dim=16, head_channels=16)
    model = randomize(ControlNet(cfg), seed=2).eval()
    gen = torch.Generator().manual_seed(3)
    x, hint = torch.randn(2, 4, 8, 8, generator=gen), torch.rand(2, 3, 64, 64, generator=gen)
    t, context = torch.tensor([900.0, 30.0]), torch.randn(2, 5, 16, generator=gen)

    monkeypatch.setattr(cpu_conv, "GLIBC_DYNAMIC_MMAP", False)
    with torch.no_grad():
        expected = model(x, hint, t, context)

    calls = []
    product = cpu_conv.conv2d_as_matmul
    monkeypatch.setattr(cpu_conv, "conv2d_as_matmul", lambda *a: calls.append(1) or product(*a))
    monkeypatch.setattr(cpu_conv, "GLIBC_DYNAMIC_MMAP", True)
    monkeypatch.setattr(cpu_conv, "GLIBC_MAX_MMAP_THRESHOLD_BYTES", 0)
    monkeypatch.setattr(cpu_conv, "MATMUL_MAX_OUTPUT_PIXELS", 10**9)
    with torch.no_grad():
        got = model(x, hint, t, context)

    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert len(calls) == convs  # the hint (at 64×64) included: every conv ran as a product
    for g, e in zip(got, expected, strict=True):
        assert_close_to(g, e)
