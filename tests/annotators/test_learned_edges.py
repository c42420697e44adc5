"""Learned edge annotators (HED, PiDiNet, line art, anime line art, M-LSD) against the
controlnet-aux 0.0.10 networks and detectors, with identical random weights.

Random weights are drawn with fan-in scaling (He init) so activations neither vanish nor blow
up, and each test asserts its map is not degenerate (several values, edges and background
both present): a map of all zeros would match the oracle and prove nothing. The oracle's
networks are constructed directly and its detectors wrapped around them; nothing is downloaded.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import pytest
import torch
from skimage import data

aux_hed = pytest.importorskip("controlnet_aux.hed")
aux_pidi = pytest.importorskip("controlnet_aux.pidi")
aux_pidi_model = pytest.importorskip("controlnet_aux.pidi.model")
aux_lineart = pytest.importorskip("controlnet_aux.lineart")
aux_anime = pytest.importorskip("controlnet_aux.lineart_anime")
aux_mlsd = pytest.importorskip("controlnet_aux.mlsd")
aux_mlsd_model = pytest.importorskip("controlnet_aux.mlsd.models.mbv2_mlsd_large")

from annotators.hed import HED_WEIGHTS, HEDNetwork, hed, load_hed  # noqa: E402
from annotators.lineart import (LINEART_COARSE_WEIGHTS, LINEART_WEIGHTS,  # noqa: E402
                                LineartNetwork, lineart, load_lineart)
from annotators.lineart_anime import (LINEART_ANIME_WEIGHTS, AnimeLineartNetwork,  # noqa: E402
                                      lineart_anime, load_lineart_anime)
from annotators.mlsd import MLSD_WEIGHTS, MLSDNetwork, load_mlsd, mlsd  # noqa: E402
from annotators.pidinet import PIDINET_WEIGHTS, PiDiNetNetwork, load_pidinet, pidinet  # noqa: E402

from .parity import ChannelsFirst, assert_levels_within_rounding  # noqa: E402
from .random_learned import assert_loaded  # noqa: E402

# Raw network outputs: equal within this, relative to the output's largest magnitude.
RAW_TOLERANCE = 1e-4
MIN_RAW_STD = 0.01  # outputs are probabilities or logits of order 1: flat would be far below

PHOTO = data.astronaut()  # 512x512 RGB, shipped with scikit-image
PHOTO_256 = cv2.resize(PHOTO, (256, 256), interpolation=cv2.INTER_AREA)  # = resize_for_detection
PHOTO_128 = cv2.resize(PHOTO, (128, 128), interpolation=cv2.INTER_AREA)


# --- random weights and the oracle's networks ---------------------------------------------------

def random_weights(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """A state dict with `template`'s keys and shapes: conv weights N(0, 2/fan_in) (He), biases
    and BN shifts N(0, 0.1), BN scales 1 + N(0, 0.1), running variances in 0.5..1.5."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, value in template.items():
        if not value.is_floating_point():  # num_batches_tracked
            weights[key] = value.clone()
            continue
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("running_var"):
            weights[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif value.ndim >= 2:
            weights[key] = noise * math.sqrt(2.0 / value[0].numel())
        elif key.endswith("weight"):
            weights[key] = 1.0 + 0.1 * noise
        else:
            weights[key] = 0.1 * noise
    return weights


def oracle_anime() -> torch.nn.Module:
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return aux_anime.UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)


ORACLES = {
    "hed": aux_hed.ControlNetHED_Apache2,
    "pidinet": aux_pidi_model.pidinet,
    "lineart": lambda: aux_lineart.Generator(3, 1, 3),
    "lineart_anime": oracle_anime,
    "mlsd": aux_mlsd_model.MobileV2_MLSD_Large,
}
OURS = {"hed": HEDNetwork, "pidinet": PiDiNetNetwork, "lineart": LineartNetwork,
        "lineart_anime": AnimeLineartNetwork, "mlsd": MLSDNetwork}
SEEDS = {"hed": 0, "pidinet": 1, "lineart": 2, "lineart_anime": 3, "mlsd": 4}


HED_MEAN_COLOUR = (123.0, 117.0, 104.0)  # a typical photo mean (the ImageNet one, x255)
HED_INPUT_SCALE = 64.0                   # 0..255 minus the mean is about +-64 on a photo
PIDINET_READOUT_SCALE = 0.01             # found by trying: the map spans 0..255 with mid-tones


def make_weights(name: str) -> dict[str, torch.Tensor]:
    weights = random_weights(ORACLES[name]().state_dict(), SEEDS[name])
    if name == "hed":
        # HED takes 0..255 and subtracts a learned mean colour: give it a plausible one, and
        # bring the first conv to the 0..1 scale He init assumes (else the sigmoid saturates).
        weights["norm"] = torch.tensor(HED_MEAN_COLOUR).view(1, 3, 1, 1)
        weights["block1.convs.0.weight"] /= HED_INPUT_SCALE
    if name == "pidinet":
        # 16 residual blocks without normalisation grow the features; scale the per-stage
        # read-outs down so the fused sigmoid is not all 0 and 1 (safe needs its middle level).
        for stage in range(4):
            weights[f"conv_reduces.{stage}.conv.weight"] *= PIDINET_READOUT_SCALE
    return weights


