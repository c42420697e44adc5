"""Depth Anything V1 (LiheYoung/Depth-Anything) against transformers' DepthAnythingForDepthEstimation
configured as V1, with identical random weights, and its pipeline against a numpy / OpenCV write-up
of the original run.py. The helpers, the weight renaming and the tolerances are
test_depth_anything.py's (V2), whose docstring says where they come from.

What V1 changes, and where it is read:
  * the head reads the last four blocks: depth_anything/dpt.py DPT_DINOv2.forward calls
    get_intermediate_layers(x, 4); transformers' conversion script (convert_depth_anything_to_hf.py
    get_dpt_config, at commit 23925e16) gives V1 out_indices [9, 10, 11, 12] for small and base and
    [21, 22, 23, 24] for large, V2 [3, 6, 9, 12] and [5, 12, 18, 24] (hidden state 0 is the
    embeddings). The oracles here get these indices written out, never our configurations';
  * run.py resizes the depth back to the image's size with align_corners=False (V2's infer_image:
    True); the rest of the pipeline (518 lower bound, multiples of 14, cubic resize, ImageNet
    normalisation, the min-max map) is V2's, the same util/transform.py.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
dinov2_modeling = pytest.importorskip("transformers.models.dinov2.modeling_dinov2")

from annotators.depth_anything import (DEPTH_ANYTHING_V1_SMALL, DEPTH_ANYTHING_V2_SMALL,  # noqa: E402
                                       V1_ALIGN_CORNERS, depth_anything,
                                       depth_anything_v1, depth_to_map, encoder_from_weights,
                                       load_depth_anything, load_depth_anything_v1, relative_depth)
from annotators.depth_anything_network import (ENCODERS, PATCH_SIZE, V1_ENCODERS,  # noqa: E402
                                               DepthAnythingV2Network, EncoderSize, last_blocks_readout)
from annotators.image import resize_for_detection  # noqa: E402
from annotators.weights import BadWeightsError  # noqa: E402

from .parity import assert_levels_within_rounding  # noqa: E402
from .test_depth_anything import (MEAN, MIN_MAP_LEVELS, PHOTO_96, PHOTO_900, RAW_TOLERANCE, SEED,  # noqa: E402
                                  STD, TINY, TINY_GRID, assert_not_degenerate_raw, assert_raw_close,
                                  original_size, peer_map, random_input, random_original_weights, raw,
                                  template, to_transformers, transformers_config, with_original_rule)

# convert_depth_anything_to_hf.py get_dpt_config: the hidden states each version reads.
V1_OUT_INDICES = {"vits": [9, 10, 11, 12], "vitb": [9, 10, 11, 12], "vitl": [21, 22, 23, 24]}
V2_OUT_INDICES = {"vits": [3, 6, 9, 12], "vitb": [3, 6, 9, 12], "vitl": [5, 12, 18, 24]}
V1_READS = 4  # dpt.py: get_intermediate_layers(x, 4), "the n last blocks"
# Where the authors publish the V1 files (their README: "Our foundation models listed here").
V1_CHECKPOINTS_URL = "https://huggingface.co/spaces/LiheYoung/Depth-Anything/tree/main/checkpoints"
# comfyui_controlnet_aux's custom_hf_download("LiheYoung/Depth-Anything", subfolder="checkpoints",
# repo_type="space") kept the files at ckpts/<repo id>/<subfolder>/<file>.
CONTROLNET_AUX_FOLDER = ("ckpts", "LiheYoung", "Depth-Anything", "checkpoints")
# The published small encoder at a 3 x 4 token grid (its 37 x 37 position grid resized), on a
# random input whose output is about half positive: with these random weights the final ReLU
# zeroes over three quarters of most inputs' outputs (seeds 4, 5, 7 and 8 here).
SMALL_INPUT = (3 * PATCH_SIZE, 4 * PATCH_SIZE)
SMALL_INPUT_SEED = 6
# Outputs of V1 and V2 read-outs of one set of weights differ by more than this, relative to the
# output's largest magnitude: a mix-up cannot hide within the tolerance.
CLEARLY_DIFFERENT = 100 * RAW_TOLERANCE


def last_four_hidden_states(depth: int) -> list[int]:
    """The V1 oracle's out_indices: of hidden states 0 (embeddings) .. depth, the last four."""
    return list(range(depth + 1))[-V1_READS:]


