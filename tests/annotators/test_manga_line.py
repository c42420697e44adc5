"""Manga line (`erika.pth`, v1.1 "lineart_anime_denoise"). No package implements it (it is not
in controlnet-aux 0.0.10), so instead of an oracle the tests check:
  - key names and shapes against a list derived here from A1111 `annotator/manga_line`'s
    module tree (res_skip -> _residual_block / _upsampling_residual_block -> basic_block ...);
  - one residual unit against torch.nn.functional written out step by step;
  - the whole wiring with hand-set weights that make the network's output a closed form;
  - the input/output contract: gray 0..255 in, 255 - out clipped, multiples of 16, sizes.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from annotators.manga_line import (MANGA_LINE_WEIGHTS, MangaLineNetwork, ResidualUnit,
                                   load_manga_line, manga_line, manga_line_gray)

from .random_learned import assert_loaded

PHOTO = data.astronaut()  # 512x512 RGB, shipped with scikit-image
PHOTO_128 = cv2.resize(PHOTO, (128, 128), interpolation=cv2.INTER_AREA)
GRAY_128 = cv2.cvtColor(PHOTO_128, cv2.COLOR_RGB2GRAY)

# The count formats_algorithms.md §3 gives for erika.pth, measured on a random-init state dict.
PUBLISHED_KEY_COUNT = 707
PUBLISHED_PARAMETER_MILLIONS = 43.1  # same table, BN buffers included
BN_EPS = 1e-3

# --- published key list -----------------------------------------------------------------------

# A1111 res_skip.__init__, read off the source: (attribute, class, in_filters, nb_filters,
# repetitions, is_first_layer). res1..res4 are `_shortcut(n, n)` with equal channels and no
# subsample: process=False, model=None, so they hold no weights.
RES_SKIP = (
    ("block0", "residual", 1, 24, 2, True),
    ("block1", "residual", 24, 48, 3, False),
    ("block2", "residual", 48, 96, 5, False),
    ("block3", "residual", 96, 192, 7, False),
    ("block4", "residual", 192, 384, 12, False),
    ("block5", "upsampling", 384, 192, 7, False),
    ("block6", "upsampling", 192, 96, 5, False),
    ("block7", "upsampling", 96, 48, 3, False),
    ("block8", "upsampling", 48, 24, 2, False),
    ("block9", "residual", 24, 16, 2, True),
)


def bn_relu_conv_keys(prefix: str, in_filters: int, nb_filters: int, kernel: int) -> dict:
    """_bn_relu_conv / _u_bn_relu_conv: model.0 BatchNorm2d, model.1 LeakyReLU, model.2 Conv2d
    (model.3 Upsample in the _u_ variant holds nothing)."""
    return {
        f"{prefix}.model.0.weight": (in_filters,), f"{prefix}.model.0.bias": (in_filters,),
        f"{prefix}.model.0.running_mean": (in_filters,),
        f"{prefix}.model.0.running_var": (in_filters,),
        f"{prefix}.model.0.num_batches_tracked": (),
        f"{prefix}.model.2.weight": (nb_filters, in_filters, kernel, kernel),
        f"{prefix}.model.2.bias": (nb_filters,),
    }


def published_keys() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {}
    for name, kind, in_filters, nb_filters, repetitions, is_first_layer in RES_SKIP:
        for i in range(repetitions):
            unit_in = in_filters if i == 0 else nb_filters
            prefix = f"{name}.model.{i}"
            if kind == "residual":
                # _residual_block: init_subsample 2 on the last repetition unless first layer;
                # basic_block's _shortcut has a conv when channels or subsample change.
                subsample = 2 if i == repetitions - 1 and not is_first_layer else 1
                has_conv = unit_in != nb_filters or subsample != 1
            else:
                # _upsampling_residual_block: repetition 0 is _u_basic_block, whose _u_shortcut
                # has a conv when the channels change; the rest are plain basic_blocks.
                has_conv = unit_in != nb_filters
            keys.update(bn_relu_conv_keys(f"{prefix}.conv1", unit_in, nb_filters, 3))
            keys.update(bn_relu_conv_keys(f"{prefix}.residual", nb_filters, nb_filters, 3))
            if has_conv:
                keys[f"{prefix}.shortcut.model.0.weight"] = (nb_filters, unit_in, 1, 1)
                keys[f"{prefix}.shortcut.model.0.bias"] = (nb_filters,)
    keys.update(bn_relu_conv_keys("conv15", 16, 1, 1))
    return keys


def test_state_dict_matches_the_published_key_list():
    expected = published_keys()
    assert len(expected) == PUBLISHED_KEY_COUNT
    got = {key: tuple(value.shape) for key, value in MangaLineNetwork().state_dict().items()}
    assert got == expected
    floats = sum(v.numel() for v in MangaLineNetwork().state_dict().values() if v.is_floating_point())
    assert round(floats / 1e6, 1) == PUBLISHED_PARAMETER_MILLIONS


# --- one residual unit against torch.nn.functional ---------------------------------------------

def randomise(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if not value.is_floating_point():
                continue
            if key.endswith("running_var"):
                value.copy_(0.5 + torch.rand(value.shape, generator=generator))
            elif value.ndim >= 2:
                value.copy_(torch.randn(value.shape, generator=generator)
                            * math.sqrt(2.0 / value[0].numel()))
            else:
                value.copy_(torch.randn(value.shape, generator=generator) * 0.3
                            + (1.0 if key.endswith(".0.weight") else 0.0))


def functional_pre_activation(x, state, prefix, stride=1, upsample=False):
    """BN (eval, eps 1e-3) -> LeakyReLU(0.2) -> conv with padding k//2 [-> nearest x2]."""
    bn = f"{prefix}.model.0"
    x = (x - state[f"{bn}.running_mean"].view(1, -1, 1, 1)) / torch.sqrt(
        state[f"{bn}.running_var"].view(1, -1, 1, 1) + BN_EPS)
    x = x * state[f"{bn}.weight"].view(1, -1, 1, 1) + state[f"{bn}.bias"].view(1, -1, 1, 1)
    x = torch.where(x >= 0, x, 0.2 * x)
    weight = state[f"{prefix}.model.2.weight"]
    x = F.conv2d(x, weight, state[f"{prefix}.model.2.bias"], stride=stride,
                 padding=weight.shape[-1] // 2)
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3) if upsample else x