@pytest.fixture(scope="module")
def networks() -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """name -> (oracle network, our network), both holding the same random weights."""
    pairs = {}
    for name in ORACLES:
        weights = make_weights(name)
        oracle, ours = ORACLES[name](), OURS[name]()
        oracle.load_state_dict(weights, strict=True)
        ours.load_state_dict(weights, strict=True)
        pairs[name] = (oracle.eval(), ours.eval())
    return pairs


# --- raw outputs ------------------------------------------------------------------------------

def network_input(name: str, rgb: np.ndarray) -> torch.Tensor:
    """Each network's input convention (formats_algorithms.md §3), written out independently."""
    if name == "hed":
        x = rgb.astype(np.float32)                                  # RGB 0..255
    elif name == "pidinet":
        x = rgb[:, :, ::-1].astype(np.float32) / 255.0              # BGR 0..1
    elif name == "lineart":
        x = rgb.astype(np.float32) / 255.0                          # RGB 0..1
    elif name == "lineart_anime":
        x = rgb.astype(np.float32) / 127.5 - 1.0                    # RGB -1..1
    else:                                                           # M-LSD: RGB + ones, -1..1
        x = np.concatenate([rgb, np.ones(rgb.shape[:2] + (1,))], axis=2).astype(np.float32)
        x = x / 127.5 - 1.0
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]


def as_list(outputs) -> list[torch.Tensor]:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


@pytest.mark.parametrize("name", list(ORACLES))
def test_raw_outputs_equal_oracle(networks, name):
    oracle, ours = networks[name]
    # The anime U-Net needs multiples of 256 (its 1x1 bottleneck cannot be normalised smaller).
    x = network_input(name, PHOTO_256 if name == "lineart_anime" else PHOTO_128)
    with torch.no_grad():
        expected, got = as_list(oracle(x)), as_list(ours(x))
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        assert g.shape == e.shape
        scale = max(1.0, float(e.abs().max()))
        assert float((g - e).abs().max()) <= RAW_TOLERANCE * scale
    # The output the annotator uses (HED: all five; PiDiNet: the fused last) is not flat.
    assert float(expected[-1].std()) > MIN_RAW_STD


# --- post-processed maps against the oracle's detectors ------------------------------------------

SOFT, SAFE, BINARY = "soft", "safe", "binary"
LEVELS = {SAFE: {0, 127, 255}, BINARY: {0, 255}}  # safe: {0, 0.5, 1} x 255, truncated
MIN_LEVEL_FRACTION = 0.002   # each level must cover at least this share of the pixels
MIN_SOFT_LEVELS = 16


def assert_not_degenerate(result: np.ndarray, kind: str) -> None:
    values = np.unique(result)
    if kind == SOFT:
        assert len(values) > MIN_SOFT_LEVELS, f"only {len(values)} levels"
        return
    assert set(values.tolist()) == LEVELS[kind]
    for value in values:
        assert float(np.mean(result == value)) >= MIN_LEVEL_FRACTION, value


# case id -> (our call, oracle call, kind of map); the id starts with the network's name.
# Soft maps: the photo is detected at a smaller resolution and brought back to its size, by us
# (run_at_resolution, INTER_LINEAR) and by the oracle (image_resolution = the photo's size), so
# the whole pipeline is compared. Safe, scribble and M-LSD maps are compared on an image already
# at the detect size: controlnet-aux applies scribble after resizing to image_resolution where
# v1.1 gradio (and we) apply it at the detect resolution, and it brings M-LSD's binary lines
# back with INTER_LINEAR where we use INTER_NEAREST.
MAP_CASES = {
    "hed": (lambda net: hed(PHOTO_256, net, resolution=128),
            lambda net: aux_hed.HEDdetector(net)(PHOTO_256, 128, 256, output_type="np"), SOFT),
    "hed_safe": (lambda net: hed(PHOTO_128, net, resolution=128, safe=True),
                 lambda net: aux_hed.HEDdetector(net)(PHOTO_128, 128, 128, safe=True,
                                                      output_type="np"), SAFE),
    "hed_scribble": (lambda net: hed(PHOTO_128, net, resolution=128, scribble=True),
                     lambda net: aux_hed.HEDdetector(net)(PHOTO_128, 128, 128, scribble=True,
                                                          output_type="np"), BINARY),
    "pidinet": (lambda net: pidinet(PHOTO_256, net, resolution=128),
                lambda net: aux_pidi.PidiNetDetector(net)(PHOTO_256, 128, 256, output_type="np"),
                SOFT),
    "pidinet_safe": (lambda net: pidinet(PHOTO_128, net, resolution=128, safe=True),
                     lambda net: aux_pidi.PidiNetDetector(net)(PHOTO_128, 128, 128, safe=True,
                                                               output_type="np"), SAFE),
    "pidinet_scribble": (lambda net: pidinet(PHOTO_128, net, resolution=128, scribble=True),
                         lambda net: aux_pidi.PidiNetDetector(net)(
                             PHOTO_128, 128, 128, scribble=True, output_type="np"), BINARY),
    "lineart": (lambda net: lineart(PHOTO_256, net, resolution=128),
                lambda net: aux_lineart.LineartDetector(net, net)(
                    PHOTO_256, detect_resolution=128, image_resolution=256, output_type="np"),
                SOFT),
    # Detected at 128, run by the network at 256 (the next multiple of 256), brought back.
    "lineart_anime": (lambda net: lineart_anime(PHOTO_256, net, resolution=128),
                      lambda net: aux_anime.LineartAnimeDetector(net)(
                          PHOTO_256, detect_resolution=128, image_resolution=256,
                          output_type="np"), SOFT),
    "mlsd": (lambda net: mlsd(PHOTO_128, net, resolution=128),
             lambda net: aux_mlsd.MLSDdetector(net)(PHOTO_128, detect_resolution=128,
                                                    image_resolution=128, output_type="np"),
             BINARY),
    "mlsd_strict_thresholds": (
        lambda net: mlsd(PHOTO_128, net, resolution=128, thr_v=0.5, thr_d=3.0),
        lambda net: aux_mlsd.MLSDdetector(net)(PHOTO_128, thr_v=0.5, thr_d=3.0,
                                               detect_resolution=128, image_resolution=128,
                                               output_type="np"), BINARY),
}


