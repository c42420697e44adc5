"""MiDaS DPT-Hybrid depth and normal maps against controlnet-aux 0.0.10 (its DPTDepthModel on
timm's vit_base_resnet50_384, and its MidasDetector), with identical random weights.

The oracle is constructed directly (pretrained=False) with sockets disabled, so nothing is
downloaded. Random weights are fan-in scaled (He) so activations stay of order one; the maps
are checked not to be degenerate, since two black maps would match and prove nothing. One
oracle and one of our networks (~123 M parameters each) are built per module and run at
192x128 only, to keep the test cheap.
"""

from __future__ import annotations

import math
import os
import socket

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: the oracle must never download

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

aux_midas = pytest.importorskip("controlnet_aux.midas")
aux_dpt = pytest.importorskip("controlnet_aux.midas.midas.dpt_depth")
timm_std_conv = pytest.importorskip("timm.layers.std_conv")
timm_pool = pytest.importorskip("timm.layers.pool2d_same")

from annotators.midas import (MIDAS_WEIGHTS, MiDaSNetwork, depth_to_maps,  # noqa: E402
                              load_midas, midas_depth, midas_depth_and_normal, midas_normal)
from annotators.midas_network import (WEIGHT_STANDARDIZATION_EPS,  # noqa: E402
                                      StandardizedConv2d, pad_same)

from .parity import ChannelsFirst, assert_levels_within_rounding  # noqa: E402

SEED = 0
# Raw outputs: equal within this, relative to the output's largest magnitude. This network in
# float32 and float64 differs by ~7e-5 on this input, so the bound is float32's own noise;
# ours is in fact bit-equal to the oracle (same torch ops in the same order).
RAW_TOLERANCE = 1e-4
# A 3:2 crop of the astronaut, at the sizes used below (height x width). 192x128 is a detect
# size already (multiples of 64), so at resolution 128 no resize happens; 384x256 is detected
# at 192x128 and brought back, exercising the whole pipeline.
PHOTO = data.astronaut()[:, 85:427]
PHOTO_192 = cv2.resize(PHOTO, (128, 192), interpolation=cv2.INTER_AREA)
PHOTO_384 = cv2.resize(PHOTO, (256, 384), interpolation=cv2.INTER_AREA)
DETECT = 128
MIN_DEPTH_LEVELS = 64          # a soft map of a photo: many grey levels, not a few
MIN_SHARE = 0.05               # background and foreground of the normal map each cover this
MIN_NORMAL_COLOURS = 256


def random_weights(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Same keys and shapes as `template`: conv/linear weights N(0, 2/fan_in) (He), norm scales
    1 + N(0, 0.1), biases, norm shifts, class token and position embeddings N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, value in template.items():
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("weight") and value.ndim >= 2:
            weights[key] = noise * math.sqrt(2.0 / value[0].numel())
        elif key.endswith("weight"):
            weights[key] = 1.0 + 0.1 * noise
        else:
            weights[key] = 0.1 * noise
    return weights


def _no_network(*args, **kwargs):
    raise AssertionError("the test tried to open a network connection")


def uninitialised(build) -> torch.nn.Module:
    """`build()` without its initial random draws (seconds at this size): made on the meta
    device, then given uninitialised CPU storage that a strict load fills completely."""
    with torch.device("meta"):
        network = build()
    return network.to_empty(device="cpu")


def build_oracle() -> torch.nn.Module:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        return uninitialised(lambda: aux_dpt.DPTDepthModel(
            path=None, backbone="vitb_rn50_384", non_negative=True))


@pytest.fixture(scope="module")
def networks() -> tuple[torch.nn.Module, MiDaSNetwork]:
    """(oracle, ours) holding the same random weights; the weights are the oracle's state."""
    oracle = build_oracle()
    oracle.load_state_dict(random_weights(oracle.state_dict(), SEED), strict=True)
    ours = uninitialised(MiDaSNetwork)
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle.eval(), ours.eval()


def network_input(rgb: np.ndarray) -> torch.Tensor:
    """MiDaS DPT input (formats_algorithms.md §3), written out independently: RGB / 127.5 - 1."""
    x = torch.from_numpy(rgb.astype(np.float32) / 127.5 - 1.0)
    return x.permute(2, 0, 1)[None]


# --- the network --------------------------------------------------------------------------------

def test_keys_and_shapes_are_the_published_ones(networks):
    oracle, ours = networks
    expected = {key: value.shape for key, value in oracle.state_dict().items()}
    got = {key: value.shape for key, value in ours.state_dict().items()}
    assert got == expected
    assert len(got) == 368  # formats_algorithms.md: 368 keys, 123.1 M parameters
    assert sum(math.prod(shape) for shape in got.values()) == 123_146_985


def test_raw_output_equals_oracle(networks):
    oracle, ours = networks
    x = network_input(PHOTO_192)
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert got.shape == expected.shape == (1, 192, 128)
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= RAW_TOLERANCE * scale
    # Not degenerate: ReLU'd depth with both zero and clearly positive regions, and variation.
    positive = float((expected > 0).float().mean())
    assert MIN_SHARE < positive < 1.0 - MIN_SHARE
    assert float(expected.std()) > 0.1 * scale


def test_network_refuses_sides_that_are_not_multiples_of_32(networks):
    _, ours = networks
    with pytest.raises(ValueError, match=r"MiDaS needs sides that are multiples of 32, got 80x64"):
        ours(torch.zeros(1, 3, 80, 64))


@pytest.mark.parametrize("stride, size", [(2, (33, 36)), (2, (34, 35)), (1, (9, 10))])
def test_standardized_conv_equals_timm_std_conv_same(stride, size):
    """Odd sizes and both strides (the full network only sees even sides at stride 2)."""
    torch.manual_seed(1)
    ours = StandardizedConv2d(4, 8, 3, stride).double()
    oracle = timm_std_conv.StdConv2dSame(4, 8, 3, stride=stride, eps=WEIGHT_STANDARDIZATION_EPS).double()
    oracle.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 4, *size, dtype=torch.float64)
    expected = oracle(x)
    assert expected.shape[-2:] == tuple(math.ceil(s / stride) for s in size)
    torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [(33, 36), (34, 35)])