@pytest.mark.parametrize("in_channels, out_channels, stride, upsample", [
    (24, 48, 2, False),   # an encoder stage's last unit: strided, projected shortcut
    (48, 48, 1, False),   # a plain unit: identity shortcut
    (96, 48, 1, True),    # a decoder stage's first unit: upsampled, projected shortcut
])
def test_residual_unit_equals_functional_composition(in_channels, out_channels, stride, upsample):
    unit = ResidualUnit(in_channels, out_channels, stride, upsample).eval()
    randomise(unit, seed=in_channels + out_channels)
    state = unit.state_dict()
    x = torch.randn(1, in_channels, 12, 20, generator=torch.Generator().manual_seed(5))
    branch = functional_pre_activation(x, state, "conv1", stride, upsample)
    branch = functional_pre_activation(branch, state, "residual")
    if "shortcut.model.0.weight" in state:
        shortcut = F.conv2d(x, state["shortcut.model.0.weight"], state["shortcut.model.0.bias"],
                            stride=stride)
        if upsample:
            shortcut = shortcut.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    else:
        shortcut = x
    expected = shortcut + branch
    with torch.no_grad():
        got = unit(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert float(branch.abs().mean()) > 0.1  # the branch really contributes


# --- the whole wiring, with weights that give a closed form --------------------------------------

READOUT_GAIN = 0.25   # conv15 scales the sum of five levels back to about the input's range
# ... and shifts it so that both ends of the map clip on the photo. The output is then a
# multiple of 1/4 plus 1/8, never within float error of an integer, so the truncation to uint8
# is the same in float32 (the network) and float64 (the closed form).
READOUT_BIAS = -20.125


def pass_through_weights() -> dict[str, torch.Tensor]:
    """Every residual branch zero (so each unit is its shortcut), every projection the channel
    mean (so all channels carry the same map), conv15's BN the identity and its conv the
    channel mean x READOUT_GAIN + READOUT_BIAS. The network then computes, with x[::2, ::2] for
    a stride-2 1x1 conv and nearest x2 for upsampling:
        r4 = g/16, r_k = g/2^k + up(r_{k+1}) (the skip sums), out = GAIN * r0 + BIAS
    where g/2^k is the gray image subsampled k times."""
    weights = {}
    for key, value in MangaLineNetwork().state_dict().items():
        weights[key] = torch.zeros_like(value)
        if key.endswith("running_var"):
            weights[key] = torch.ones_like(value)
        if key.endswith("shortcut.model.0.weight"):
            weights[key] = torch.full_like(value, 1.0 / value.shape[1])
    weights["conv15.model.0.weight"] = torch.ones(16)
    weights["conv15.model.0.running_var"] = torch.full((16,), 1.0 - BN_EPS)
    weights["conv15.model.2.weight"] = torch.full((1, 16, 1, 1), READOUT_GAIN / 16)
    weights["conv15.model.2.bias"] = torch.tensor([READOUT_BIAS])
    return weights


def closed_form_output(gray: np.ndarray) -> np.ndarray:
    levels = [gray.astype(np.float64)]
    for _ in range(4):
        levels.append(levels[-1][::2, ::2])
    total = levels[-1]
    for level in reversed(levels[:-1]):
        total = level + np.repeat(np.repeat(total, 2, axis=0), 2, axis=1)
    return READOUT_GAIN * total + READOUT_BIAS


@pytest.fixture(scope="module")
def pass_through() -> MangaLineNetwork:
    network = MangaLineNetwork()
    network.load_state_dict(pass_through_weights(), strict=True)
    return network.eval()


def test_network_wiring_matches_closed_form(pass_through):
    with torch.no_grad():
        got = pass_through(torch.from_numpy(GRAY_128.astype(np.float32))[None, None])
    expected = closed_form_output(GRAY_128)
    np.testing.assert_allclose(got[0, 0].numpy(), expected, rtol=1e-5, atol=1e-3)


def expected_map(gray: np.ndarray) -> np.ndarray:
    """A1111: 255 - out, clipped to 0..255, truncated to uint8."""
    return np.clip(255.0 - closed_form_output(gray), 0, 255).astype(np.uint8)


def test_map_is_inverted_and_clipped(pass_through):
    expected = expected_map(GRAY_128)
    # Both clip ends are reached on this photo, so clipping and inversion are both exercised.
    raw = 255.0 - closed_form_output(GRAY_128)
    assert raw.min() < 0 and raw.max() > 255
    got = manga_line(PHOTO_128, pass_through, resolution=None)
    assert got.dtype == np.uint8 and got.shape == (128, 128, 3)
    assert np.array_equal(got[:, :, 0], got[:, :, 1]) and np.array_equal(got[:, :, 0], got[:, :, 2])
    np.testing.assert_array_equal(got[:, :, 0], expected)


def test_sides_not_multiple_of_16_are_edge_padded_then_cropped(pass_through):
    gray = GRAY_128[:70, :90]  # 70 = 4*16 + 6, 90 = 5*16 + 10
    padded = np.pad(gray, ((0, 80 - 70), (0, 96 - 90)), mode="edge")  # repeat last row/column
    expected = expected_map(padded)[:70, :90]
    got = manga_line_gray(gray, pass_through)
    assert got.shape == (70, 90)
    np.testing.assert_array_equal(got, expected)


def test_zero_network_draws_no_lines():
    network = MangaLineNetwork()
    network.load_state_dict({k: torch.zeros_like(v) for k, v in network.state_dict().items()})
    out = manga_line(PHOTO_128, network.eval(), resolution=None)
    assert np.all(out == 255)  # out = 0 everywhere, 255 - 0: a blank (white) page


# --- a photo through random weights -----------------------------------------------------------

RANDOM_READOUT_GAIN = 0.2      # found by trying: the random net's output std is ~300
RANDOM_BRANCH_GAIN = 0.2       # keeps 48 residual units from compounding into overflow
PHOTO_GRAY_MEAN, PHOTO_GRAY_STD = 128.0, 64.0  # what a trained first BN would hold for 0..255


@pytest.fixture(scope="module")
def random_network() -> MangaLineNetwork:
    network = MangaLineNetwork()
    randomise(network, seed=0)
    with torch.no_grad():
        state = network.state_dict()
        state["block0.model.0.conv1.model.0.running_mean"].fill_(PHOTO_GRAY_MEAN)
        state["block0.model.0.conv1.model.0.running_var"].fill_(PHOTO_GRAY_STD ** 2)
        state["block0.model.0.shortcut.model.0.weight"].div_(PHOTO_GRAY_STD)
        for key, value in state.items():
            if key.endswith(".residual.model.2.weight"):
                value.mul_(RANDOM_BRANCH_GAIN)
        state["conv15.model.2.weight"].mul_(RANDOM_READOUT_GAIN)
        state["conv15.model.2.bias"].fill_(128.0)
    return network.eval()


MIN_LEVELS = 64


def test_photo_gives_a_non_degenerate_map_at_its_size(random_network):
    odd = PHOTO[:300, :420]
    out = manga_line(odd, random_network, resolution=128)
    assert out.shape == (300, 420, 3) and out.dtype == np.uint8
    assert len(np.unique(out)) > MIN_LEVELS
    assert 0.05 < float(np.mean(out < 128)) < 0.95


def test_detect_resolution_runs_the_network_at_multiples_of_64(random_network):
    # resolution=128 on 300x420 -> 128x192 (image.detection_size): the map equals running the
    # network on that resize ourselves and bringing it back linearly.
    resized = cv2.resize(PHOTO[:300, :420], (192, 128), interpolation=cv2.INTER_AREA)
    at_detect = manga_line_gray(cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY), random_network)
    expected = cv2.resize(at_detect, (420, 300), interpolation=cv2.INTER_LINEAR)
    got = manga_line(PHOTO[:300, :420], random_network, resolution=128)
    assert np.array_equal(got[:, :, 0], expected)


