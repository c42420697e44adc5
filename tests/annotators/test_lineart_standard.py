"""Standard line art against controlnet-aux 0.0.10's LineartStandardDetector (the code of
comfyui_controlnet_aux's Standard Lineart and A1111's lineart_standard), map for map.

The oracle resizes to the detect resolution and back bicubically; ours brings soft maps back
bilinearly. So the maps are compared on images already at a detect size (both resizes are then
copies), and the way back is checked as the oracle's map at the detect size resized bilinearly.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
from skimage import data

aux_standard = pytest.importorskip("controlnet_aux.lineart_standard")

from annotators.lineart_standard import lineart_standard  # noqa: E402

PHOTO_256 = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
COFFEE = cv2.resize(data.coffee(), (384, 256), interpolation=cv2.INTER_AREA)  # 256 x 384: multiples of 64
# Gray, with darkenings whose median is above 16: there the map's level depends on the order of
# the division and the x 127 (float32 rounding at a truncation boundary, one pixel at sigma 6).
CAMERA = np.dstack([cv2.resize(data.camera(), (256, 256), interpolation=cv2.INTER_AREA)] * 3)


def drawing() -> np.ndarray:
    """Dark strokes of several weights on a light, slightly uneven page (256 x 320)."""
    page = np.full((256, 320, 3), 235, np.uint8)
    page[:, 160:] = 245
    cv2.line(page, (10, 20), (300, 200), (20, 20, 20), 3)
    cv2.circle(page, (120, 140), 60, (60, 40, 40), 1)
    cv2.rectangle(page, (200, 30), (290, 110), (90, 90, 120), 2)
    return page


def faint_drawing() -> np.ndarray:
    """Strokes only 5 levels darker than the page: no intensity passes threshold 8, so the
    peer's median is of nothing and its scale falls back to 16."""
    page = np.full((128, 192, 3), 200, np.uint8)
    cv2.line(page, (5, 5), (180, 120), (195, 195, 195), 2)
    return page


def gray_noise() -> np.ndarray:
    """Gray noise (100..180): half the pixels are darker than their blur by up to 40, the other
    half give exactly 0. With threshold 0, "> threshold" takes the median of the darker half
    (about 20, so it sets the scale), where ">=" would take in the zeros (median 0: scale 16)."""
    noise = np.random.default_rng(1).integers(100, 181, (128, 192)).astype(np.uint8)
    return np.dstack([noise] * 3)


def oracle(image: np.ndarray, sigma: float, threshold: float) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the median of an empty selection (faint page)
        return aux_standard.LineartStandardDetector()(image, guassian_sigma=sigma, intensity_threshold=threshold,
                                                      detect_resolution=min(image.shape[:2]), output_type="np")


IMAGES = {"photo": PHOTO_256, "coffee": COFFEE, "camera": CAMERA, "drawing": drawing(), "faint": faint_drawing(),
          "noise": gray_noise()}
SETTINGS = [(6.0, 8), (2.0, 3), (10.0, 16), (0.7, 0), (6.0, 0)]


@pytest.mark.parametrize("sigma, threshold", SETTINGS)
@pytest.mark.parametrize("name", list(IMAGES))
def test_map_equals_the_oracle(name, sigma, threshold):
    image = IMAGES[name]
    expected = oracle(image, sigma, threshold)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours takes no median of nothing
        got = lineart_standard(image, sigma, threshold, resolution=min(image.shape[:2]))
    assert got.dtype == np.uint8 and got.shape == expected.shape == image.shape
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(expected)) >= 4  # lines and background, several strengths


def test_faint_lines_are_scaled_by_16():
    """By hand: no intensity above the threshold, so intensity x 127 / 16, truncated."""
    image = faint_drawing()
    x = image.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    assert intensity.max() <= 8
    expected = (intensity / 16 * 127).clip(0, 255).astype(np.uint8)
    np.testing.assert_array_equal(lineart_standard(image, resolution=None)[:, :, 0], expected)
    assert expected.max() > 0


def test_defaults_are_sigma_6_threshold_8_at_512():
    photo = data.astronaut()  # 512 x 512: the default detect resolution is its own size
    np.testing.assert_array_equal(lineart_standard(photo), oracle(photo, 6.0, 8))


def test_detect_resolution_resizes_first_and_brings_the_map_back_bilinearly():
    small = cv2.resize(PHOTO_256, (128, 128), interpolation=cv2.INTER_AREA)  # resize_for_detection
    expected = cv2.resize(oracle(small, 6.0, 8), (256, 256), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(lineart_standard(PHOTO_256, resolution=128), expected)


def test_flat_image_is_black():
    np.testing.assert_array_equal(lineart_standard(np.full((64, 64, 3), 128, np.uint8), resolution=None), 0)


@pytest.mark.parametrize("sigma", [0.0, -1.0])
def test_sigma_must_be_positive(sigma):
    with pytest.raises(ValueError) as error:
        lineart_standard(PHOTO_256, gaussian_sigma=sigma)
    assert str(error.value) == f"gaussian_sigma must be positive (the blur's width in pixels), got {sigma}"
