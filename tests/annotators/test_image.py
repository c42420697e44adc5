"""Input normalisation, the detect-resolution resize, and refusal of bad input (exact messages)."""

import re

import cv2
import numpy as np
import pytest
from skimage import data

from annotators import (binary, canny, color_grid, content_shuffle, hough_lines, scribble, tile,
                        xdog_scribble)
from annotators.image import detection_size, resize_for_detection, run_at_resolution, to_rgb_uint8


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- conversions -----------------------------------------------------------------------------

def test_gray_is_copied_to_three_channels():
    gray = data.camera()
    for layout in (gray, gray[:, :, None]):
        rgb = to_rgb_uint8(layout)
        assert rgb.shape == gray.shape + (3,)
        for channel in range(3):
            np.testing.assert_array_equal(rgb[:, :, channel], gray)


def test_rgba_is_composited_on_white():
    # alpha 51 = 0.2: out = 0.2 * colour + 0.8 * 255 = 0.2 * colour + 204
    rgba = np.array([[[100, 0, 255, 51], [7, 8, 9, 255], [7, 8, 9, 0]]], dtype=np.uint8)
    expected = np.array([[[224, 204, 255], [7, 8, 9], [255, 255, 255]]], dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), expected)


def test_gray_alpha_is_composited_on_white():
    gray_alpha = np.array([[[100, 51], [30, 255]]], dtype=np.uint8)
    expected = np.array([[[224] * 3, [30] * 3]], dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(gray_alpha), expected)


def test_16_bit_is_scaled_by_257_with_rounding():
    # v8 = round(v16 / 257): 257 -> 1, 65535 -> 255, 128 -> 0.498 -> 0, 129 -> 0.502 -> 1,
    # 32768 = 127 * 257 + 129 -> 127.502 -> 128.
    values = np.array([[0, 257, 65535, 128, 129, 32768]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(values)[:, :, 0], [[0, 1, 255, 0, 1, 128]])


def test_16_bit_widened_8_bit_image_round_trips():
    photo = data.astronaut()
    np.testing.assert_array_equal(to_rgb_uint8(photo.astype(np.uint16) * 257), photo)


def test_float_is_0_to_1_and_rounded():
    values = np.array([[0.0, 1.0, 0.5, 1.0005, -0.0005, 100 / 255]], dtype=np.float32)
    # 0.5 * 255 = 127.5 rounds half to even -> 128; slightly out of range is clipped.
    np.testing.assert_array_equal(to_rgb_uint8(values)[:, :, 0], [[0, 255, 128, 255, 0, 100]])


def test_float_round_trip_is_exact():
    photo = data.coffee()
    np.testing.assert_array_equal(to_rgb_uint8(photo.astype(np.float32) / 255.0), photo)


def test_bool_is_black_and_white():
    mask = np.array([[True, False]])
    np.testing.assert_array_equal(to_rgb_uint8(mask)[:, :, 0], [[255, 0]])


# --- refusals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, error, message", [
    ([[1, 2]], TypeError,
     "image must be a numpy array (HxWxC), got list; convert it with np.asarray(...)"),
    (np.zeros((0, 5, 3), np.uint8), ValueError,
     "image is empty (shape (0, 5, 3)); pass an image with at least one pixel"),
    (np.zeros((2, 4, 4, 3), np.uint8), ValueError,
     "image must be HxW or HxWxC, got 4 dimensions (shape (2, 4, 4, 3)); "
     "pass one image at a time, e.g. batch[0]"),
    (np.zeros(7, np.uint8), ValueError,
     "image must be HxW or HxWxC, got 1 dimensions (shape (7,)); "
     "pass one image at a time, e.g. batch[0]"),
    (np.zeros((4, 4, 5), np.uint8), ValueError,
     "image must have 1, 2, 3 or 4 channels, got 5 (shape (4, 4, 5)); "
     "pass gray, gray+alpha, RGB or RGBA"),
    (np.zeros((16385, 2), np.uint8), ValueError,
     "image is 16385x2, over the 16384-pixel side limit; downscale it first"),
    (np.zeros((4, 4, 3), np.int64), ValueError,
     "image dtype int64 is not supported; use uint8 (0..255), uint16 (0..65535), bool, "
     "or float (0..1)"),
    (np.full((4, 4, 3), 200.0, np.float32), ValueError,
     "float image values must lie in 0..1, found 200..200; divide 0..255 data by 255 first"),
    (np.array([[0.5, np.nan]]), ValueError,
     "float image contains NaN or infinity; replace them first (np.nan_to_num)"),
])
def test_bad_input_is_refused_with_a_clear_message(bad, error, message):
    with pytest.raises(error, match=exact(message)):
        to_rgb_uint8(bad)
    with pytest.raises(error, match=exact(message)):  # and through an annotator
        canny(bad)