# --- loading ------------------------------------------------------------------------------------

def random_state(seed: int) -> dict[str, torch.Tensor]:
    network = MangaLineNetwork()
    randomise(network, seed)
    return {k: v.clone() for k, v in network.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module."])  # A1111 strips a DataParallel prefix too
def test_loader_reads_the_published_file(tmp_path, prefix):
    weights = random_state(1)
    torch.save({prefix + k: v for k, v in weights.items()}, tmp_path / MANGA_LINE_WEIGHTS)
    network = load_manga_line([str(tmp_path / "elsewhere"), str(tmp_path)], dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in network.parameters())
    assert_loaded(network.float(), weights)


def test_loader_accepts_a_file_without_batch_counters(tmp_path):
    # A file converted from Keras may lack BN's num_batches_tracked; torch fills it in.
    weights = {k: v for k, v in random_state(2).items() if not k.endswith("num_batches_tracked")}
    torch.save(weights, tmp_path / MANGA_LINE_WEIGHTS)
    network = load_manga_line([str(tmp_path)])
    assert torch.equal(network.state_dict()["conv15.model.2.weight"], weights["conv15.model.2.weight"])


def test_loader_is_strict(tmp_path):
    weights = random_state(3)
    del weights["block4.model.11.shortcut.model.0.bias"]
    torch.save(weights, tmp_path / MANGA_LINE_WEIGHTS)
    with pytest.raises(RuntimeError,
                       match=r'Missing key\(s\) in state_dict: "block4\.model\.11\.shortcut\.model\.0\.bias"'):
        load_manga_line([str(tmp_path)])
