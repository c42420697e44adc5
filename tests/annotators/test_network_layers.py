"""The faster stand-ins for standard layers in annotators/networks_common.py and the NormalBAE
refinement MLP: each equals the layer it replaces within float rounding (max pooling exactly),
in both memory layouts, with the same state-dict keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from annotators.networks_common import InstanceNorm2d, SingleChannelConv2d, max_pool_2x2
from annotators.normalbae import pointwise_mlp, refinement_mlp

# float32 sums of a few thousand terms, in another order: relative to the output's magnitude.
TOLERANCE = 1e-5
LAYOUTS = (torch.contiguous_format, torch.channels_last)


def assert_close_relative(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= TOLERANCE * scale


@pytest.mark.parametrize("layout", LAYOUTS)
def test_instance_norm_equals_torch_instance_norm(layout):
    generator = torch.Generator().manual_seed(0)
    x = (3.0 * torch.randn(2, 5, 13, 11, generator=generator) + 2.0).contiguous(
        memory_format=layout)
    reference = nn.InstanceNorm2d(5, affine=False, track_running_stats=False)
    got = InstanceNorm2d(5)(x)
    assert_close_relative(got, reference(x.contiguous()))
    assert got.is_contiguous(memory_format=layout)  # kept in the input's layout
    assert dict(InstanceNorm2d(5).state_dict()) == dict(reference.state_dict()) == {}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kernel, height, width", [(7, 19, 23), (3, 8, 5), (1, 4, 4)])
def test_single_channel_conv_equals_conv2d(layout, kernel, height, width):
    generator = torch.Generator().manual_seed(1)
    layer = SingleChannelConv2d(6, kernel)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator))
        layer.bias.copy_(torch.randn(1, generator=generator))
    x = torch.randn(2, 6, height, width, generator=generator).contiguous(memory_format=layout)
    with torch.no_grad():
        got = layer(x)
        expected = F.conv2d(x.contiguous(), layer.weight, layer.bias)
    assert_close_relative(got, expected)
    assert {key: value.shape for key, value in layer.state_dict().items()} == {
        key: value.shape for key, value in nn.Conv2d(6, 1, kernel).state_dict().items()}


def test_pointwise_mlp_equals_the_conv1d_stack():
    generator = torch.Generator().manual_seed(2)
    mlp = refinement_mlp(9)
    with torch.no_grad():
        for parameter in mlp.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
    pixels = torch.randn(2, 9, 37, generator=generator)  # batch x channels x pixels
    with torch.no_grad():
        expected = mlp(pixels.clone())  # Conv1d over channels x pixels, as the published model
        got = pointwise_mlp(mlp, pixels.transpose(1, 2).reshape(-1, 9))
    assert_close_relative(got.view(2, 37, -1).transpose(1, 2), expected)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("height, width", [(8, 6), (9, 7), (2, 3)])
def test_max_pool_2x2_is_exactly_max_pool2d(layout, height, width):
    x = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(3))
    x = x.contiguous(memory_format=layout)
    assert torch.equal(max_pool_2x2(x), F.max_pool2d(x, kernel_size=2, stride=2))
