"""TEED soft edges against controlnet-aux 0.0.10's TED network and TEEDdetector, with identical
random weights saved under the published key layout and read back through our loader.

The oracle's network is constructed directly (nothing is downloaded). Its key names are the
contract with the published 7_model.pth / MTEED.pth, which comfyui_controlnet_aux loads strictly
into the same TED class. Our network runs the same operations in the same order, so its outputs
and maps are compared bit for bit; every map is checked not to be degenerate (an all-black map
would match anything and prove nothing).
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
from skimage import data

aux_ted = pytest.importorskip("controlnet_aux.teed.ted")
aux_teed = pytest.importorskip("controlnet_aux.teed")

from annotators.teed import (MTEED_WEIGHTS, TEED_WEIGHTS, TEEDNetwork, load_teed, teed,  # noqa: E402
                             teed_probability)
from annotators.weights import BadWeightsError  # noqa: E402
from tests.annotators.random_learned import adjust, assert_loaded, random_state_dict  # noqa: E402

SEED = 1
TEED_PARAMETERS = 58910  # the paper's "58K"; ted.py's header comment: "TED > 58K"
PHOTO = data.astronaut()
PHOTO_256 = cv2.resize(PHOTO, (256, 256), interpolation=cv2.INTER_AREA)
PHOTO_128 = cv2.resize(PHOTO, (128, 128), interpolation=cv2.INTER_AREA)  # = resize_for_detection
SAFE_LEVELS = {0, 127, 255}       # {0, 0.5, 1} x 255, truncated
MIN_LEVEL_FRACTION = 0.01         # each safe level covers at least this share of the pixels
MIN_SOFT_LEVELS = 64
REPOS = {TEED_WEIGHTS: ("bdsqlsz", "qinglong_controlnet-lllite", "Annotators"),
         MTEED_WEIGHTS: ("TheMistoAI", "MistoLine", "Anyline")}


def oracle_weights(seed: int = SEED) -> dict[str, torch.Tensor]:
    """Random weights in the oracle's key layout (He-scaled; random_learned's TEED adjustments:
    the first conv brought to 0..255 input, larger read-outs so every safe level appears)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script deprecation inside the oracle's Smish
        template = aux_ted.TED().state_dict()
    return adjust("teed", random_state_dict(template, seed))


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    return oracle_weights()


@pytest.fixture(scope="module")
def oracle(weights) -> torch.nn.Module:
    network = aux_ted.TED()
    network.load_state_dict(weights, strict=True)
    return network.eval()


@pytest.fixture(scope="module")
def ours(weights, tmp_path_factory) -> TEEDNetwork:
    """Our network, loaded from the oracle's weights saved as the published file."""
    folder = tmp_path_factory.mktemp("annotators")
    torch.save(weights, folder / TEED_WEIGHTS)
    return load_teed([str(folder)])


def test_keys_and_shapes_are_the_published_layout():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {key: tuple(value.shape) for key, value in aux_ted.TED().state_dict().items()}
    got = {key: tuple(value.shape) for key, value in TEEDNetwork().state_dict().items()}
    assert got == expected
    assert sum(value.numel() for value in TEEDNetwork().state_dict().values()) == TEED_PARAMETERS


@pytest.mark.parametrize("height, width", [(64, 96), (128, 128), (20, 36), (4, 4)])
def test_raw_outputs_equal_the_oracle(oracle, ours, height, width):
    generator = torch.Generator().manual_seed(height * width)
    x = torch.rand(1, 3, height, width, generator=generator) * 255.0  # RGB 0..255, as TEEDdetector feeds it
    with torch.no_grad():
        expected, got = oracle(x), ours(x)
    assert len(got) == len(expected) == 4
    for e, g in zip(expected, got):
        assert g.shape == e.shape == (1, 1, height, width)
        # The same operations in the same order: equal to the bit, not only within rounding.
        assert torch.equal(g, e)
    if height * width > 16:
        assert all(float(e.std()) > 0.01 for e in expected)  # no flat output


@pytest.mark.parametrize("safe_steps", [2, 0, 1, 5])
def test_map_equals_the_oracle_detector(oracle, ours, safe_steps):
    # Detected at 128 and brought back to 256: TEEDdetector resizes back with INTER_LINEAR, as we do.
    expected = aux_teed.TEEDdetector(oracle)(PHOTO_256, detect_resolution=128, safe_steps=safe_steps,
                                             output_type="np")
    got = teed(PHOTO_256, ours, resolution=128, safe_steps=safe_steps)
    assert got.dtype == np.uint8 and got.shape == expected.shape == PHOTO_256.shape
    np.testing.assert_array_equal(got, expected)
    at_detect_size = teed(PHOTO_128, ours, resolution=128, safe_steps=safe_steps)
    values, counts = np.unique(at_detect_size, return_counts=True)
    if safe_steps == 2:
        assert set(values.tolist()) == SAFE_LEVELS
        assert counts.min() >= MIN_LEVEL_FRACTION * at_detect_size.size
    elif safe_steps == 0:
        assert len(values) >= MIN_SOFT_LEVELS
    else:
        assert len(values) == safe_steps + 1


