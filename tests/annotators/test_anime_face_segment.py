"""Anime face segmentation against an oracle built from torchvision's MobileNetV2 and a functional
write-up of A1111's U-Net decoder (annotator/anime_face_segment, which comfyui_controlnet_aux
copies), in float64, with identical random weights; the map against A1111's per-pixel palette
lookup (`[[PALETTE[np.argmax(val)] for val in buf] for buf in img]`).

Random weights: random_learned's He-scaled state dict (ReLU6 bounds the encoder's activations, so
no BatchNorm calibration is needed). Each comparison checks that several classes appear.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

torchvision = pytest.importorskip("torchvision")

from annotators.anime_face_segment import (ANIME_FACE_WEIGHTS, AnimeFaceSegmentNetwork,  # noqa: E402
                                           anime_face_segment, load_anime_face_segment)
from annotators.image import resize_for_detection  # noqa: E402

from .random_learned import assert_loaded, random_state_dict, run_in_a_fresh_interpreter, template_of  # noqa: E402

SEED = 5
RAW_TOLERANCE = 1e-5  # class probabilities, float32 against the float64 oracle
MIN_CLASSES = 3       # a map with fewer would hide a wrong colour or class order
# A1111's PALETTE, in its order, written out again (RGB).
A1111_PALETTE = [(255, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0), (0, 255, 255),
                 (255, 0, 255)]
LAST_FEATURE = 16  # the U-Net uses torchvision's features[0..16]
LEVELS = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 17))  # features slices of en_block0..4

PHOTO_256 = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
CAT = cv2.resize(data.chelsea()[:, :450], (192, 128), interpolation=cv2.INTER_AREA)  # a detect size
ODD = cv2.resize(data.chelsea(), (91, 67), interpolation=cv2.INTER_AREA)


class Oracle:
    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.w = {key: value.double() for key, value in state_dict.items()}
        features = torchvision.models.mobilenet_v2(weights=None).features[:LAST_FEATURE + 1]
        renamed = {}
        for level, (start, _) in enumerate(LEVELS):
            prefix = f"en_block{level}."
            for key, value in state_dict.items():
                if key.startswith(prefix):
                    index, rest = key[len(prefix):].split(".", 1)
                    renamed[f"{start + int(index)}.{rest}"] = value
        features.load_state_dict(renamed, strict=True)
        self.levels = [features[start:end].double().eval() for start, end in LEVELS]

    def conv(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.conv2d(x, self.w[f"{name}.1.weight"], self.w[f"{name}.1.bias"], padding=1)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (even sides) -> 7xHxW class probabilities, as A1111's UNet.forward."""
        x = torch.from_numpy(rgb.transpose(2, 0, 1) / 255.0)[None]
        with torch.no_grad():
            skips = []
            for level in self.levels:
                x = level(x)
                skips.append(x)
            for block in (4, 3, 2, 1):
                x = F.interpolate(x, scale_factor=2, mode="nearest")
                x = F.leaky_relu(F.instance_norm(self.conv(x, f"de_block{block}"), eps=1e-5), 0.1)
                x = F.interpolate(x, size=skips[block - 1].shape[-2:], mode="bilinear", align_corners=True)
                x = torch.cat([x, skips[block - 1]], dim=1)
            x = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"), "de_block0")
            return torch.softmax(x, dim=1)[0].numpy()


def a1111_map(probabilities: np.ndarray) -> np.ndarray:
    pixels = probabilities.transpose(1, 2, 0)
    return np.array([[A1111_PALETTE[np.argmax(val)] for val in row] for row in pixels]).astype(np.uint8)


@pytest.fixture(scope="module")
def networks() -> tuple[Oracle, AnimeFaceSegmentNetwork, AnimeFaceSegmentNetwork]:
    """(oracle, our network, our network in float64) with the same random weights."""
    ours = AnimeFaceSegmentNetwork().eval()
    ours.load_state_dict(random_state_dict(template_of(AnimeFaceSegmentNetwork), SEED), strict=True)
    return Oracle(ours.state_dict()), ours, copy.deepcopy(ours).double()


def assert_several_classes(segmentation_map: np.ndarray) -> None:
    colours = np.unique(segmentation_map.reshape(-1, 3), axis=0)
    assert len(colours) >= MIN_CLASSES, colours


def test_network_equals_oracle(networks):
    oracle, ours, _ = networks
    expected = oracle(CAT)
    with torch.no_grad():
        got = ours(torch.from_numpy(CAT.transpose(2, 0, 1).astype(np.float32) / 255.0)[None])[0].double().numpy()
    assert got.shape == expected.shape == (7, 128, 192)
    np.testing.assert_allclose(got, expected, rtol=0, atol=RAW_TOLERANCE)


MAP_CASES = {
    # at a detect size: nothing resized
    "detect size": (lambda net: anime_face_segment(CAT, net, resolution=128), lambda oracle: a1111_map(oracle(CAT))),
    # detected at 128, brought back to 256 with nearest-neighbour sampling
    "resized": (lambda net: anime_face_segment(PHOTO_256, net, resolution=128),
                lambda oracle: cv2.resize(a1111_map(oracle(resize_for_detection(PHOTO_256, 128))), (256, 256),
                                          interpolation=cv2.INTER_NEAREST)),
    # odd sides at the image's own size: the last row and column repeated, then cropped off
    "odd size": (lambda net: anime_face_segment(ODD, net, resolution=None),
                 lambda oracle: a1111_map(oracle(np.pad(ODD, ((0, 1), (0, 1), (0, 0)), mode="edge")))[:67, :91]),
}


@pytest.mark.parametrize("case", list(MAP_CASES))
def test_map_equals_a1111s_palette_lookup(networks, case):
    oracle, ours, ours_float64 = networks
    ours_call, oracle_call = MAP_CASES[case]
    expected = oracle_call(oracle)
    assert_several_classes(expected)
    np.testing.assert_array_equal(ours_call(ours_float64), expected)
    # float32 can tip a near-tie between two classes; only there
    assert np.mean(np.any(ours_call(ours) != expected, axis=2)) < 0.001


def test_loader_reads_the_published_file_and_is_strict(tmp_path, networks):
    weights = networks[1].state_dict()
    # A1111 strips a DataParallel prefix before loading; a plain state dict is the published layout.
    torch.save({f"module.{key}": value for key, value in weights.items()}, tmp_path / ANIME_FACE_WEIGHTS)
    assert_loaded(load_anime_face_segment([str(tmp_path)]), weights)
    torch.save({key: value for key, value in weights.items() if not key.startswith("de_block0.")},
               tmp_path / ANIME_FACE_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "de_block0\.1\.weight"'):
        load_anime_face_segment([str(tmp_path)])


def test_runs_without_torchvision():
    code = (
        "import sys\n"
        "sys.modules['torchvision'] = None  # any import of it now fails\n"
        "import numpy as np\n"
        "from annotators.anime_face_segment import AnimeFaceSegmentNetwork, anime_face_segment\n"
        "anime_face_segment(np.zeros((40, 50, 3), np.uint8), AnimeFaceSegmentNetwork().eval(), resolution=None)\n")
    run_in_a_fresh_interpreter(code)