def oracle_for(weights: dict[str, torch.Tensor], size: EncoderSize, out_indices: list[int], grid: int):
    """transformers' DepthAnything with `weights`, reading `out_indices` (whatever size.layers say)."""
    config = transformers_config(size, grid)
    config.backbone_config.out_indices = out_indices
    with torch.device("meta"):  # no random initialisation: every tensor comes from `weights`
        oracle = transformers.DepthAnythingForDepthEstimation(config)
    oracle.load_state_dict(to_transformers(weights, size), strict=True, assign=True)
    assert oracle.backbone.out_indices == out_indices
    return oracle.eval()


def ours_for(weights: dict[str, torch.Tensor], size: EncoderSize, grid: int) -> DepthAnythingV2Network:
    network = DepthAnythingV2Network(size, position_grid=grid)
    network.load_state_dict(weights, strict=True)
    return network.eval()


@pytest.fixture(scope="module")
def tiny_v1():
    """(our V1 network, our V2 network, the V1 oracle), one set of tiny random weights."""
    weights = random_original_weights(template(TINY), SEED)
    oracle = oracle_for(weights, TINY, last_four_hidden_states(TINY.depth), TINY_GRID)
    return ours_for(weights, last_blocks_readout(TINY), TINY_GRID), ours_for(weights, TINY, TINY_GRID), oracle


# --- the network -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vits", "vitb", "vitl"])
def test_v1_encoders_read_the_last_four_blocks_and_v2_its_own(name):
    """Our 0-based blocks + 1 are the conversion script's hidden-state indices, for both versions;
    V1's configurations are V2's but for the blocks read."""
    assert [layer + 1 for layer in V1_ENCODERS[name].layers] == V1_OUT_INDICES[name]
    assert [layer + 1 for layer in ENCODERS[name].layers] == V2_OUT_INDICES[name]
    assert replace(V1_ENCODERS[name], layers=ENCODERS[name].layers) == ENCODERS[name]


def test_v1_has_no_giant_encoder():
    """V1 published vits, vitb and vitl (dpt.py DPT_DINOv2 asserts encoder in these three)."""
    assert list(V1_ENCODERS) == ["vits", "vitb", "vitl"]


def test_tiny_v1_equals_oracle_at_the_native_grid(tiny_v1):
    ours_v1, ours_v2, oracle = tiny_v1
    assert ours_v1.encoder_size.layers != TINY.layers  # the tiny V2 does not read the last four
    x = random_input(TINY_GRID * PATCH_SIZE, TINY_GRID * PATCH_SIZE)
    expected = raw(oracle, x)
    assert_not_degenerate_raw(expected)
    assert_raw_close(raw(ours_v1, x), expected)
    scale = float(expected.abs().max())
    assert float((raw(ours_v2, x) - expected).abs().max()) > CLEARLY_DIFFERENT * scale


@pytest.mark.parametrize("height, width", [(70, 98), (42, 28)])
def test_tiny_v1_equals_oracle_where_the_grid_is_resized(tiny_v1, monkeypatch, height, width):
    ours_v1, _, oracle = tiny_v1
    monkeypatch.setattr(dinov2_modeling.Dinov2Embeddings, "interpolate_pos_encoding", with_original_rule(oracle))
    x = random_input(height, width, seed=2)
    expected = raw(oracle, x)
    assert_not_degenerate_raw(expected)
    assert_raw_close(raw(ours_v1, x), expected)


# --- the published small encoder through the loaders: V1 files read V1's blocks, V2 files V2's ------

@pytest.fixture(scope="module")
def small_weights() -> dict[str, torch.Tensor]:
    """Random weights of the published small model, rounded to float16 (as saved). 24,785,089
    parameters: the 24.8 M of Depth-Anything-Small in the authors' README."""
    shapes = template("vits", grid=37)
    assert sum(value.numel() for value in shapes.values()) == 24_785_089
    return {key: value.half().float() for key, value in random_original_weights(shapes, SEED + 2).items()}


