"""Fitting a control map to the generation size: A1111's pixel-perfect resolution and its three
resize modes (sd-webui-controlnet internal_controlnet/external_code.py and scripts/controlnet.py).

All sizes here are (height, width). Rounding is np.round (half to even), as A1111's.
"""

from __future__ import annotations

from enum import Enum

import cv2
import numpy as np


class ResizeMode(str, Enum):
    """A1111's names; the values are what its UI and API show."""

    JUST_RESIZE = "Just Resize"          # stretch to the target, aspect ratio ignored
    CROP_AND_RESIZE = "Crop and Resize"  # INNER_FIT: cover the target, crop the overflow (centred)
    RESIZE_AND_FILL = "Resize and Fill"  # OUTER_FIT: fit inside the target, pad (centred)


# high_quality_resize: a map with more than 2 and fewer than 200 colours is a label-like map
# (segmentation, colour grid) whose colours must not be blended.
MAX_LABEL_MAP_COLOURS = 200
# A 2-colour map counts as binary (lines, scribbles) when it spans nearly black to nearly white.
BINARY_DARK_BELOW = 16
BINARY_LIGHT_ABOVE = 240
# Mid-gray: above it a pixel of a binary map counts as "on".
BINARY_MIDPOINT = 127
# Thinning passes before giving up (A1111 lvmin_thin loops at most 32 times).
MAX_THINNING_PASSES = 32

# Standard morphological thinning structuring elements (as in Gonzalez & Woods and HIPR2
# "Thinning"): 1 = must be on, -1 = must be off, 0 = either. Each is used in its four 90-degree
# rotations; the pruning pair removes the spur ends thinning can leave when enlarging.
_THINNING_ELEMENTS = (((-1, -1, -1), (0, 1, 0), (1, 1, 1)),
                      ((0, -1, -1), (1, 1, -1), (0, 1, 0)))
_PRUNING_ELEMENTS = (((-1, -1, -1), (-1, 1, -1), (0, 0, -1)),
                     ((-1, -1, -1), (-1, 1, -1), (-1, 0, 0)))
# The four line directions (horizontal, vertical, two diagonals) for non-maximum suppression.
_LINE_DIRECTIONS = (((0, 0, 0), (1, 1, 1), (0, 0, 0)),
                    ((0, 1, 0), (0, 1, 0), (0, 1, 0)),
                    ((1, 0, 0), (0, 1, 0), (0, 0, 1)),
                    ((0, 0, 1), (0, 1, 0), (1, 0, 0)))


def _parse_mode(resize_mode: ResizeMode | str) -> ResizeMode:
    try:
        return ResizeMode(resize_mode)
    except ValueError:
        names = ", ".join(repr(m.value) for m in ResizeMode)
        raise ValueError(f"unknown resize mode {resize_mode!r}; choose one of {names}") from None


def _round(value: float) -> int:
    return int(np.round(value))


def pixel_perfect_resolution(
    image_hw: tuple[int, int],
    target_hw: tuple[int, int],
    resize_mode: ResizeMode | str = ResizeMode.CROP_AND_RESIZE,
) -> int:
    """The detect resolution at which the map needs no resampling to land on the target.

    k0 = H/H0, k1 = W/W0; resolution = round(k * min(H0, W0)) with k = min(k0, k1) for
    "Resize and Fill" (the image fits inside) and max(k0, k1) otherwise (it covers the target).
    """
    raw_height, raw_width = image_hw
    target_height, target_width = target_hw
    if min(raw_height, raw_width, target_height, target_width) < 1:
        raise ValueError(
            f"pixel_perfect_resolution needs positive sizes, got image {image_hw}, "
            f"target {target_hw}")
    k0 = float(target_height) / float(raw_height)
    k1 = float(target_width) / float(raw_width)
    k = min(k0, k1) if _parse_mode(resize_mode) is ResizeMode.RESIZE_AND_FILL else max(k0, k1)
    return _round(k * float(min(raw_height, raw_width)))