def test_default_is_two_safe_steps_at_512(oracle, ours):
    expected = aux_teed.TEEDdetector(oracle)(PHOTO, output_type="np")  # detect_resolution=512, safe_steps=2
    np.testing.assert_array_equal(teed(PHOTO, ours), expected)


def test_odd_sizes_are_edge_padded_to_multiples_of_4_and_cropped(oracle, ours):
    """At the image's own size, written out: the oracle network on the image edge-padded to
    multiples of 4, its four logits averaged, sigmoid, safe_step(2), x255 truncated, cropped."""
    odd = np.ascontiguousarray(PHOTO[100:170, 200:290])  # 70 x 90
    padded = np.pad(odd, ((0, 2), (0, 2), (0, 0)), mode="edge")
    with torch.no_grad():
        logits = oracle(torch.from_numpy(padded.astype(np.float32)).permute(2, 0, 1)[None])
    mean = np.mean(np.stack([logit[0, 0].numpy() for logit in logits], axis=2), axis=2).astype(np.float64)
    probability = 1.0 / (1.0 + np.exp(-mean))
    safe = (probability.astype(np.float32) * 3).astype(np.int32).astype(np.float32) / 2
    expected = (safe * 255.0).clip(0, 255).astype(np.uint8)[:70, :90]
    got = teed(odd, ours, resolution=None)
    assert got.shape == (70, 90, 3)
    np.testing.assert_array_equal(got[:, :, 0], expected)
    assert np.array_equal(got[:, :, 0], got[:, :, 2])
    np.testing.assert_allclose(teed_probability(odd, ours), probability[:70, :90], rtol=0, atol=0)


def test_negative_safe_steps_are_refused(ours):
    with pytest.raises(ValueError) as error:
        teed(PHOTO_128, ours, resolution=None, safe_steps=-1)
    assert str(error.value) == "safe_steps must be 0 (not quantised) or more, got -1"


# --- loading the published files ------------------------------------------------------------------

@pytest.mark.parametrize("file_name", [TEED_WEIGHTS, MTEED_WEIGHTS])
@pytest.mark.parametrize("layout", ["models_folder", "comfyui_controlnet_aux"])
def test_loader_reads_the_published_file(tmp_path, file_name, layout):
    weights = oracle_weights(seed=11 if file_name == TEED_WEIGHTS else 12)
    folder = tmp_path / "annotators"
    # comfyui_controlnet_aux keeps hub files as ckpts/<owner>/<name>/<subfolder>/<file>.
    target = folder if layout == "models_folder" else folder.joinpath("ckpts", *REPOS[file_name])
    target.mkdir(parents=True)
    torch.save(weights, target / file_name)
    network = load_teed([str(tmp_path / "elsewhere"), str(folder)], mteed=file_name == MTEED_WEIGHTS)
    assert_loaded(network, weights)


def test_teed_and_mteed_are_different_files(tmp_path):
    teed_weights, mteed_weights = oracle_weights(seed=13), oracle_weights(seed=14)
    torch.save(teed_weights, tmp_path / TEED_WEIGHTS)
    torch.save(mteed_weights, tmp_path / MTEED_WEIGHTS)
    assert_loaded(load_teed([str(tmp_path)]), teed_weights)
    network = load_teed([str(tmp_path)], mteed=True, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in network.parameters())
    assert_loaded(network.float(), mteed_weights)


def test_loader_is_strict(tmp_path, weights):
    incomplete = {k: v for k, v in weights.items() if k != "block_cat.DWconv2.bias"}
    torch.save(incomplete, tmp_path / TEED_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "block_cat\.DWconv2\.bias"'):
        load_teed([str(tmp_path)])
    extra = dict(weights, **{"dblock_3.denselayer2.conv1.weight": torch.zeros(48, 48, 3, 3)})
    torch.save(extra, tmp_path / TEED_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "dblock_3\.denselayer2\.conv1\.weight"'):
        load_teed([str(tmp_path)])


def test_a_file_of_another_network_is_refused_by_its_keys(tmp_path):
    from annotators.hed import HEDNetwork

    torch.save(HEDNetwork().state_dict(), tmp_path / TEED_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "block_1\.conv1\.weight"'):
        load_teed([str(tmp_path)])


class TrainingState:
    """Stands for the Python objects a training checkpoint pickles beside the weights."""


def test_pickled_objects_are_refused(tmp_path, weights):
    torch.save({"model": weights, "optimizer": TrainingState()}, tmp_path / MTEED_WEIGHTS)
    with pytest.raises(BadWeightsError) as error:
        load_teed([str(tmp_path)], mteed=True)
    assert str(error.value) == (
        "'MTEED.pth' contains pickled Python objects other than tensors, which are refused for safety (loading "
        "only with torch.load(weights_only=True)); use a .safetensors version of it")


def test_a_truncated_file_is_named(tmp_path, weights):
    torch.save(weights, tmp_path / "whole.pth")
    (tmp_path / TEED_WEIGHTS).write_bytes((tmp_path / "whole.pth").read_bytes()[:5000])
    with pytest.raises(BadWeightsError) as error:
        load_teed([str(tmp_path)])
    assert str(error.value).startswith("'7_model.pth' cannot be read (")
    assert str(error.value).endswith("); it is probably truncated: download it again")