@pytest.fixture(scope="module")
def small_files(tmp_path_factory, small_weights) -> str:
    """A folder holding `small_weights` as both the V1 and the V2 small file."""
    folder = tmp_path_factory.mktemp("annotators")
    torch.save({key: value.half() for key, value in small_weights.items()}, folder / DEPTH_ANYTHING_V1_SMALL)
    (folder / DEPTH_ANYTHING_V2_SMALL).symlink_to(folder / DEPTH_ANYTHING_V1_SMALL)
    return str(folder)


def test_loaders_read_each_versions_blocks(small_files, small_weights, monkeypatch):
    """One set of weights: under the V1 name it equals the oracle reading [9, 10, 11, 12], under
    the V2 name the oracle reading [3, 6, 9, 12]; the two outputs differ clearly."""
    size = ENCODERS["vits"]
    v1_oracle = oracle_for(small_weights, size, V1_OUT_INDICES["vits"], grid=37)
    v2_oracle = oracle_for(small_weights, size, V2_OUT_INDICES["vits"], grid=37)
    monkeypatch.setattr(dinov2_modeling.Dinov2Embeddings, "interpolate_pos_encoding", with_original_rule(v1_oracle))
    x = random_input(*SMALL_INPUT, seed=SMALL_INPUT_SEED)
    v1_expected, v2_expected = raw(v1_oracle, x), raw(v2_oracle, x)

    v1 = load_depth_anything_v1([small_files], size="small")
    assert v1.encoder_size is V1_ENCODERS["vits"] and not v1.training
    assert_raw_close(raw(v1, x), v1_expected)
    v2 = load_depth_anything([small_files], size="small")
    assert v2.encoder_size is ENCODERS["vits"]
    assert_raw_close(raw(v2, x), v2_expected)

    assert_not_degenerate_raw(v1_expected)
    scale = float(v1_expected.abs().max())
    assert float((v2_expected - v1_expected).abs().max()) > CLEARLY_DIFFERENT * scale


# --- the pipeline ------------------------------------------------------------------------------------

def bilinear_half_pixel(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """F.interpolate(mode="bilinear", align_corners=False) in float64: output pixel i reads source
    (i + 0.5) * count / size - 0.5, below 0 clamped to 0 (PyTorch's area_pixel_compute_source_index)."""
    def axis(count, size):
        position = np.maximum((np.arange(size) + 0.5) * (count / size) - 0.5, 0.0)
        low = np.minimum(np.floor(position).astype(int), count - 1)
        high = np.minimum(low + 1, count - 1)
        return low, high, position - low

    top, bottom, dy = axis(depth.shape[0], height)
    left, right, dx = axis(depth.shape[1], width)
    rows = depth[top] * (1 - dy)[:, None] + depth[bottom] * dy[:, None]
    return rows[:, left] * (1 - dx) + rows[:, right] * dx


def run_py_write_up(rgb: np.ndarray, network) -> np.ndarray:
    """run.py on an RGB image (it reads BGR and converts): / 255, Resize, NormalizeImage,
    PrepareForNet, network, bilinear back with align_corners=False; float64 at rgb's size."""
    height, width = rgb.shape[:2]
    new_height, new_width = original_size(height, width)
    image = cv2.resize(rgb / 255.0, (new_width, new_height), interpolation=cv2.INTER_CUBIC)
    image = (image - MEAN) / STD
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(image, (2, 0, 1))).astype(np.float32))[None]
    return bilinear_half_pixel(raw(network, x)[0].double().numpy(), height, width)