def resize_geometry(
    source_hw: tuple[int, int],
    target_hw: tuple[int, int],
    resize_mode: ResizeMode | str,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((scaled_h, scaled_w), (offset_y, offset_x)) of a resize mode.

    Crop and Resize: the map is scaled to `scaled` and the target is cut out starting at
    `offset`. Resize and Fill: the scaled map is pasted onto the target canvas at `offset`.
    Just Resize: scaled = target, offset = (0, 0).
    """
    mode = _parse_mode(resize_mode)
    source_height, source_width = source_hw
    target_height, target_width = target_hw
    if mode is ResizeMode.JUST_RESIZE:
        return (target_height, target_width), (0, 0)
    k0 = float(target_height) / float(source_height)
    k1 = float(target_width) / float(source_width)
    k = max(k0, k1) if mode is ResizeMode.CROP_AND_RESIZE else min(k0, k1)
    # At least one pixel: A1111 would crash on a zero side for extreme aspect ratios.
    scaled_height = max(1, _round(source_height * k))
    scaled_width = max(1, _round(source_width * k))
    # Centred: crop offsets into the scaled map, fill offsets into the target canvas.
    spare_height = abs(scaled_height - target_height)
    spare_width = abs(scaled_width - target_width)
    return (scaled_height, scaled_width), (spare_height // 2, spare_width // 2)


def _non_maximum_suppression(gray: np.ndarray) -> np.ndarray:
    """Keep a pixel where it is the maximum of its 3-pixel line in at least one direction."""
    keep = np.zeros(gray.shape, dtype=bool)
    for direction in _LINE_DIRECTIONS:
        keep |= cv2.dilate(gray, np.asarray(direction, dtype=np.uint8)) == gray
    return np.where(keep, gray, 0).astype(np.uint8)


def _rotations(elements) -> list[np.ndarray]:
    return [np.rot90(np.asarray(element, dtype=np.int32), k)
            for k in range(4) for element in elements]


def _remove_matches(binary: np.ndarray, elements: list[np.ndarray]) -> bool:
    """Switch off, element by element, every pixel matching a hit-or-miss element."""
    removed_any = False
    for element in elements:
        hits = cv2.morphologyEx(binary, cv2.MORPH_HITMISS, element) > BINARY_MIDPOINT
        if hits.any():
            binary[hits] = 0
            removed_any = True
    return removed_any


def _thin(binary: np.ndarray, prune: bool) -> np.ndarray:
    """Morphological thinning to one-pixel lines, optionally pruning spur ends."""
    binary = binary.copy()
    for _ in range(MAX_THINNING_PASSES):
        if not _remove_matches(binary, _rotations(_THINNING_ELEMENTS)):
            break
    if prune:
        _remove_matches(binary, _rotations(_PRUNING_ELEMENTS))
    return binary


def high_quality_resize(control_map: np.ndarray, target_hw: tuple[int, int]) -> np.ndarray:
    """A1111's control-map resize (uint8 HxWx3 -> target size), by kind of map:

    - label-like maps (2 < colours < 200): INTER_NEAREST, so no in-between colours appear;
    - otherwise INTER_AREA when the area shrinks, INTER_CUBIC when it grows or stays;
    - binary maps (2 colours, one < 16, one > 240) are re-binarised with Otsu afterwards, and
      one-pixel line maps (mostly removed by a 3x3 opening) also get non-maximum suppression and
      thinning, so a one-pixel line stays one pixel wide.
    """
    target_height, target_width = target_hw
    if control_map.shape[:2] == (target_height, target_width):
        return control_map
    source_area = control_map.shape[0] * control_map.shape[1]
    target_area = target_height * target_width
    colour_count = len(np.unique(control_map.reshape(-1, control_map.shape[2]), axis=0))

    is_binary = colour_count == 2 and control_map.min() < BINARY_DARK_BELOW \
        and control_map.max() > BINARY_LIGHT_ABOVE
    is_one_pixel_lines = False
    if is_binary:
        square = np.ones((3, 3), dtype=np.uint8)
        opened = cv2.dilate(cv2.erode(control_map, square), square)
        thin_pixels = np.count_nonzero(opened < control_map)
        line_pixels = np.count_nonzero(control_map > BINARY_MIDPOINT)
        is_one_pixel_lines = thin_pixels * 2 > line_pixels

    if 2 < colour_count < MAX_LABEL_MAP_COLOURS:
        interpolation = cv2.INTER_NEAREST
    elif target_area < source_area:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    resized = cv2.resize(control_map, (target_width, target_height), interpolation=interpolation)
    if not is_binary:
        return resized

    gray = np.mean(resized.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
    if is_one_pixel_lines:
        gray = _non_maximum_suppression(gray)
    _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    if is_one_pixel_lines:
        gray = _thin(gray, prune=target_area > source_area)
    return np.stack([gray, gray, gray], axis=2)


def border_median_colour(control_map: np.ndarray) -> np.ndarray:
    """Per-channel median of the four border rows/columns (corners counted twice), as A1111."""
    borders = np.concatenate([control_map[0, :, :], control_map[-1, :, :],
                              control_map[:, 0, :], control_map[:, -1, :]], axis=0)
    return np.median(borders, axis=0).astype(control_map.dtype)


def resize_to_target(
    control_map: np.ndarray,
    target_hw: tuple[int, int],
    resize_mode: ResizeMode | str = ResizeMode.CROP_AND_RESIZE,
) -> np.ndarray:
    """Fit a uint8 HxWx3 control map to `target_hw` by one of the three resize modes.

    Resize and Fill pads with `border_median_colour`, so the padding continues the map's edge.
    """
    if not (isinstance(control_map, np.ndarray) and control_map.ndim == 3
            and control_map.shape[2] == 3 and control_map.dtype == np.uint8):
        raise ValueError(
            "resize_to_target needs a uint8 HxWx3 control map; "
            "normalise it with annotators.image.to_rgb_uint8 first")
    if min(target_hw) < 1:
        raise ValueError(f"target size must be positive, got {target_hw}")
    mode = _parse_mode(resize_mode)
    (scaled_height, scaled_width), (offset_y, offset_x) = resize_geometry(
        control_map.shape[:2], target_hw, mode)
    scaled = high_quality_resize(control_map, (scaled_height, scaled_width))
    target_height, target_width = target_hw
    if mode is ResizeMode.JUST_RESIZE:
        return scaled
    if mode is ResizeMode.CROP_AND_RESIZE:
        return np.ascontiguousarray(
            scaled[offset_y:offset_y + target_height, offset_x:offset_x + target_width])
    canvas = np.empty((target_height, target_width, 3), dtype=np.uint8)
    canvas[:, :] = border_median_colour(control_map)
    canvas[offset_y:offset_y + scaled_height, offset_x:offset_x + scaled_width] = scaled
    return canvas
