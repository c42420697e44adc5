"""Colour grid, tile, shuffle, inpaint, normal-from-depth and palette colouring, by formula."""

import re

import cv2
import numpy as np
import pytest
from skimage import data

from annotators import (PALETTES, color_grid, colorize_labels, content_shuffle, inpaint_hint,
                        normal_from_depth, shuffle_flow, tile)
from annotators.palettes import ADE20K_PALETTE, COCO_PANOPTIC_PALETTE, COCO_STUFF_PALETTE, COCO_STUFF_UNUSED_IDS


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- colour grid ---------------------------------------------------------------------------------

def test_color_grid_is_cubic_down_by_64_then_nearest_up():
    photo = data.coffee()[:384, :512]
    cells = cv2.resize(photo, (512 // 64, 384 // 64), interpolation=cv2.INTER_CUBIC)
    # Nearest enlargement by an exact factor is block repetition.
    expected = np.repeat(np.repeat(cells, 64, axis=0), 64, axis=1)
    np.testing.assert_array_equal(color_grid(photo, resolution=None), expected)


def test_color_grid_at_detect_resolution_has_flat_cells():
    photo = data.coffee()  # 400x600 -> detected at 512x768 -> cells of 64 there
    out = color_grid(photo)
    assert out.shape == (400, 600, 3)
    small = cv2.resize(photo, (768, 512), interpolation=cv2.INTER_LANCZOS4)
    cells = cv2.resize(small, (12, 8), interpolation=cv2.INTER_CUBIC)
    assert {tuple(c) for c in out.reshape(-1, 3)} == {tuple(c) for c in cells.reshape(-1, 3)}


# --- tile --------------------------------------------------------------------------------------

def test_tile_identity_by_default():
    photo = data.astronaut()
    np.testing.assert_array_equal(tile(photo), photo)


@pytest.mark.parametrize("factor, sigma", [(4.0, 0.0), (2.5, 0.0), (1.0, 3.0), (3.0, 1.5)])
def test_tile_is_blur_then_area_down_then_cubic_up(factor, sigma):
    photo = data.coffee()[:301, :457]
    expected = cv2.GaussianBlur(photo, (0, 0), sigma) if sigma > 0 else photo
    if factor > 1:
        small = cv2.resize(expected, (int(457 / factor), int(301 / factor)),
                           interpolation=cv2.INTER_AREA)
        expected = cv2.resize(small, (457, 301), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(tile(photo, factor, sigma), expected)


def test_tile_refuses_a_factor_that_leaves_no_pixel():
    message = ("tile downsample_factor 50 shrinks the 40x60 image below one pixel; "
               "use a smaller factor")
    with pytest.raises(ValueError, match=exact(message)):
        tile(np.zeros((40, 60, 3), np.uint8), 50)


# --- content shuffle -----------------------------------------------------------------------------

def reference_flow(height, width, seed, cell=256):
    """v1.1 ContentShuffleDetector, re-derived: make_noise_disk twice (x then y) from one seeded
    numpy generator, each scaled to the image's extent."""
    rng = np.random.RandomState(seed)

    def noise_disk():
        coarse = rng.uniform(0, 1, size=(height // cell + 2, width // cell + 2, 1))
        smooth = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell),
                            interpolation=cv2.INTER_CUBIC)[cell:cell + height, cell:cell + width]
        return (smooth - smooth.min()) / (smooth - smooth.min()).max()

    x = noise_disk() * (width - 1)
    y = noise_disk() * (height - 1)
    return x, y


def test_shuffle_flow_is_v11_formula():
    x, y = reference_flow(300, 200, seed=7)
    flow = shuffle_flow(300, 200, seed=7)
    np.testing.assert_allclose(flow[:, :, 0], x, rtol=0, atol=1e-4)
    np.testing.assert_allclose(flow[:, :, 1], y, rtol=0, atol=1e-4)


def test_shuffle_same_seed_same_output_other_seed_other_output():
    photo = data.astronaut()
    first = content_shuffle(photo, seed=3)
    np.testing.assert_array_equal(first, content_shuffle(photo, seed=3))
    assert np.mean(first != content_shuffle(photo, seed=4)) > 0.5


def test_shuffle_samples_the_input_at_the_flow_coordinates():
    # A coordinate image: red = x, green = y. Sampling it bilinearly at (fx, fy) returns (fx, fy).
    yy, xx = np.mgrid[:256, :256]
    coordinates = np.stack([xx, yy, np.zeros_like(xx)], axis=2).astype(np.uint8)
    out = content_shuffle(coordinates, seed=11, resolution=None).astype(np.float64)
    fx, fy = reference_flow(256, 256, seed=11)
    assert np.abs(out[:, :, 0] - fx).max() <= 1.0
    assert np.abs(out[:, :, 1] - fy).max() <= 1.0
    assert fx.max() - fx.min() > 200  # the flow really moves content across the image


def test_shuffle_values_come_from_the_inputs_2x2_neighbourhood():
    photo = data.astronaut()[:200, :300]
    out = content_shuffle(photo, seed=5, resolution=None).astype(np.int32)
    fx, fy = reference_flow(200, 300, seed=5)
    x0 = np.clip(np.floor(fx).astype(int), 0, 298)
    y0 = np.clip(np.floor(fy).astype(int), 0, 198)
    neighbours = np.stack([photo[y0 + dy, x0 + dx] for dy in (0, 1) for dx in (0, 1)])
    neighbours = neighbours.astype(np.int32)
    assert np.all(out >= neighbours.min(axis=0)) and np.all(out <= neighbours.max(axis=0))


# --- inpaint -----------------------------------------------------------------------------------

def test_inpaint_hint_is_image_over_255_with_minus_one_where_masked():
    photo = data.astronaut()[:4, :5]
    mask = np.zeros((4, 5), np.uint8)
    mask[0, 0], mask[1, 1], mask[2, 2] = 127, 128, 255  # 127/255 < 0.5 <= 128/255
    hint = inpaint_hint(photo, mask)
    assert hint.dtype == np.float32 and hint.shape == (4, 5, 3)
    expected = photo.astype(np.float32) / 255.0
    expected[1, 1] = -1.0
    expected[2, 2] = -1.0
    np.testing.assert_array_equal(hint, expected)


def test_inpaint_hint_for_a_union_repaint_blackens_the_masked_pixels():
    """comfyui_controlnet_aux's black_pixel_for_xinsir_cn: masked pixels 0 instead of -1."""
    photo = data.astronaut()[:4, :5]
    mask = np.zeros((4, 5), np.float32)
    mask[1:3, 2:] = 1.0
    hint = inpaint_hint(photo, mask, masked_value=0.0)
    expected = photo.astype(np.float32) / 255.0
    expected[1:3, 2:] = 0.0
    np.testing.assert_array_equal(hint, expected)


def test_inpaint_mask_layouts_and_types():
    photo = data.astronaut()[:2, :2]
    as_float = np.array([[0.5, 0.51], [0.0, 1.0]], np.float32)  # strictly above 0.5 is masked
    as_bool = np.array([[False, True], [False, True]])
    for mask in (as_float, as_bool, as_bool[:, :, None]):
        masked = inpaint_hint(photo, mask)[:, :, 0] == -1.0
        np.testing.assert_array_equal(masked, [[False, True], [False, True]])


def test_inpaint_mask_size_must_match():
    message = "mask is 3x3 but the image is 4x4; resize the mask to the image"
    with pytest.raises(ValueError, match=exact(message)):
        inpaint_hint(np.zeros((4, 4, 3), np.uint8), np.zeros((3, 3), np.uint8))


# --- normal from depth -------------------------------------------------------------------------

def encode(normal: np.ndarray) -> np.ndarray:
    """The MiDaS encoding written out: trunc(n * 127.5 + 127.5)."""
    return np.floor(normal * 127.5 + 127.5).astype(np.uint8)


def test_normal_of_a_plane():
    # depth = 10 + 0.5 x + 0.25 y (0..255 units). Sobel 3x3 of a ramp is 8 x its slope, so
    # every interior normal is (4, 2, 2 pi) / |(4, 2, 2 pi)|.
    yy, xx = np.mgrid[:64, :80].astype(np.float64)
    depth = ((10 + 0.5 * xx + 0.25 * yy) / 255.0).astype(np.float32)
    n = np.array([8 * 0.5, 8 * 0.25, 2 * np.pi])
    n /= np.linalg.norm(n)
    expected = encode(n)
    rgb = normal_from_depth(depth, background_threshold=0.0, bgr=False)
    assert np.all(rgb[1:-1, 1:-1] == expected)
    np.testing.assert_array_equal(normal_from_depth(depth, background_threshold=0.0),
                                  rgb[:, :, ::-1])  # bgr=True is the reversed order


def test_normal_of_a_sphere():
    # Hemisphere d = sqrt(R^2 - r^2): the gradient is -(x - cx, y - cy) / d, so the normal is
    # (-8 (x - cx) / d, -8 (y - cy) / d, 2 pi) normalised (Sobel = 8 x gradient).
    size, radius = 161, 60.0
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    dx, dy = xx - 80, yy - 80
    r2 = dx ** 2 + dy ** 2
    depth = np.sqrt(np.clip(radius ** 2 - r2, 0, None))
    out = normal_from_depth((depth / 255.0).astype(np.float32), background_threshold=0.0, bgr=False)
    decoded = (out.astype(np.float64) - 127.5) / 127.5
    inside = r2 <= (0.6 * radius) ** 2
    n = np.stack([-8 * dx / np.maximum(depth, 1e-9), -8 * dy / np.maximum(depth, 1e-9),
                  np.full_like(depth, 2 * np.pi)], axis=2)
    n /= np.linalg.norm(n, axis=2, keepdims=True)
    # 1/127.5 quantisation plus Sobel's discretisation error on the curved surface
    assert np.abs(decoded[inside] - n[inside]).max() < 0.03
    assert np.abs(decoded[inside] - n[inside]).mean() < 0.01


def test_normal_background_faces_the_camera():
    depth = np.zeros((32, 32), np.uint8)
    depth[:, 16:] = 200  # right half near; left half at 0 relative depth: background
    out = normal_from_depth(depth, bgr=False)
    flat = encode(np.array([0.0, 0.0, 1.0]))  # (127, 127, 255)
    assert np.all(out[:, :14] == flat)
    assert np.all(out[:, 17:] == flat)   # the flat near half has zero gradient
    assert np.all(out[:, 16, 0] > 200)   # the step is steep where it is not background
    assert np.all(normal_from_depth(np.full((8, 8), 77, np.uint8), bgr=False) == flat)


def test_normal_refuses_colour_depth():
    message = "depth has 3 different channels; pass a single-channel (gray) depth map"
    with pytest.raises(ValueError, match=exact(message)):
        normal_from_depth(data.astronaut())


# --- palettes ----------------------------------------------------------------------------------

def test_palette_sizes():
    assert len(ADE20K_PALETTE) == 150
    assert len(COCO_STUFF_PALETTE) == 182 - len(COCO_STUFF_UNUSED_IDS) == 171
    assert len(COCO_PANOPTIC_PALETTE) == 80 + 53  # COCO panoptic: 80 things, 53 stuff classes
    for table in PALETTES.values():
        assert table.dtype == np.uint8 and table.shape[1] == 3


def test_ade20k_well_known_colours():
    # mmseg ADE20K: wall (class 0) gray, sky (2) light cyan, person (12) crimson, tree (4) green
    assert ADE20K_PALETTE[0] == (120, 120, 120)
    assert ADE20K_PALETTE[2] == (6, 230, 230)
    assert ADE20K_PALETTE[4] == (4, 200, 3)
    assert ADE20K_PALETTE[12] == (150, 5, 61)


def test_coco_panoptic_well_known_colours():
    # detectron2 COCO_CATEGORIES: person (0) crimson, car (2) dark blue, rug-merged (132) last
    assert COCO_PANOPTIC_PALETTE[0] == (220, 20, 60)
    assert COCO_PANOPTIC_PALETTE[2] == (0, 0, 142)
    assert COCO_PANOPTIC_PALETTE[132] == (250, 141, 255)


@pytest.mark.parametrize("name, table", [("ade20k", ADE20K_PALETTE),
                                         ("coco_stuff", COCO_STUFF_PALETTE),
                                         ("coco_panoptic", COCO_PANOPTIC_PALETTE)])
def test_colorize_is_a_per_pixel_table_lookup(name, table):
    rng = np.random.default_rng(0)
    labels = rng.integers(-3, len(table) + 3, size=(37, 23)).astype(np.int32)
    labels[0, 0] = 255  # mmseg's ignore index
    out = colorize_labels(labels, name)
    for (y, x), label in np.ndenumerate(labels):
        expected = table[label] if 0 <= label < len(table) else (0, 0, 0)
        assert tuple(out[y, x]) == tuple(expected)


def test_coco_stuff_raw_ids_are_renumbered_like_mmseg():
    # raw 0 -> train 0; raw 12 -> 11 (11 unused); raw 26 -> 24 (11, 25 unused);
    # raw 181 -> 170 (all 11 unused ids lie below); unused raw ids are black.
    raw = np.array([[0, 12, 26, 181, 11, 90]], np.uint8)
    out = colorize_labels(raw, "coco_stuff_raw")
    for column, train_id in enumerate([0, 11, 24, 170]):
        assert tuple(out[0, column]) == COCO_STUFF_PALETTE[train_id]
    assert out[0, 4:].max() == 0


def test_colorize_refuses_non_integer_labels():
    message = ("labels must be integers (class indices), got dtype float32; "
               "cast with labels.astype(np.int64) if the values are whole numbers")
    with pytest.raises(ValueError, match=exact(message)):
        colorize_labels(np.zeros((2, 2), np.float32))