# --- detect resolution ---------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, resolution, expected", [
    (512, 512, 512, (512, 512)),
    # k = 512/480: width 640k = 682.7 -> 10.67 * 64 -> 11 * 64 = 704
    (480, 640, 512, (512, 704)),
    # k = 5.12: height 5120 = 80 * 64
    (1000, 100, 512, (5120, 512)),
    # k = 512/30: height 1706.7 -> 26.67 * 64 -> 27 * 64 = 1728
    (100, 30, 512, (1728, 512)),
    # k = 1: 96/64 = 1.5 and 160/64 = 2.5 both round half to even -> 2 * 64
    (96, 64, 64, (128, 64)),
    (160, 64, 64, (128, 64)),
    # a tiny image is enlarged: 20x30 -> short side 512, 768 = 12 * 64
    (20, 30, 512, (512, 768)),
])
def test_detection_size_by_hand(height, width, resolution, expected):
    assert detection_size(height, width, resolution) == expected


def test_detection_resolution_below_64_is_refused():
    with pytest.raises(ValueError, match=exact(
            "resolution must be at least 64 (sides are rounded to a multiple of 64), got 32")):
        detection_size(100, 100, 32)


def test_absurd_detection_size_is_refused():
    # k = 51.2: the 1000-pixel side becomes 51200, over the 16384 limit
    message = ("resolution 512 turns the 10x1000 image into 512x51200, over the 16384-pixel "
               "side limit; lower the resolution or crop the image")
    with pytest.raises(ValueError, match=exact(message)):
        canny(np.zeros((10, 1000, 3), np.uint8))


def test_resize_for_detection_uses_lanczos_up_and_area_down():
    photo = data.astronaut()  # 512x512
    small = photo[:300, :400]
    np.testing.assert_array_equal(resize_for_detection(small, 512),
                                  cv2.resize(small, (704, 512), interpolation=cv2.INTER_LANCZOS4))
    np.testing.assert_array_equal(resize_for_detection(photo, 256),
                                  cv2.resize(photo, (256, 256), interpolation=cv2.INTER_AREA))


def test_map_comes_back_at_the_original_size():
    photo = data.coffee()[:333, :517]  # coffee is 400x600
    seen = []

    def detector(rgb):
        seen.append(rgb.shape)
        return rgb[:, :, 0]

    out = run_at_resolution(photo, 512, detector)
    assert seen == [(512, 768, 3)]  # k = 512/333: 517k = 794.9 -> 12.4 * 64 -> 768
    assert out.shape == (333, 517, 3)


@pytest.mark.parametrize("annotator", [binary, canny, content_shuffle, hough_lines, scribble,
                                       xdog_scribble, color_grid])
def test_tiny_image_is_handled_at_a_detect_resolution(annotator):
    tiny = data.astronaut()[:20:, :30]
    out = annotator(tiny)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("annotator", [binary, canny, content_shuffle, hough_lines, scribble,
                                       xdog_scribble, tile])
def test_tiny_image_is_handled_at_its_own_size(annotator):
    tiny = data.astronaut()[:20:, :30]
    kwargs = {} if annotator is tile else {"resolution": None}
    assert annotator(tiny, **kwargs).shape == (20, 30, 3)


def test_color_grid_refuses_an_image_smaller_than_one_cell():
    message = ("color_grid needs an image of at least 64x64 pixels, got 60x100; "
               "upscale it or pass a detect resolution")
    with pytest.raises(ValueError, match=exact(message)):
        color_grid(np.zeros((60, 100, 3), np.uint8), resolution=None)