def test_same_max_pool_equals_timm(size):
    x = torch.randn(1, 2, *size) - 10.0  # all negative: zero padding would win, -inf must not
    expected = timm_pool.MaxPool2dSame(3, 2)(x)
    got = torch.nn.functional.max_pool2d(pad_same(x, 3, 2, value=-math.inf), 3, 2)
    assert torch.equal(got, expected)


# --- post-processed maps against the oracle's detector ---------------------------------------

def assert_not_degenerate(depth: np.ndarray, normal: np.ndarray) -> None:
    assert len(np.unique(depth)) > MIN_DEPTH_LEVELS
    assert depth.min() <= 1 and depth.max() >= 254  # (d - min) / max spans the range
    # Background (drawn facing the camera) and sloped foreground both present.
    facing = np.all(normal == (255, 127, 127), axis=2)
    assert MIN_SHARE < float(facing.mean()) < 1.0 - MIN_SHARE
    colours = np.unique(normal[~facing].reshape(-1, 3), axis=0)
    assert len(colours) > MIN_NORMAL_COLOURS


def oracle_maps(oracle: torch.nn.Module, image: np.ndarray, image_resolution: int,
                **options) -> tuple[np.ndarray, np.ndarray]:
    return aux_midas.MidasDetector(oracle)(
        image, depth_and_normal=True, detect_resolution=DETECT,
        image_resolution=image_resolution, output_type="np", **options)


# Our pre- and post-processing repeat v1.0's float32 arithmetic, truncation included: around
# the oracle's own network they give exactly its maps. Our network runs its convolutions
# channels-last (the same sums in another order, equal within RAW_TOLERANCE), so its maps are
# the oracle's within rounding (parity.py).