# Networks that run some layers with other kernels than the oracle's (parity.py): our pre- and
# post-processing around the oracle's network give its map exactly; our network's map is within
# rounding of it.
REORDERED_SUMS = {"lineart", "lineart_anime"}


@pytest.mark.parametrize("case", list(MAP_CASES))
def test_map_equals_oracle_detector(networks, case):
    ours_call, oracle_call, kind = MAP_CASES[case]
    name = max((name for name in ORACLES if case.startswith(name)), key=len)
    oracle, ours = networks[name]
    expected = oracle_call(oracle)
    assert_not_degenerate(expected, kind)
    got = ours_call(ours)
    if name in REORDERED_SUMS:
        np.testing.assert_array_equal(ours_call(ChannelsFirst(oracle)), expected)
        assert_levels_within_rounding(got, expected, RAW_TOLERANCE)
    else:
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name, run", [
    ("lineart", lambda net, img: lineart(img, net, resolution=None)),
    ("mlsd", lambda net, img: mlsd(img, net, resolution=None)),
])
def test_odd_sizes_come_back_at_the_input_size(networks, name, run):
    odd = PHOTO[:70, :90]  # not a multiple of 4, 16 or 64
    out = run(networks[name][1], odd)
    assert out.shape == (70, 90, 3) and out.dtype == np.uint8


# --- loading published files --------------------------------------------------------------------

LOADERS = {
    "hed": (load_hed, HED_WEIGHTS),
    "pidinet": (load_pidinet, PIDINET_WEIGHTS),
    "lineart": (load_lineart, LINEART_WEIGHTS),
    "lineart_anime": (load_lineart_anime, LINEART_ANIME_WEIGHTS),
    "mlsd": (load_mlsd, MLSD_WEIGHTS),
}


def published_layout(name: str, weights: dict[str, torch.Tensor]) -> object:
    """What the published file holds: PiDiNet's training checkpoint wraps a DataParallel state
    dict in {'state_dict': ...}; the others are plain state dicts."""
    if name == "pidinet":
        return {"state_dict": {f"module.{key}": value for key, value in weights.items()}}
    return weights


@pytest.mark.parametrize("layout", ["models_folder", "controlnet_aux_cache"])
@pytest.mark.parametrize("name", list(LOADERS))
def test_loader_reads_the_published_file(tmp_path, name, layout):
    loader, file_name = LOADERS[name]
    # Key names from controlnet-aux's network, which loads the published files strictly.
    weights = random_weights(ORACLES[name]().state_dict(), SEEDS[name] + 10)
    folder = tmp_path / "models" / "annotators"
    target = folder if layout == "models_folder" else folder / "ckpts" / "lllyasviel" / "Annotators"
    target.mkdir(parents=True)
    torch.save(published_layout(name, weights), target / file_name)
    network = loader([str(tmp_path / "elsewhere"), str(folder)])
    assert_loaded(network, weights)


def test_lineart_coarse_loads_sk_model2_and_dtype_is_applied(tmp_path):
    template = ORACLES["lineart"]().state_dict()
    fine, coarse = random_weights(template, 20), random_weights(template, 21)
    torch.save(fine, tmp_path / LINEART_WEIGHTS)
    torch.save(coarse, tmp_path / LINEART_COARSE_WEIGHTS)
    assert_loaded(load_lineart([str(tmp_path)]), fine)
    network = load_lineart([str(tmp_path)], coarse=True, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in network.parameters())
    assert_loaded(network.float(), coarse)


def test_loader_is_strict(tmp_path):
    weights = random_weights(LineartNetwork().state_dict(), 22)
    del weights["model4.1.bias"]
    torch.save(weights, tmp_path / LINEART_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "model4\.1\.bias"'):
        load_lineart([str(tmp_path)])
