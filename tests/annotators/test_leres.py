"""LeReS depth against controlnet-aux 0.0.10's RelDepthModel(backbone='resnext101'), estimateleres
and LeresDetector (boost off), with identical random weights saved as the published res101.pth is
laid out ('depth_model' entry, "module." prefix) and read back through our loader.

The oracle is built on the meta device and given the random weights directly (nothing is drawn
twice, nothing downloaded); its key names are the contract with res101.pth, which the peers load
strictly into the same class. Our network runs the same operations in the same order, so outputs
and maps are compared bit for bit; the maps are checked not to be degenerate. The networks
(115.4 M parameters each) are built once per module and run at 64..192-pixel sides only.
"""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data

aux_leres = pytest.importorskip("controlnet_aux.leres")
aux_depthmap = pytest.importorskip("controlnet_aux.leres.leres.depthmap")
aux_model = pytest.importorskip("controlnet_aux.leres.leres.multi_depth_model_woauxi")
tv_models = pytest.importorskip("torchvision.models")

from annotators.leres import (LERES_WEIGHTS, LeReSNetwork, depth_to_map, leres, leres_depth,  # noqa: E402
                              load_leres, network_input)
from annotators.weights import BadWeightsError, load_state_dict  # noqa: E402
from tests.annotators.random_learned import assert_loaded, random_state_dict  # noqa: E402

SEED = 3
TRUNK_PREFIX = "depth_model.encoder_modules.encoder."
PHOTO = data.astronaut()[:, 85:427]  # 3:2, so height and width cannot be swapped unnoticed
PHOTO_384 = cv2.resize(PHOTO, (256, 384), interpolation=cv2.INTER_AREA)
DETECT = 128  # PHOTO_384 is detected at 192x128 and brought back
MIN_DEPTH_LEVELS = 64      # a soft map of a photo: many grey levels, not a few
MIN_SHARE = 0.05           # a threshold that acts blanks at least this share of the pixels


def build_oracle() -> torch.nn.Module:
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")  # timm / jit deprecations on importing controlnet_aux modules
        return aux_model.RelDepthModel(backbone="resnext101")


def half_rounded(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Values that float16 holds exactly, so the file can be saved in half the space and read
    back to the same float32 values."""
    return {key: value.half().float() if value.is_floating_point() else value for key, value in state.items()}


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """Random weights (random_learned's He-scaled recipe) in the oracle's key layout."""
    return half_rounded(random_state_dict(build_oracle().state_dict(), SEED))


@pytest.fixture(scope="module")
def oracle(weights) -> torch.nn.Module:
    network = build_oracle()
    network.load_state_dict(weights, strict=True, assign=True)  # shares the tensors: no second copy
    return network.eval()


def save_published(weights: dict[str, torch.Tensor], folder) -> None:
    """res101.pth's layout: the depth network's DataParallel state dict under 'depth_model' (the
    peers read checkpoint['depth_model'] and strip "module."); AdelaiDepth's load_ckpt reads
    'shift_model' and 'focal_model' from the same file when asked, which the depth map ignores."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"depth_model": {f"module.{key}": value.half() if value.is_floating_point() else value
                                for key, value in weights.items()},
                "shift_model": {"module.conv.weight": torch.zeros(2, 2)}},
               folder / LERES_WEIGHTS)


@pytest.fixture(scope="module")
def ours(weights, tmp_path_factory) -> LeReSNetwork:
    """Our network, loaded from the oracle's weights saved as the published file."""
    folder = tmp_path_factory.mktemp("annotators")
    save_published(weights, folder)
    network = load_leres([str(folder)])
    os.remove(folder / LERES_WEIGHTS)  # 230 MB
    return network


# --- the network ----------------------------------------------------------------------------------

