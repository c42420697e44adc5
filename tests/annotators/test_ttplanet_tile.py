"""TTPlanet's tile preprocessors. The guided filter against a brute-force write-up of He et al.'s
equations (every window's regression solved on its own, in float64, with OpenCV's reflect-101
border written as numpy padding); the pipelines against their steps; the rounding and the
clipping by construction."""

import re

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from annotators.guided_filter import fast_guided_filter
from annotators.tile import ttplanet_tile_guided_filter, ttplanet_tile_simple


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


def padded(values: np.ndarray, radius: int) -> np.ndarray:
    """OpenCV's default border (reflect-101: ...c b | a b c ...) is numpy's 'reflect'."""
    return np.pad(values, [(radius, radius), (radius, radius)] + [(0, 0)] * (values.ndim - 2), mode="reflect")


def window_means(values: np.ndarray, radius: int) -> np.ndarray:
    side = 2 * radius + 1
    border = padded(values, radius)
    height, width = values.shape[:2]
    return np.stack([[border[y:y + side, x:x + side].mean(axis=(0, 1)) for x in range(width)] for y in range(height)])


def brute_force_coefficients(guide: np.ndarray, source: np.ndarray, radius: int, eps: float):
    """mean(a) and mean(b): each window's ridge regression of the source on the guide, solved
    on its own in float64, then averaged over the windows covering each pixel."""
    guide, source = guide.astype(np.float64), source.astype(np.float64)
    height, width, channels = source.shape
    side = 2 * radius + 1
    guide_border, source_border = padded(guide, radius), padded(source, radius)
    a = np.zeros((height, width, 3, channels))
    b = np.zeros((height, width, channels))
    for y in range(height):
        for x in range(width):
            window = guide_border[y:y + side, x:x + side].reshape(-1, 3)
            targets = source_border[y:y + side, x:x + side].reshape(-1, channels)
            centred = window - window.mean(axis=0)
            covariance = centred.T @ centred / len(window)
            cross = centred.T @ (targets - targets.mean(axis=0)) / len(window)
            a[y, x] = np.linalg.solve(covariance + eps * np.eye(3), cross)
            b[y, x] = targets.mean(axis=0) - window.mean(axis=0) @ a[y, x]
    mean_a = window_means(a.reshape(height, width, -1), radius).reshape(a.shape)
    return mean_a, window_means(b, radius)


def brute_force_guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    mean_a, mean_b = brute_force_coefficients(guide, source, radius, eps)
    return np.einsum("hwk,hwkc->hwc", guide.astype(np.float64), mean_a) + mean_b


