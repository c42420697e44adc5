"""Pixel-perfect resolution and the three resize modes, against hand-derived numbers."""

import re

import cv2
import numpy as np
import pytest
from skimage import data

from annotators import (ResizeMode, high_quality_resize, pixel_perfect_resolution,
                        resize_geometry, resize_to_target)

CROP, FILL, JUST = ResizeMode.CROP_AND_RESIZE, ResizeMode.RESIZE_AND_FILL, ResizeMode.JUST_RESIZE


# --- pixel perfect -------------------------------------------------------------------------------

@pytest.mark.parametrize("image_hw, target_hw, mode, expected", [
    # k0 = 1024/512 = 2, k1 = 1024/768 = 1.333; crop takes max: 2 * 512
    ((512, 768), (1024, 1024), CROP, 1024),
    # fill takes min: 1.333 * 512 = 682.67 -> 683
    ((512, 768), (1024, 1024), FILL, 683),
    # k0 = 2, k1 = 3: just-resize behaves like crop (max): 3 * 200; fill: 2 * 200
    ((300, 200), (600, 600), JUST, 600),
    ((300, 200), (600, 600), FILL, 400),
    # k0 = 1/4, k1 = 5/8: 0.625 * 4 = 2.5 rounds half to even -> 2 (not 3)
    ((4, 8), (1, 5), CROP, 2),
    # 0.875 * 4 = 3.5 -> 4 (even)
    ((4, 8), (1, 7), CROP, 4),
    # min: 0.25 * 4 = 1
    ((4, 8), (1, 5), FILL, 1),
    # A1111's UI strings are accepted too
    ((512, 768), (1024, 1024), "Resize and Fill", 683),
])
def test_pixel_perfect_resolution_by_hand(image_hw, target_hw, mode, expected):
    assert pixel_perfect_resolution(image_hw, target_hw, mode) == expected


def test_unknown_resize_mode_is_refused():
    message = ("unknown resize mode 'Stretch'; choose one of 'Just Resize', 'Crop and Resize', "
               "'Resize and Fill'")
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        pixel_perfect_resolution((10, 10), (20, 20), "Stretch")


# --- geometry ------------------------------------------------------------------------------------

@pytest.mark.parametrize("source_hw, target_hw, mode, scaled, offset", [
    # k = max(1, 0.5) = 1: keep 100x200, cut the middle 100 columns: (200 - 100) // 2 = 50
    ((100, 200), (100, 100), CROP, (100, 200), (0, 50)),
    # k = max(1.7067, 1.28): 300k = 512, 400k = 682.67 -> 683; (683 - 512) // 2 = 85
    ((300, 400), (512, 512), CROP, (512, 683), (0, 85)),
    # k = min(1, 0.5) = 0.5: 50x100 pasted (100 - 50) // 2 = 25 rows down
    ((100, 200), (100, 100), FILL, (50, 100), (25, 0)),
    # k = min(1.7067, 1.28) = 1.28: 384x512, (512 - 384) // 2 = 64
    ((300, 400), (512, 512), FILL, (384, 512), (64, 0)),
    # k = min(3.333, 1.4286): 3k = 4.29 -> 4, 7k = 10; (10 - 4) // 2 = 3
    ((3, 7), (10, 10), FILL, (4, 10), (3, 0)),
    ((3, 7), (10, 10), JUST, (10, 10), (0, 0)),
])
def test_resize_geometry_by_hand(source_hw, target_hw, mode, scaled, offset):
    assert resize_geometry(source_hw, target_hw, mode) == (scaled, offset)


# --- resize modes on real maps -------------------------------------------------------------------

def test_crop_and_resize_content():
    photo = data.astronaut()[:300, :400]  # a photo: many colours, grows -> INTER_CUBIC
    out = resize_to_target(photo, (512, 512), CROP)
    expected = cv2.resize(photo, (683, 512), interpolation=cv2.INTER_CUBIC)[:, 85:85 + 512]
    np.testing.assert_array_equal(out, expected)


def test_resize_and_fill_content_and_border_median():
    photo = np.ascontiguousarray(data.astronaut()[:100, :200])  # shrinks -> INTER_AREA
    out = resize_to_target(photo, (100, 100), FILL)
    assert out.shape == (100, 100, 3)
    np.testing.assert_array_equal(out[25:75],
                                  cv2.resize(photo, (100, 50), interpolation=cv2.INTER_AREA))
    border = np.concatenate([photo[0], photo[-1], photo[:, 0], photo[:, -1]])
    fill = np.median(border, axis=0).astype(np.uint8)
    assert np.all(out[:25] == fill) and np.all(out[75:] == fill)


def test_fill_colour_is_the_border_median_by_hand():
    # 4x4 map: border pixels (12 of them, 16 with corners counted twice) are (10, 20, 30)
    # except one (200, 0, 0) on the top edge (not a corner) -> median (10, 20, 30).
    grid = np.zeros((4, 4, 3), np.uint8)
    grid[:, :] = (10, 20, 30)
    grid[0, 1] = (200, 0, 0)
    grid[1:3, 1:3] = (99, 99, 99)  # interior does not count
    out = resize_to_target(grid, (8, 16), FILL)  # k = min(2, 4) = 2 -> 8x8 at column 4
    assert np.all(out[:, :4] == (10, 20, 30)) and np.all(out[:, 12:] == (10, 20, 30))


def test_just_resize_ignores_aspect():
    photo = data.coffee()  # 400x600 -> 300x300 shrinks -> INTER_AREA
    np.testing.assert_array_equal(resize_to_target(photo, (300, 300), JUST),
                                  cv2.resize(photo, (300, 300), interpolation=cv2.INTER_AREA))


# --- high_quality_resize -------------------------------------------------------------------------

def test_label_maps_use_nearest():
    labels = np.zeros((30, 40, 3), np.uint8)
    labels[:, 10:] = (120, 120, 120)
    labels[10:, 25:] = (6, 230, 230)  # 3 colours: label-like
    out = high_quality_resize(labels, (75, 100))
    np.testing.assert_array_equal(out, cv2.resize(labels, (100, 75),
                                                  interpolation=cv2.INTER_NEAREST))
    assert {tuple(c) for c in out.reshape(-1, 3)} == {tuple(c) for c in labels.reshape(-1, 3)}


def test_binary_blobs_stay_binary():
    blob = np.zeros((40, 40, 3), np.uint8)
    cv2.circle(blob, (20, 20), 12, (255, 255, 255), -1)
    for size in ((100, 100), (17, 17)):
        out = high_quality_resize(blob, size)
        assert out.shape == size + (3,) and set(np.unique(out)) == {0, 255}


def test_one_pixel_line_stays_one_pixel_wide_when_enlarged():
    lines = np.zeros((32, 32, 3), np.uint8)
    lines[10, 4:28] = 255  # a one-pixel horizontal line
    out = high_quality_resize(lines, (96, 96))[:, :, 0]
    assert set(np.unique(out)) == {0, 255}
    # Columns well inside the line's span (x 4..27 -> 12..83 at 3x) hold exactly one white pixel,
    # near row 10 * 3 + 1 = 31 (pixel centres scale as (y + 0.5) * 3 - 0.5).
    for column in range(20, 76):
        rows = np.flatnonzero(out[:, column])
        assert len(rows) == 1 and abs(rows[0] - 31) <= 1


def test_same_size_is_untouched():
    photo = data.astronaut()
    assert high_quality_resize(photo, (512, 512)) is photo
