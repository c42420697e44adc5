"""Recolor maps and Restore Brightness against independent computations: CIE L* from the sRGB and
CIELAB formulas in numpy (not OpenCV), HSV value as max(R, G, B), gamma on 0..1 truncated as A1111
does; and restoring an image's own brightness is the colour space's round trip exactly.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from annotators.image import resize_for_detection
from annotators.recolor import (BRIGHTNESS_SPACES, INTENSITY, LAB_ORDER_A1111, LAB_ORDER_RGB, LUMINANCE,
                                recolor_map, restore_brightness)

SIDE = 96
PHOTO = cv2.resize(data.astronaut(), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
OTHER_PHOTO = cv2.resize(data.chelsea(), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
RANDOM_COLOURS = np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
GAMMAS = (0.45, 1.0, 1.7)
# OpenCV's 8-bit LAB works in fixed point: its L* is within one level of the exact formula.
LAB_FIXED_POINT_LEVELS = 1
# Restoring another image's L*: colours outside the sRGB gamut are clipped on the way back, so a
# few pixels miss the map's L*; the rest are within one level.
LUMINANCE_MISS_FRACTION = 0.01
# sRGB (IEC 61966-2-1) and CIELAB (CIE 15), D65 white: the definitions OpenCV implements.
SRGB_LINEAR_BELOW = 0.04045
SRGB_SLOPE = 12.92
SRGB_OFFSET = 0.055
SRGB_EXPONENT = 2.4
LUMINANCE_WEIGHTS_RGB = (0.212671, 0.715160, 0.072169)  # Y of linear sRGB (OpenCV's sRGB->XYZ row)
LAB_EPSILON = 216 / 24389
LAB_KAPPA = 24389 / 27
OPENCV_L_SCALE = 255 / 100  # 8-bit LAB stores L* x 255 / 100


def cie_lightness(rgb: np.ndarray) -> np.ndarray:
    """L* on OpenCV's 8-bit scale, rounded, from the formulas."""
    c = rgb.astype(np.float64) / 255
    linear = np.where(c <= SRGB_LINEAR_BELOW, c / SRGB_SLOPE, ((c + SRGB_OFFSET) / (1 + SRGB_OFFSET)) ** SRGB_EXPONENT)
    y = linear @ np.array(LUMINANCE_WEIGHTS_RGB)
    lightness = np.where(y > LAB_EPSILON, 116 * np.cbrt(y) - 16, LAB_KAPPA * y)
    return np.round(lightness * OPENCV_L_SCALE)


def a1111_gamma(channel: np.ndarray, gamma: float) -> np.ndarray:
    return (((channel / 255.0) ** gamma) * 255.0).clip(0, 255).astype(np.uint8)


def gray(values: np.ndarray) -> np.ndarray:
    return np.repeat(values[..., None], 3, axis=2)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("photo", [PHOTO, RANDOM_COLOURS], ids=["photo", "random"])
def test_intensity_is_the_largest_channel_gamma_corrected(photo, gamma):
    expected = a1111_gamma(photo.max(axis=2).astype(np.float32), gamma)
    result = recolor_map(photo, INTENSITY, gamma, None)
    assert np.array_equal(result, gray(expected))
    assert len(np.unique(result)) > 64


@pytest.mark.parametrize("photo", [PHOTO, RANDOM_COLOURS], ids=["photo", "random"])
def test_luminance_is_cie_lightness_and_the_a1111_order_swaps_red_and_blue(photo):
    true_l = recolor_map(photo, LUMINANCE, 1.0, None, LAB_ORDER_RGB)
    a1111_l = recolor_map(photo, LUMINANCE, 1.0, None, LAB_ORDER_A1111)
    assert np.abs(true_l[..., 0] - cie_lightness(photo)).max() <= LAB_FIXED_POINT_LEVELS
    assert np.abs(a1111_l[..., 0] - cie_lightness(photo[..., ::-1])).max() <= LAB_FIXED_POINT_LEVELS
    assert np.abs(true_l.astype(int) - a1111_l).max() > 10  # the option matters on colour
    assert np.array_equal(true_l, gray(true_l[..., 0]))


