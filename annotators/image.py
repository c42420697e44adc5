"""Input normalisation and the detect-resolution resize that every annotator shares.

The pipeline is ControlNet v1.1's (annotator/util.py, gradio_*.py; controlnet-aux is the same):
  1. `to_rgb_uint8`: any supported array -> HxWx3 uint8 RGB (gray copied to 3 channels, alpha
     composited on white, 16-bit and float converted by the rules below).
  2. `resize_for_detection`: short side -> `resolution`, both sides rounded to a multiple of 64.
  3. the annotator's own work.
  4. back to the caller's original size.
`run_at_resolution` does 1-4 for an annotator, which only supplies step 3.

Conversion rules (one place, so every annotator behaves the same):
  uint8   used as is.
  uint16  v8 = round(v16 / 257): 65535/255 = 257, the inverse of the usual 8->16 bit widening.
  bool    False -> 0, True -> 255.
  float   must lie in 0..1 (ComfyUI's IMAGE convention); v8 = round(v * 255). Values a hair
          outside (rounding noise from resampling) are clipped; anything further is refused,
          because a float image in 0..255 would otherwise turn silently white.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

# ComfyUI's MAX_RESOLUTION (nodes.py). A side longer than this is a mistake, not a photo.
MAX_IMAGE_SIDE = 16384
# v1.1 annotator/util.py resize_image rounds both sides to a multiple of 64 (the latent is /8 and
# the U-Net halves it three more times).
DETECT_MULTIPLE = 64
# v1.1 gradio default `detect_resolution`; controlnet-aux's default `resolution`.
DEFAULT_DETECT_RESOLUTION = 512
# 65535 / 255: the 16-bit value of 8-bit v is v * 257 (0x00ff -> 0xffff).
UINT16_PER_UINT8 = 257
# How far outside 0..1 a float image may stray before it is refused rather than clipped.
FLOAT_RANGE_TOLERANCE = 1e-3
# Channel counts we understand: gray, gray+alpha, RGB, RGBA.
SUPPORTED_CHANNELS = (1, 2, 3, 4)

ImageArray = np.ndarray


def check_array(image: object, what: str = "image") -> np.ndarray:
    """Refuse what no annotator can use: not an array, wrong dims, empty, absurdly large."""
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{what} must be a numpy array (HxWxC), got {type(image).__name__}; "
            "convert it with np.asarray(...)")
    if image.ndim not in (2, 3):
        raise ValueError(
            f"{what} must be HxW or HxWxC, got {image.ndim} dimensions (shape {image.shape}); "
            "pass one image at a time, e.g. batch[0]")
    if image.size == 0:
        raise ValueError(
            f"{what} is empty (shape {image.shape}); pass an image with at least one pixel")
    if image.ndim == 3 and image.shape[2] not in SUPPORTED_CHANNELS:
        raise ValueError(
            f"{what} must have 1, 2, 3 or 4 channels, got {image.shape[2]} (shape {image.shape}); "
            "pass gray, gray+alpha, RGB or RGBA")
    height, width = image.shape[:2]
    if max(height, width) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"{what} is {height}x{width}, over the {MAX_IMAGE_SIDE}-pixel side limit; "
            "downscale it first")
    return image


def to_float_255(image: np.ndarray, what: str = "image") -> np.ndarray:
    """The conversion rules of this module, without the final rounding: float32 in 0..255."""
    if image.dtype == np.uint8:
        return image.astype(np.float32)
    if image.dtype == np.uint16:
        return image.astype(np.float32) / UINT16_PER_UINT8
    if image.dtype == np.bool_:
        return image.astype(np.float32) * 255.0
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ValueError(
                f"float {what} contains NaN or infinity; replace them first (np.nan_to_num)")
        low, high = float(image.min()), float(image.max())
        if low < -FLOAT_RANGE_TOLERANCE or high > 1.0 + FLOAT_RANGE_TOLERANCE:
            raise ValueError(
                f"float {what} values must lie in 0..1, found {low:g}..{high:g}; "
                "divide 0..255 data by 255 first")
        return np.clip(image.astype(np.float32), 0.0, 1.0) * 255.0
    raise ValueError(
        f"{what} dtype {image.dtype} is not supported; use uint8 (0..255), uint16 (0..65535), "
        "bool, or float (0..1)")


def to_uint8(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Any supported dtype -> uint8 by the module's rules (rounded: 8 -> 16 -> 8 bit is exact)."""
    if image.dtype == np.uint8:
        return image
    return np.round(to_float_255(image, what)).astype(np.uint8)


