"""PyraCanny against a write-up of Fooocus's `canny_pyramid` (extras/preprocessors.py) whose
blending resize is torch's bilinear interpolation and whose percentiles are read off the sorted
values, so neither comes from the code under test; plus its edge cases by construction."""

import re
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from annotators.pyracanny import pyracanny

SCALES = [k / 10 for k in range(2, 11)]  # Fooocus: [0.2, 0.3, ..., 1.0]


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """HxWxC float32 enlarged with pixel centres aligned (OpenCV's INTER_LINEAR rule)."""
    tensor = torch.from_numpy(values).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def percentile(values: np.ndarray, q: float) -> float:
    """numpy's default 'linear' percentile written out: the value at rank q/100 * (n-1)."""
    ordered = np.sort(values.ravel()).astype(np.float64)
    rank = q / 100 * (len(ordered) - 1)
    below = int(np.floor(rank))
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (rank - below) * (ordered[above] - ordered[below])


def blended_sum(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    accumulated = None
    for scale in SCALES:
        size = (int(width * scale), int(height * scale))
        small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        edges = np.dstack([cv2.Canny(np.ascontiguousarray(small[..., c]), low, high) for c in range(3)]) / 255.0
        if accumulated is None:
            accumulated = edges.astype(np.float32)
        else:
            accumulated = bilinear(accumulated.astype(np.float32), size[1], size[0]) * 0.75 + edges * 0.25
    return accumulated.sum(axis=2)


def fooocus_map(rgb: np.ndarray, low: int, high: int) -> np.ndarray:
    summed = blended_sum(rgb, low, high)
    v_min, v_max = percentile(summed, 1), percentile(summed, 99)
    return np.clip((summed - v_min) / (v_max - v_min) * 255.0, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("photo, low, high", [
    (data.astronaut()[::2, ::2], 64, 128),
    (data.coffee()[:301, :457], 64, 128),
    (data.chelsea(), 100, 200),
])
def test_equals_the_fooocus_write_up_to_a_level(photo, low, high):
    expected = fooocus_map(photo, low, high)
    result = pyracanny(photo, low, high, resolution=None)
    assert result.shape == photo.shape and result.dtype == np.uint8
    assert np.array_equal(result[..., 0], result[..., 1]) and np.array_equal(result[..., 0], result[..., 2])
    difference = np.abs(result[..., 0].astype(int) - expected)
    # float32 against float64 arithmetic: a value on a level's edge truncates either way
    assert difference.max() <= 1
    assert np.mean(difference == 0) > 0.999
    assert len(np.unique(expected)) > 100  # a soft map, not a binary one


def test_at_a_detect_resolution_the_map_comes_back_at_the_image_size():
    photo = data.coffee()  # 400 x 600 -> detected at 512 x 768
    detected = cv2.resize(photo, (768, 512), interpolation=cv2.INTER_LANCZOS4)  # v1.1 enlarges with Lanczos
    expected = cv2.resize(pyracanny(detected, resolution=None), (600, 400), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(pyracanny(photo, resolution=512), expected)


def test_sparse_edges_give_fooocus_binary_map():
    """Edges on under 1% of the image: the 1st and 99th percentiles are both 0 and Fooocus's
    division by zero leaves 255 wherever any edge blended in, 0 elsewhere."""
    image = np.zeros((200, 200, 3), np.uint8)
    image[96:104, 96:104] = (255, 255, 255)
    summed = blended_sum(image, 64, 128)
    assert percentile(summed, 99) == 0 and np.any(summed > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pyracanny(image, 64, 128, resolution=None)[..., 0]
    np.testing.assert_array_equal(result, np.where(summed > 0, 255, 0))


def test_a_flat_image_gives_a_black_map_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pyracanny(np.full((64, 96, 3), 128, np.uint8), resolution=None)
    assert not result.any()


def test_tiny_images_skip_the_scales_with_no_pixel():
    """4 pixels wide: 0.2 and 0.3 give no column and are skipped; the result is the write-up
    started at 0.4."""
    tiny = np.ascontiguousarray(data.astronaut()[200:204, 200:204])
    result = pyracanny(tiny, 10, 20, resolution=None)
    assert result.shape == (4, 4, 3)
    with pytest.raises(cv2.error):
        fooocus_map(tiny, 10, 20)  # Fooocus itself fails here


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match=exact("pyracanny low_threshold (200) is above high_threshold (100); swap them")):
        pyracanny(data.astronaut(), 200, 100)
    with pytest.raises(ValueError, match=exact("pyracanny thresholds must be >= 0, got low=-1, high=100")):
        pyracanny(data.astronaut(), -1, 100)