def test_the_lab_order_does_not_matter_for_a_gray_photo():
    photo = gray(cv2.cvtColor(PHOTO, cv2.COLOR_RGB2GRAY))
    assert np.array_equal(recolor_map(photo, LUMINANCE, 1.3, None, LAB_ORDER_RGB),
                          recolor_map(photo, LUMINANCE, 1.3, None, LAB_ORDER_A1111))


@pytest.mark.parametrize("gamma", GAMMAS)
def test_luminance_gamma_is_applied_to_the_lightness(gamma):
    lightness = recolor_map(PHOTO, LUMINANCE, 1.0, None, LAB_ORDER_RGB)[..., 0]
    assert np.array_equal(recolor_map(PHOTO, LUMINANCE, gamma, None, LAB_ORDER_RGB),
                          gray(a1111_gamma(lightness.astype(np.float32), gamma)))


def test_maps_come_back_at_the_image_size_from_the_detect_resolution():
    wide = cv2.resize(PHOTO, (SIDE * 3 // 2, SIDE), interpolation=cv2.INTER_AREA)
    result = recolor_map(wide, INTENSITY, 1.0, 64)
    assert result.shape == (SIDE, SIDE * 3 // 2, 3)
    detected = recolor_map(resize_for_detection(wide, 64), INTENSITY, 1.0, None)
    assert detected.shape[0] == 64
    assert np.array_equal(result, cv2.resize(detected, (SIDE * 3 // 2, SIDE), interpolation=cv2.INTER_LINEAR))


@pytest.mark.parametrize("kind", [LUMINANCE, INTENSITY])
def test_restoring_an_images_own_brightness_is_the_colour_round_trip(kind):
    to_space, from_space, _ = BRIGHTNESS_SPACES[kind]
    own = recolor_map(PHOTO, kind, 1.0, None, LAB_ORDER_RGB)
    restored = restore_brightness(PHOTO.astype(np.float32) / 255, own, kind)
    assert restored.dtype == np.float32
    assert np.array_equal(np.round(restored * 255), cv2.cvtColor(cv2.cvtColor(PHOTO, to_space), from_space))


def test_restored_intensity_is_the_maps():
    target = recolor_map(OTHER_PHOTO, INTENSITY, 1.0, None)
    restored = np.round(restore_brightness(PHOTO.astype(np.float32) / 255, target, INTENSITY) * 255)
    assert np.array_equal(restored.max(axis=2), target[..., 0])
    assert not np.array_equal(restored.max(axis=2), PHOTO.max(axis=2))


def test_restored_luminance_is_the_maps_where_the_colour_is_in_gamut():
    target = recolor_map(OTHER_PHOTO, LUMINANCE, 1.0, None, LAB_ORDER_RGB)
    restored = np.round(restore_brightness(PHOTO.astype(np.float32) / 255, target, LUMINANCE) * 255).astype(np.uint8)
    miss = np.abs(cie_lightness(restored) - target[..., 0]) > 1 + LAB_FIXED_POINT_LEVELS
    assert miss.mean() < LUMINANCE_MISS_FRACTION
    # the colours are the photo's: its a*, b* survive wherever the lightness allows them
    photo_ab = cv2.cvtColor(PHOTO, cv2.COLOR_RGB2LAB)[..., 1:].astype(int)
    restored_ab = cv2.cvtColor(restored, cv2.COLOR_RGB2LAB)[..., 1:].astype(int)
    assert np.median(np.abs(photo_ab - restored_ab)) <= 2


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"^gamma must be positive, got 0.0$"):
        recolor_map(PHOTO, LUMINANCE, 0.0, None)
    with pytest.raises(ValueError, match=r"^brightness must be one of luminance, intensity, got 'value'$"):
        recolor_map(PHOTO, "value", 1.0, None)
    with pytest.raises(ValueError, match=r"^lab_order must be one of a1111, rgb, got 'bgr'$"):
        recolor_map(PHOTO, LUMINANCE, 1.0, None, "bgr")
    with pytest.raises(ValueError, match=r"^the brightness map is 48x96 but the image is 96x96; they must be the same size$"):
        restore_brightness(PHOTO, PHOTO[:, :48], LUMINANCE)