def nearest_shrunk(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV's INTER_NEAREST: destination pixel i reads source pixel floor(i * source / destination)."""
    rows = np.minimum(np.floor(np.arange(height) * values.shape[0] / height).astype(int), values.shape[0] - 1)
    columns = np.minimum(np.floor(np.arange(width) * values.shape[1] / width).astype(int), values.shape[1] - 1)
    return values[rows][:, columns]


def bilinear(values: np.ndarray, height: int, width: int) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()


def brute_force_fast_guided_filter(image: np.ndarray, radius: int, eps: float, scale: float) -> np.ndarray:
    """The fast guided filter of an image by itself: coefficients fitted on the nearest-shrunk
    copy with the radius shrunk alike, enlarged bilinearly, applied to the full image."""
    height, width = image.shape[:2]
    small = nearest_shrunk(image, int(height / scale), int(width / scale))
    mean_a, mean_b = brute_force_coefficients(small, small, int(radius / scale), eps)
    small_height, small_width = small.shape[:2]
    mean_a = bilinear(mean_a.reshape(small_height, small_width, -1), height, width).reshape(height, width, 3, 3)
    return np.einsum("hwk,hwkc->hwc", image.astype(np.float64), mean_a) + bilinear(mean_b, height, width)


PATCH = data.astronaut()[100:118, 180:201].astype(np.float32) / 255  # 18 x 21, face and helmet edge


@pytest.mark.parametrize("radius, eps", [(1, 0.01), (2, 0.01), (3, 0.05)])
def test_guided_filter_equals_the_brute_force_regression(radius, eps):
    source = np.ascontiguousarray(PATCH[:, ::-1])  # another image than the guide, so guide and source are not mixed up
    expected = brute_force_guided_filter(PATCH, source, radius, eps)
    result = fast_guided_filter(PATCH, source, radius, eps, 1.0)
    assert result.dtype == np.float32 and result.shape == PATCH.shape
    np.testing.assert_allclose(result, expected, atol=2e-5)
    assert np.abs(expected - source).max() > 0.05  # the filter did something


@pytest.mark.parametrize("radius, scale", [(4, 2.0), (5, 1.5), (3, 3.0), (7, 2.0)])  # 7 / 2: truncated to 3
def test_fast_guided_filter_fits_on_the_shrunk_image_and_applies_at_full_size(radius, scale):
    expected = brute_force_fast_guided_filter(PATCH, radius, 0.01, scale)
    np.testing.assert_allclose(fast_guided_filter(PATCH, PATCH, radius, 0.01, scale), expected, atol=2e-5)


def ttplanet_blur(rgb: np.ndarray, strength: float) -> np.ndarray:
    side = int(strength) + (1 - int(strength) % 2)  # TTPlanet: int(b), +1 when even
    return cv2.GaussianBlur(rgb, (side, side), sigmaX=strength / 2)


@pytest.mark.parametrize("scale, strength, radius, eps", [(1.0, 2.0, 7, 0.01), (2.0, 3.0, 7, 0.01), (1.5, 5.5, 3, 0.05)])
def test_guided_filter_tile_is_blur_filter_round_area_down_cubic_up(scale, strength, radius, eps):
    photo = np.ascontiguousarray(data.coffee()[:101, :157])
    blurred = ttplanet_blur(photo, strength).astype(np.float32) / 255
    filtered = np.clip(np.round(fast_guided_filter(blurred, blurred, radius, eps, scale) * 255), 0, 255).astype(np.uint8)
    expected = filtered
    if scale > 1:
        small = cv2.resize(filtered, (int(157 / scale), int(101 / scale)), interpolation=cv2.INTER_AREA)
        expected = cv2.resize(small, (157, 101), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(ttplanet_tile_guided_filter(photo, scale, strength, radius, eps), expected)


@pytest.mark.parametrize("level", [0, 1, 77, 128, 200, 254, 255])
def test_guided_filter_tile_keeps_a_flat_image(level):
    """The original truncates 255 * q and darkens most flat images by one level; rounding does not."""
    flat = np.full((40, 50, 3), level, np.uint8)
    np.testing.assert_array_equal(ttplanet_tile_guided_filter(flat), flat)


def test_guided_filter_tile_clips_what_overshoots_instead_of_wrapping():
    photo = data.coffee()
    blurred = ttplanet_blur(photo, 2.0).astype(np.float32) / 255
    unclipped = fast_guided_filter(blurred, blurred, 7, 0.01, 1.0) * 255
    above, below = unclipped >= 255.5, unclipped < -0.5
    assert above.any() and below.any()  # the photo does overshoot both ways
    result = ttplanet_tile_guided_filter(photo)
    assert np.all(result[above] == 255) and np.all(result[below] == 0)


@pytest.mark.parametrize("scale, strength", [(1.0, 2.0), (2.0, 3.0), (1.7, 5.5), (3.0, 1.0)])
def test_simple_tile_is_area_down_lanczos_up_then_blur(scale, strength):
    photo = np.ascontiguousarray(data.coffee()[:101, :157])
    expected = photo
    if scale > 1:
        small = cv2.resize(photo, (int(157 / scale), int(101 / scale)), interpolation=cv2.INTER_AREA)
        expected = cv2.resize(small, (157, 101), interpolation=cv2.INTER_LANCZOS4)
    np.testing.assert_array_equal(ttplanet_tile_simple(photo, scale, strength), ttplanet_blur(expected, strength))


def test_blur_strength_one_and_scale_one_leave_the_image_as_it_is():
    photo = data.astronaut()
    np.testing.assert_array_equal(ttplanet_tile_simple(photo, 1.0, 1.0), photo)


@pytest.mark.parametrize("call, message", [
    (lambda image: ttplanet_tile_simple(image, 0.5), "TTPlanet tile scale_factor must be >= 1, got 0.5"),
    (lambda image: ttplanet_tile_guided_filter(image, 0.5), "TTPlanet tile scale_factor must be >= 1, got 0.5"),
    (lambda image: ttplanet_tile_simple(image, 50.0),
     "TTPlanet tile scale_factor 50.0 shrinks the 40x60 image below one pixel; use a smaller factor"),
    (lambda image: ttplanet_tile_guided_filter(image, 50.0),
     "TTPlanet tile scale_factor 50.0 shrinks the 40x60 image below one pixel; use a smaller factor"),
    (lambda image: ttplanet_tile_simple(image, 1.0, 0.0), "TTPlanet tile blur_strength must be > 0, got 0.0"),
    (lambda image: ttplanet_tile_guided_filter(image, radius=0), "TTPlanet tile radius must be >= 1, got 0"),
    (lambda image: ttplanet_tile_guided_filter(image, eps=0.0), "TTPlanet tile eps must be > 0, got 0.0"),
])
def test_bad_options_are_refused(call, message):
    with pytest.raises(ValueError, match=exact(message)):
        call(np.zeros((40, 60, 3), np.uint8))