def test_keys_and_shapes_are_the_published_layout():
    with torch.device("meta"):
        got = {key: (value.shape, value.dtype) for key, value in LeReSNetwork().state_dict().items()}
        trunk = {key: value.shape for key, value in tv_models.resnext101_32x8d().state_dict().items()
                 if not key.startswith("fc.")}
    expected = {key: (value.shape, value.dtype) for key, value in build_oracle().state_dict().items()}
    assert got == expected
    # The trunk is torchvision's ResNeXt-101 32x8d without its classifier, key for key.
    assert {key[len(TRUNK_PREFIX):]: shape for key, (shape, _) in got.items() if key.startswith(TRUNK_PREFIX)} == trunk
    assert all(key.startswith(TRUNK_PREFIX) or key.startswith("depth_model.decoder_modules.") for key in got)


def test_loader_reads_the_published_checkpoint(ours, weights):
    assert_loaded(ours, weights)


@pytest.mark.parametrize("height, width", [(64, 96), (128, 64)])
def test_raw_output_equals_the_oracle(oracle, ours, height, width):
    rgb = cv2.resize(PHOTO, (width, height), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(network_input(rgb)).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        expected, got = oracle.depth_model(x), ours(x)
    assert got.shape == expected.shape == (1, 1, height, width)
    # The same operations in the same order: equal to the bit, not only within rounding.
    assert torch.equal(got, expected)
    assert float(expected.std()) > 1e-3 * float(expected.abs().max())  # not flat


def test_network_input_equals_scale_torch():
    """BGR, ImageNet mean and std on the 0..255 values (ToTensor does not scale a float array)."""
    rgb = cv2.resize(PHOTO, (96, 64), interpolation=cv2.INTER_AREA)
    expected = aux_depthmap.scale_torch(rgb[:, :, ::-1].copy())
    got = torch.from_numpy(network_input(rgb)).permute(2, 0, 1)
    assert torch.equal(got, expected)
    assert float(expected.max()) > 255.0  # really unscaled: (255 - 0.406) / 0.225 at most


def test_network_refuses_sides_that_are_not_multiples_of_32(ours):
    with pytest.raises(ValueError) as error:
        ours(torch.zeros(1, 3, 80, 64))
    assert str(error.value) == (
        "LeReS needs sides that are multiples of 32, got 80x64; pad the image (annotators.leres does)")


# --- maps against the oracle's detector -----------------------------------------------------------

def oracle_map(oracle, image: np.ndarray, **options) -> np.ndarray:
    return aux_leres.LeresDetector(oracle, None)(
        image, boost=False, detect_resolution=DETECT, image_resolution=image.shape[1], output_type="np", **options)


@pytest.mark.parametrize("remove_nearest, remove_background", [(0, 0), (30, 0), (0, 40), (20, 60.5)])
def test_map_equals_the_oracle_detector(oracle, ours, remove_nearest, remove_background):
    """Detected at 192x128 and brought back to 384x256 (the peer: image_resolution 256)."""
    expected = oracle_map(oracle, PHOTO_384, thr_a=remove_nearest, thr_b=remove_background)
    got = leres(PHOTO_384, ours, DETECT, remove_nearest=remove_nearest, remove_background=remove_background)
    assert got.dtype == np.uint8 and got.shape == expected.shape == PHOTO_384.shape
    np.testing.assert_array_equal(got, expected)
    assert np.array_equal(got[..., 0], got[..., 2])
    # Not degenerate, and each threshold visibly acts (white near parts, black background).
    assert len(np.unique(expected)) > MIN_DEPTH_LEVELS // (2 if remove_nearest and remove_background else 1)
    if remove_nearest:
        assert float(np.mean(expected == 255)) > MIN_SHARE
    if remove_background:
        assert float(np.mean(expected == 0)) > MIN_SHARE


class ConstantDepth(torch.nn.Module):
    """A 'network' whose depth is one value everywhere, callable as ours and as the oracle's."""

    def __init__(self, value: float):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value))

    @property
    def depth_model(self) -> torch.nn.Module:  # the oracle's detector calls model.depth_model(x)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value.expand(x.shape[0], 1, *x.shape[2:])