def hwc3(image: np.ndarray) -> np.ndarray:
    """uint8 gray / gray+alpha / RGB / RGBA -> HxWx3; alpha is composited on white.

    v1.1 annotator/util.py HWC3: colour * alpha + 255 * (1 - alpha). We round where v1.1
    truncates (float noise would otherwise turn 224.0 into 223).
    """
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.concatenate([image, image, image], axis=2)
    colour = image[:, :, :-1].astype(np.float32)
    alpha = image[:, :, -1:].astype(np.float32) / 255.0
    if channels == 2:
        colour = np.concatenate([colour, colour, colour], axis=2)
    on_white = colour * alpha + 255.0 * (1.0 - alpha)
    return np.round(on_white).clip(0, 255).astype(np.uint8)


def to_rgb_uint8(image: object, what: str = "image") -> np.ndarray:
    """Validate and normalise any supported image to HxWx3 uint8 RGB (contiguous)."""
    array = check_array(image, what)
    return np.ascontiguousarray(hwc3(to_uint8(array, what)))


def check_min_side(image: np.ndarray, min_side: int, who: str) -> None:
    """Refuse an image too small for `who` to work on, naming the fix."""
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        raise ValueError(
            f"{who} needs an image of at least {min_side}x{min_side} pixels, got {height}x{width}; "
            "upscale it or pass a detect resolution")


def detection_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(height, width) at which v1.1 runs a detector: short side -> resolution, both sides
    rounded (half to even, as np.round) to a multiple of 64."""
    if resolution < DETECT_MULTIPLE:
        raise ValueError(
            f"resolution must be at least {DETECT_MULTIPLE} (sides are rounded to a multiple of "
            f"{DETECT_MULTIPLE}), got {resolution}")
    scale = float(resolution) / min(height, width)
    new_height = int(np.round(height * scale / DETECT_MULTIPLE)) * DETECT_MULTIPLE
    new_width = int(np.round(width * scale / DETECT_MULTIPLE)) * DETECT_MULTIPLE
    if max(new_height, new_width) > MAX_IMAGE_SIDE:
        raise ValueError(
            f"resolution {resolution} turns the {height}x{width} image into "
            f"{new_height}x{new_width}, over the {MAX_IMAGE_SIDE}-pixel side limit; "
            "lower the resolution or crop the image")
    return new_height, new_width


def resize_for_detection(image: np.ndarray, resolution: int) -> np.ndarray:
    """v1.1 `resize_image`: LANCZOS4 when enlarging (sharp), AREA when shrinking (no aliasing)."""
    height, width = image.shape[:2]
    new_height, new_width = detection_size(height, width, resolution)
    scale = float(resolution) / min(height, width)
    interpolation = cv2.INTER_LANCZOS4 if scale > 1 else cv2.INTER_AREA
    return cv2.resize(image, (new_width, new_height), interpolation=interpolation)


def run_at_resolution(
    image: object,
    resolution: int | None,
    detector: Callable[[np.ndarray], np.ndarray],
    restore_interpolation: int = cv2.INTER_LINEAR,
) -> np.ndarray:
    """Normalise `image`, run `detector` at the detect resolution, return a uint8 HxWx3 map at
    the image's own size.

    `resolution=None` runs the detector on the image as it is. `restore_interpolation` brings
    the map back: v1.1 uses INTER_LINEAR for soft maps and INTER_NEAREST where in-between
    values mean nothing (binary lines, segmentation, flat colour cells).
    """
    rgb = to_rgb_uint8(image)
    if resolution is None:
        return hwc3(detector(rgb))
    height, width = rgb.shape[:2]
    detected = hwc3(detector(resize_for_detection(rgb, resolution)))
    if detected.shape[:2] == (height, width):
        return detected
    return cv2.resize(detected, (width, height), interpolation=restore_interpolation)