def test_half_pixel_write_up_is_pytorchs_rule():
    """The write-up against F.interpolate itself, enlarging and shrinking (the oracle's rule must
    not be our code's; this pins it to PyTorch's)."""
    depth = np.random.default_rng(0).normal(size=(9, 13))
    for height, width in [(20, 31), (4, 6)]:
        expected = torch.nn.functional.interpolate(torch.from_numpy(depth)[None, None], (height, width),
                                                   mode="bilinear", align_corners=False)[0, 0].numpy()
        np.testing.assert_allclose(bilinear_half_pixel(depth, height, width), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("photo", [PHOTO_96, PHOTO_900], ids=["enlarged", "shrunk"])
def test_relative_depth_and_map_equal_run_py(tiny_v1, monkeypatch, photo):
    """resolution=None: run.py's pipeline and min-max map around the oracle; ours around ours.
    V2's pipeline (align_corners=True) on the same network misses the write-up."""
    ours_v1, _, oracle = tiny_v1
    monkeypatch.setattr(dinov2_modeling.Dinov2Embeddings, "interpolate_pos_encoding", with_original_rule(oracle))
    expected_depth = run_py_write_up(photo, oracle)
    depth = relative_depth(photo, ours_v1, align_corners=V1_ALIGN_CORNERS)
    assert depth.dtype == np.float32 and depth.shape == photo.shape[:2]
    scale = np.abs(expected_depth).max()
    assert np.abs(depth - expected_depth).max() <= RAW_TOLERANCE * scale
    expected_map = peer_map(expected_depth)
    assert len(np.unique(expected_map)) > MIN_MAP_LEVELS and expected_map.min() == 0 and expected_map.max() == 255
    got = depth_anything_v1(photo, ours_v1, resolution=None)
    assert got.shape == photo.shape and got.dtype == np.uint8
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2])
    assert_levels_within_rounding(got[..., 0], expected_map, RAW_TOLERANCE)
    corners_aligned = depth_anything(photo, ours_v1, resolution=None)[..., 0]
    assert int(np.abs(corners_aligned.astype(int) - expected_map).max()) > 1


def test_detect_resolution_resizes_first_and_brings_the_map_back(tiny_v1):
    """resolution=128 on a 900 x 600 photo: V1 at the 192 x 128 resize, the map bilinearly back."""
    ours_v1, _, _ = tiny_v1
    detect = resize_for_detection(PHOTO_900, 128)
    assert detect.shape[:2] == (192, 128)
    at_detect = depth_to_map(relative_depth(detect, ours_v1, align_corners=V1_ALIGN_CORNERS))
    expected = cv2.resize(np.repeat(at_detect[..., None], 3, axis=2), (600, 900), interpolation=cv2.INTER_LINEAR)
    got = depth_anything_v1(PHOTO_900, ours_v1, resolution=128)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got)) > MIN_MAP_LEVELS


# --- files -------------------------------------------------------------------------------------------

def test_controlnet_aux_layout_is_found(tmp_path, small_files):
    folder = tmp_path.joinpath(*CONTROLNET_AUX_FOLDER)
    folder.mkdir(parents=True)
    (folder / DEPTH_ANYTHING_V1_SMALL).symlink_to(f"{small_files}/{DEPTH_ANYTHING_V1_SMALL}")
    assert load_depth_anything_v1([str(tmp_path)], size="small").encoder_size is V1_ENCODERS["vits"]


def test_v1_files_of_other_widths_or_layouts_are_refused():
    giant = {"pretrained.cls_token": torch.zeros(1, 1, ENCODERS["vitg"].embed_dim)}
    with pytest.raises(BadWeightsError) as error:
        encoder_from_weights(giant, DEPTH_ANYTHING_V1_SMALL)
    assert str(error.value) == (
        "'depth_anything_vits14.pth' has a 1536-wide encoder, which is none of Depth Anything V1's: "
        "vits (384), vitb (768), vitl (1024)")
    with pytest.raises(BadWeightsError) as error:
        encoder_from_weights({"model.conv.weight": torch.zeros(1)}, DEPTH_ANYTHING_V1_SMALL)
    assert str(error.value) == (
        "'depth_anything_vits14.pth' is not a Depth Anything V1 checkpoint (it has no 'pretrained.cls_token'); "
        f"download depth_anything_vits14.pth again from {V1_CHECKPOINTS_URL}")


def test_unknown_v1_model_size_is_refused():
    with pytest.raises(ValueError) as error:
        load_depth_anything_v1([], size="giant")
    assert str(error.value) == "Depth Anything V1 model must be one of small, base, large, got 'giant'"
