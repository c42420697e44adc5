"""NormalBAE against controlnet-aux 0.0.10's NNET and NormalBaeDetector, with identical random
weights.

The oracle is built exactly as NormalBaeDetector.from_pretrained builds it (NNET with the "BN"
decoder); its EfficientNet comes from the vendored geffnet repo through a local torch.hub.load
with pretrained=False, so nothing is downloaded.

Random weights: convs N(0, 2/fan_in) (He), biases and BN shifts N(0, 0.1), BN scales
1 + N(0, 0.1). BN running statistics are those of the activations each BN sees on the test
photos, randomly jittered: arbitrary running statistics would not normalise anything, and 39
residual blocks would then grow the activations ~5000-fold (here they stay within a few units).
Each test checks its map is not degenerate: a flat map would match the oracle and prove nothing.
"""

from __future__ import annotations

import math
import os
import types

os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: the oracle must never reach the hub

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

aux_normalbae = pytest.importorskip("controlnet_aux.normalbae")
aux_nnet = pytest.importorskip("controlnet_aux.normalbae.nets.NNET")

from annotators.normalbae import (NORMALBAE_WEIGHTS, NormalBaeNetwork,  # noqa: E402
                                  load_normalbae, normalbae)
from annotators.weights import BadWeightsError  # noqa: E402

from .parity import ChannelsFirst, assert_levels_within_rounding  # noqa: E402
from .random_learned import assert_loaded, calibrate_batch_norms, run_in_a_fresh_interpreter  # noqa: E402

# Raw network outputs: equal within this, relative to the output's largest magnitude.
RAW_TOLERANCE = 1e-4
# A flat map has zero spread; the unit normals of a photo spread over a good part of -1..1.
MIN_NORMAL_STD = 0.05
MIN_MAP_LEVELS = 16  # distinct values per channel of a map that is not flat
# Sane activations give kappa of a few units; it reached ~800 when the BN statistics did not fit.
MAX_SANE_KAPPA = 100.0

# v1.1 / controlnet-aux NormalBaeDetector's NNET arguments ("BN" decoder; the sampling ratios
# only matter in training).
ORACLE_ARGS = types.SimpleNamespace(mode="client", architecture="BN", pretrained="scannet",
                                    sampling_ratio=0.4, importance_ratio=0.7)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's, as the oracle's transforms.Normalize
IMAGENET_STD = (0.229, 0.224, 0.225)

PHOTO = data.astronaut()  # 512x512 RGB, shipped with scikit-image
PHOTO_128 = cv2.resize(PHOTO, (128, 128), interpolation=cv2.INTER_AREA)
PHOTO_256 = cv2.resize(PHOTO, (256, 256), interpolation=cv2.INTER_AREA)  # = resize_for_detection
# Non-square, already at a detect size (128x192): nothing is resized on either side.
CAT = cv2.resize(data.chelsea()[:, :450], (192, 128), interpolation=cv2.INTER_AREA)


def oracle_input(rgb: np.ndarray) -> torch.Tensor:
    """NormalBaeDetector's pre-processing, in torch as it does it: /255, then Normalize."""
    x = torch.from_numpy(rgb).float().permute(2, 0, 1)[None] / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def calibration_batch() -> torch.Tensor:
    """The astronaut and two 128x128 crops of the cat: statistics from one image alone do not
    carry over to another (the deepest stages then grow ~100-fold on the other)."""
    crops = [PHOTO_128, CAT[:, :128], CAT[:, -128:]]
    return torch.cat([oracle_input(np.ascontiguousarray(crop)) for crop in crops])