def test_flat_depth_gives_a_white_map_as_the_oracle():
    """Depth equal everywhere: the peer keeps zeros, which its inversion turns white."""
    flat = ConstantDepth(2.5)
    expected = oracle_map(flat, PHOTO_384)
    np.testing.assert_array_equal(leres(PHOTO_384, flat, DETECT), expected)
    assert np.all(expected == 255)


def test_odd_sizes_without_resolution_are_edge_padded_to_multiples_of_32(oracle, ours):
    """At the image's own size, written out: the oracle network on the image edge-padded to
    multiples of 32, cropped back, then the map (depth_to_map, checked above against the detector)."""
    odd = np.ascontiguousarray(PHOTO[100:170, 200:290])  # 70 x 90
    padded = np.pad(odd, ((0, 26), (0, 6), (0, 0)), mode="edge")  # 96 x 96
    with torch.no_grad():
        depth = oracle.depth_model(aux_depthmap.scale_torch(padded[:, :, ::-1].copy())[None])
    expected_depth = depth[0, 0].numpy()[:70, :90]
    np.testing.assert_array_equal(leres_depth(odd, ours), expected_depth)
    got = leres(odd, ours, resolution=None)
    assert got.shape == (70, 90, 3)
    np.testing.assert_array_equal(got[..., 0], depth_to_map(expected_depth))
    assert got.min() == 0 and got.max() == 255  # normalised over the crop, not the padding


@pytest.mark.parametrize("options, message", [
    ({"remove_nearest": -1.0},
     "remove_nearest is a percentage of the depth range and must lie in 0..100, got -1.0; 0 keeps the nearest parts"),
    ({"remove_background": 100.5},
     "remove_background is a percentage of the depth range and must lie in 0..100, got 100.5; 0 keeps the background"),
])
def test_bad_thresholds_are_refused_before_running(options, message):
    with pytest.raises(ValueError) as error:
        leres(PHOTO_384, network=None, **options)  # type: ignore[arg-type]
    assert str(error.value) == message


# --- loading the published file -------------------------------------------------------------------

def test_loader_is_strict(tmp_path):
    torch.save({"depth_model": {"module.depth_model.decoder_modules.conv1.bias": torch.zeros(256)}},
               tmp_path / LERES_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: '
                                           r'"depth_model\.encoder_modules\.encoder\.conv1\.weight"'):
        load_leres([str(tmp_path)])


def test_a_checkpoint_without_depth_model_weights_is_refused(tmp_path):
    torch.save({"shift_model": {"iter": 3}, "step": 10}, tmp_path / LERES_WEIGHTS)
    with pytest.raises(BadWeightsError) as error:
        load_leres([str(tmp_path)])
    assert str(error.value) == "'res101.pth' holds no weight tensors"


def test_depth_model_entry_is_read_only_where_no_state_dict_or_model_entry_is(tmp_path):
    """weights.py tries 'state_dict', then 'model', then 'depth_model': other checkpoints read as before."""
    plain, model, depth = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
    torch.save({"model": {"w": model}, "depth_model": {"w": depth}}, tmp_path / "both.pth")
    torch.save({"state_dict": {"w": plain}, "depth_model": {"w": depth}}, tmp_path / "state.pth")
    torch.save({"depth_model": {"w": depth}}, tmp_path / "depth.pth")
    assert torch.equal(load_state_dict(str(tmp_path / "both.pth"))["w"], model)
    assert torch.equal(load_state_dict(str(tmp_path / "state.pth"))["w"], plain)
    assert torch.equal(load_state_dict(str(tmp_path / "depth.pth"))["w"], depth)


def test_parameter_count_is_resnext101_plus_the_decoder():
    """torchvision's ResNeXt-101 32x8d trunk less its 1000-class classifier, plus the decoder
    counted from the oracle."""
    with torch.device("meta"):
        trunk = tv_models.resnext101_32x8d()
        ours = LeReSNetwork()
    classifier = sum(p.numel() for p in trunk.fc.parameters())
    decoder = sum(p.numel() for p in build_oracle().depth_model.decoder_modules.parameters())
    assert sum(p.numel() for p in ours.parameters()) == (
        sum(p.numel() for p in trunk.parameters()) - classifier + decoder)