def assert_normals_within_rounding(normal: np.ndarray, expected_normal: np.ndarray,
                                   expected_depth: np.ndarray, background_threshold: float) -> None:
    """As assert_levels_within_rounding, except where a pixel's relative depth lies at the
    background threshold: rounding may move it across (drawn facing the camera on one side,
    sloped on the other), so it may differ by more, and so may its neighbours once a bilinear
    resize has spread it."""
    threshold_level = background_threshold * 255  # the depth map is relative depth x 255
    at_threshold = np.abs(expected_depth[..., 0].astype(np.float32) - threshold_level) <= 2
    near_threshold = cv2.dilate(at_threshold.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    jumped = np.abs(normal.astype(np.int16) - expected_normal).max(axis=2) > 1
    assert not np.any(jumped & ~near_threshold)
    assert_levels_within_rounding(np.where(jumped[..., None], expected_normal, normal),
                                  expected_normal, RAW_TOLERANCE)


def test_depth_and_normal_with_defaults_equal_oracle(networks):
    """midas_depth / midas_normal with their defaults (ControlNet 1.0 gradio's threshold 0.4,
    a = 2*pi) on an image already at a detect size: no resize on either side."""
    oracle, ours = networks
    expected_depth, expected_normal = oracle_maps(oracle, PHOTO_192, DETECT, bg_th=0.4)
    assert_not_degenerate(expected_depth, expected_normal)
    oracle_network = ChannelsFirst(oracle)
    np.testing.assert_array_equal(midas_depth(PHOTO_192, oracle_network, DETECT), expected_depth)
    np.testing.assert_array_equal(midas_normal(PHOTO_192, oracle_network, DETECT), expected_normal)
    depth = midas_depth(PHOTO_192, ours, resolution=DETECT)
    normal = midas_normal(PHOTO_192, ours, resolution=DETECT)
    assert depth.shape == normal.shape == PHOTO_192.shape
    assert_levels_within_rounding(depth, expected_depth, RAW_TOLERANCE)
    assert_normals_within_rounding(normal, expected_normal, expected_depth, 0.4)
    assert np.array_equal(depth[..., 0], depth[..., 1]) and np.array_equal(depth[..., 0], depth[..., 2])


def test_both_maps_resized_back_with_options_equal_oracle(networks):
    """Detected at 192x128 and brought back to 384x256 (oracle: image_resolution=256), with
    controlnet-aux's own default threshold 0.1 and a steeper z (a = pi)."""
    oracle, ours = networks
    expected_depth, expected_normal = oracle_maps(oracle, PHOTO_384, 256, bg_th=0.1, a=math.pi)
    assert_not_degenerate(expected_depth, expected_normal)
    options = dict(background_threshold=0.1, z_component=math.pi)
    oracle_maps_ours = midas_depth_and_normal(PHOTO_384, ChannelsFirst(oracle), DETECT, **options)
    np.testing.assert_array_equal(oracle_maps_ours[0], expected_depth)
    np.testing.assert_array_equal(oracle_maps_ours[1], expected_normal)
    depth, normal = midas_depth_and_normal(PHOTO_384, ours, DETECT, **options)
    assert depth.shape == normal.shape == PHOTO_384.shape
    assert_levels_within_rounding(depth, expected_depth, RAW_TOLERANCE)
    assert_normals_within_rounding(normal, expected_normal, expected_depth, 0.1)


def test_odd_sizes_without_resolution_come_back_at_the_input_size(networks):
    _, ours = networks
    odd = PHOTO_192[:70, :90]  # not a multiple of 32: padded for the network, cropped back
    depth, normal = midas_depth_and_normal(odd, ours, resolution=None)
    assert depth.shape == normal.shape == (70, 90, 3)
    assert depth.min() == 0 and depth.max() == 255  # normalised over the crop, not the padding


def test_flat_depth_gives_black_depth_and_a_camera_facing_normal():
    depth_map, normal_map = depth_to_maps(np.full((4, 5), 3.0, dtype=np.float32))
    assert not depth_map.any()
    assert np.all(normal_map == (255, 127, 127))  # z = 1 -> 255 in R; x = y = 0 -> 127


@pytest.mark.parametrize("options, message", [
    ({"background_threshold": 1.5},
     "background_threshold is a share of the depth range and must lie in 0..1, got 1.5; "
     "0.4 is ControlNet 1.0's default"),
    ({"z_component": 0.0},
     "z_component must be > 0 (it sets how flat a slope looks), got 0.0; "
     "6.2832 (2*pi) is ControlNet 1.0's"),
])
def test_bad_options_are_refused_before_running(options, message):
    with pytest.raises(ValueError) as error:
        midas_normal(PHOTO_192, network=None, **options)  # type: ignore[arg-type]
    assert str(error.value) == message


# --- loading the published file ---------------------------------------------------------------

def test_loader_reads_the_published_keys_strictly(tmp_path, networks):
    oracle, _ = networks
    # Key names from controlnet-aux's model, which loads the published file strictly. Saved in
    # bfloat16 to halve the 490 MB the file would take (the loader casts; bf16 -> fp32 -> bf16
    # is exact, so the comparison below stays exact).
    weights = {key: value.to(torch.bfloat16) for key, value in oracle.state_dict().items()}
    folder = tmp_path / "annotators"
    folder.mkdir()
    incomplete = {key: value for key, value in weights.items()
                  if key != "scratch.output_conv.4.bias"}
    torch.save(incomplete, folder / MIDAS_WEIGHTS)
    with pytest.raises(RuntimeError,
                       match=r'Missing key\(s\) in state_dict: "scratch\.output_conv\.4\.bias"'):
        load_midas([str(folder)])
    torch.save(weights, folder / MIDAS_WEIGHTS)
    network = load_midas([str(tmp_path / "elsewhere"), str(folder)], dtype=torch.bfloat16)
    assert not network.training
    loaded = network.state_dict()
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        assert loaded[key].dtype == torch.bfloat16
        assert torch.equal(loaded[key], value), key