def random_weights(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, value in template.items():
        if not value.is_floating_point():  # num_batches_tracked
            weights[key] = value.clone()
        elif key.endswith(("running_mean", "running_var")):
            weights[key] = value.clone()  # set by calibrate_batch_norms
        elif value.ndim >= 2:
            weights[key] = torch.randn(value.shape, generator=generator) * math.sqrt(
                2.0 / value[0].numel())
        elif key.endswith("weight"):
            weights[key] = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            weights[key] = 0.1 * torch.randn(value.shape, generator=generator)
    return weights


@pytest.fixture(scope="module")
def networks() -> tuple[torch.nn.Module, NormalBaeNetwork]:
    """(oracle NNET, our network), holding the same random weights."""
    oracle = aux_nnet.NNET(ORACLE_ARGS).eval()
    oracle.load_state_dict(random_weights(oracle.state_dict(), seed=0), strict=True)
    calibrate_batch_norms(oracle, calibration_batch(), seed=1)
    ours = NormalBaeNetwork().eval()
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle, ours


def assert_normals_not_flat(normals: torch.Tensor) -> None:
    """1x3xHxW unit normals: each component varies over the image."""
    spread = normals[0].flatten(1).std(dim=1)
    assert bool((spread > MIN_NORMAL_STD).all()), spread


def assert_map_not_flat(normal_map: np.ndarray) -> None:
    for channel in range(3):
        levels = len(np.unique(normal_map[:, :, channel]))
        assert levels > MIN_MAP_LEVELS, (channel, levels)


# --- raw outputs ------------------------------------------------------------------------------

def test_raw_output_equals_oracle(networks):
    oracle, ours = networks
    photo = PHOTO_128  # the non-square CAT is compared through the map below
    x = oracle_input(photo)
    with torch.no_grad():
        expected = oracle(x)[0][-1]  # the last (full-size) of the four predictions
        got = ours(x)
    assert got.shape == expected.shape == (1, 4) + photo.shape[:2]
    # normals (unit length, so at most 1) and kappa (positive, unbounded) separately, so a
    # large kappa cannot hide a wrong normal
    for channels in (slice(0, 3), slice(3, 4)):
        e, g = expected[:, channels], got[:, channels]
        scale = max(1.0, float(e.abs().max()))
        assert float((g - e).abs().max()) <= RAW_TOLERANCE * scale
    assert_normals_not_flat(expected[:, :3])
    assert float(expected[:, 3].max()) < MAX_SANE_KAPPA
    assert torch.allclose(expected[:, :3].norm(dim=1), torch.ones(1), atol=1e-5)


# --- post-processed maps against NormalBaeDetector ----------------------------------------------

# The detector's uint8 map truncates (n + 1) / 2 * 255, so any float difference at all could
# flip a level. Our pre- and post-processing around the oracle's own network give exactly its
# map. Our network runs the refinement MLPs as matrix products (the same sums in another order,
# equal within RAW_TOLERANCE), so its map is the oracle's within rounding (parity.py).
MAP_CASES = {
    # detected at 128, brought back to 256 (INTER_LINEAR) by us and by the oracle
    "resized": (lambda net: normalbae(PHOTO_256, net, resolution=128),
                lambda det: det(PHOTO_256, detect_resolution=128, image_resolution=256,
                                output_type="np")),
    # non-square, already at its detect size
    "non_square": (lambda net: normalbae(CAT, net, resolution=128),
                   lambda det: det(CAT, detect_resolution=128, image_resolution=128,
                                   output_type="np")),
}


@pytest.mark.parametrize("case", list(MAP_CASES))
def test_map_equals_oracle_detector(networks, case):
    oracle, ours = networks
    ours_call, oracle_call = MAP_CASES[case]
    expected = oracle_call(aux_normalbae.NormalBaeDetector(oracle))
    assert_map_not_flat(expected)
    full_size_prediction = ChannelsFirst(oracle, pick=lambda outputs: outputs[0][-1])
    np.testing.assert_array_equal(ours_call(full_size_prediction), expected)
    assert_levels_within_rounding(ours_call(ours), expected, RAW_TOLERANCE)


def test_odd_size_comes_back_at_the_input_size(networks):
    odd = PHOTO_128[:70, :90]  # not a multiple of 32: padded for the encoder, cropped back
    out = normalbae(odd, networks[1], resolution=None)
    assert out.shape == (70, 90, 3) and out.dtype == np.uint8
    assert_map_not_flat(out)


# --- loading the published file -----------------------------------------------------------------

def test_loader_reads_the_published_checkpoint(tmp_path, networks):
    oracle, ours = networks
    weights = oracle.state_dict()
    # surface_normal_uncertainty's train.py saves {"model": <DataParallel state dict>, "iter": n};
    # the key names are those of controlnet-aux's NNET, which loads the file strictly.
    folder = tmp_path / "annotators"
    folder.mkdir()
    torch.save({"model": {f"module.{key}": value for key, value in weights.items()},
                "iter": 12345}, folder / NORMALBAE_WEIGHTS)
    network = load_normalbae([str(tmp_path / "elsewhere"), str(folder)])
    assert_loaded(network, weights)


def test_loader_takes_a_plain_state_dict_and_is_strict(tmp_path):
    # A plain (unwrapped, unprefixed) state dict is read too; a partial one is refused.
    torch.save({"decoder.conv2.bias": torch.zeros(2048)}, tmp_path / NORMALBAE_WEIGHTS)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: "
                                           r'"encoder\.original_model\.conv_stem\.weight"'):
        load_normalbae([str(tmp_path)])


@pytest.mark.parametrize("content, message", [
    ({"iter": 3}, "'scannet.pt' holds no weight tensors"),
    ({"model": {"iter": 3}}, "'scannet.pt' holds no weight tensors"),
    (types.SimpleNamespace(a=1), "'scannet.pt' contains pickled Python objects other than tensors"),
])
def test_unusable_checkpoint_is_refused(tmp_path, content, message):
    torch.save(content, tmp_path / NORMALBAE_WEIGHTS)
    with pytest.raises(BadWeightsError, match=message):
        load_normalbae([str(tmp_path)])


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / NORMALBAE_WEIGHTS
    torch.save({"model": {"decoder.conv2.bias": torch.zeros(2048)}}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(BadWeightsError, match="'scannet.pt' cannot be read .* download it again"):
        load_normalbae([str(tmp_path)])


def test_runs_without_geffnet_timm_or_controlnet_aux():
    # A fresh interpreter: this module's oracle imports would otherwise already be loaded.
    code = (
        "import sys, numpy as np\n"
        "from annotators.normalbae import NormalBaeNetwork, normalbae\n"
        "normalbae(np.zeros((64, 64, 3), np.uint8), NormalBaeNetwork().eval(), resolution=None)\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "bad = sorted(loaded & {'geffnet', 'timm', 'controlnet_aux'})\n"
        "assert not bad, bad\n")
    run_in_a_fresh_interpreter(code)
