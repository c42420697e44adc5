"""Tile conditions: the image itself, optionally blurred and/or reduced in detail.

v1.1 tile uses the image as is. A1111 `tile_resample` shrinks it by a factor (INTER_AREA,
sizes truncated) and lets the later hint resize enlarge it again, which for photos is
INTER_CUBIC (`high_quality_resize`). Here both steps happen, so the map keeps the image's
size: blur (sigma px) -> shrink by `downsample_factor` -> enlarge back.

TTPlanet's preprocessors for his SDXL tile ControlNets (TTP_tile_preprocessor_v5.py in
TTPlanet/TTPLanet_SDXL_Controlnet_Tile_Realistic; comfyui_controlnet_aux's "TTPlanet Tile
GuidedFilter" and "TTPlanet Tile Simple") work the same way with other steps:
  guided filter: Gaussian blur -> fast guided filter of the image by itself -> shrink by
                 `scale_factor` (INTER_AREA) -> enlarge back (INTER_CUBIC);
  simple:        shrink (INTER_AREA) -> enlarge back (INTER_LANCZOS4) -> Gaussian blur.
Their blur takes `blur_strength` b: a b x b kernel (b truncated, made odd) of sigma b / 2.
"""

from __future__ import annotations

import cv2
import numpy as np

from .guided_filter import fast_guided_filter
from .image import to_rgb_uint8

NO_DOWNSAMPLING = 1.0  # factor 1 keeps the image's detail
NO_BLUR = 0.0
MAX_LEVEL = 255
# comfyui_controlnet_aux's TTPlanet node defaults
TTPLANET_DEFAULT_SCALE_FACTOR = 1.0
TTPLANET_DEFAULT_BLUR_STRENGTH = 2.0
TTPLANET_DEFAULT_RADIUS = 7
TTPLANET_DEFAULT_EPS = 0.01
SCALE_FACTOR_OPTION = "TTPlanet tile scale_factor"


def shrunk_size(height: int, width: int, factor: float, option: str) -> tuple[int, int]:
    """(height, width) divided by `factor`, truncated as A1111 and TTPlanet do; `option` names
    the factor in the errors."""
    if factor < 1.0:
        raise ValueError(f"{option} must be >= 1, got {factor}")
    small_height, small_width = int(height / factor), int(width / factor)
    if min(small_height, small_width) < 1:
        raise ValueError(
            f"{option} {factor} shrinks the {height}x{width} image below one pixel; use a smaller factor")
    return small_height, small_width


def shrink_and_enlarge(rgb: np.ndarray, factor: float, enlarge_interpolation: int, option: str) -> np.ndarray:
    """The image shrunk by `factor` (INTER_AREA) and enlarged back to its size; factor 1
    returns it unchanged."""
    height, width = rgb.shape[:2]
    small_height, small_width = shrunk_size(height, width, factor, option)
    if factor == 1.0:
        return rgb
    small = cv2.resize(rgb, (small_width, small_height), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=enlarge_interpolation)


def tile(
    image: np.ndarray,
    downsample_factor: float = NO_DOWNSAMPLING,
    blur_sigma: float = NO_BLUR,
) -> np.ndarray:
    """Tile map (uint8 HxWx3) at the image's size."""
    if blur_sigma < 0.0:
        raise ValueError(f"tile blur_sigma must be >= 0, got {blur_sigma}")
    rgb = to_rgb_uint8(image)
    if blur_sigma > 0.0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur_sigma)
    return shrink_and_enlarge(rgb, downsample_factor, cv2.INTER_CUBIC, "tile downsample_factor")


def ttplanet_blur(rgb: np.ndarray, blur_strength: float) -> np.ndarray:
    """TTPlanet's Gaussian blur: kernel side int(b), made odd, sigma b / 2 (b = 1 leaves the
    image as it is)."""
    if blur_strength <= 0.0:
        raise ValueError(f"TTPlanet tile blur_strength must be > 0, got {blur_strength}")
    side = int(blur_strength)
    if side % 2 == 0:
        side += 1
    return cv2.GaussianBlur(rgb, (side, side), sigmaX=blur_strength / 2)


def ttplanet_tile_simple(
    image: np.ndarray,
    scale_factor: float = TTPLANET_DEFAULT_SCALE_FACTOR,
    blur_strength: float = TTPLANET_DEFAULT_BLUR_STRENGTH,
) -> np.ndarray:
    """TTPlanet Tile Simple map (uint8 HxWx3) at the image's size."""
    rgb = to_rgb_uint8(image)
    enlarged = shrink_and_enlarge(rgb, scale_factor, cv2.INTER_LANCZOS4, SCALE_FACTOR_OPTION)
    return ttplanet_blur(enlarged, blur_strength)


def ttplanet_tile_guided_filter(
    image: np.ndarray,
    scale_factor: float = TTPLANET_DEFAULT_SCALE_FACTOR,
    blur_strength: float = TTPLANET_DEFAULT_BLUR_STRENGTH,
    radius: int = TTPLANET_DEFAULT_RADIUS,
    eps: float = TTPLANET_DEFAULT_EPS,
) -> np.ndarray:
    """TTPlanet Tile GuidedFilter map (uint8 HxWx3) at the image's size. The guided filter runs on
    0..1 values with its coefficients fitted at 1 / scale_factor of the size, its radius in
    full-size pixels. Its result is rounded to 8 bits and clipped to 0..255; the original
    truncates (one level darker than rounding on about half the pixels) and lets the few values
    past 255 or below 0 wrap around (white pixels turned black, black ones white)."""
    if radius < 1:
        raise ValueError(f"TTPlanet tile radius must be >= 1, got {radius}")
    if eps <= 0.0:
        raise ValueError(f"TTPlanet tile eps must be > 0, got {eps}")
    rgb = to_rgb_uint8(image)
    shrunk_size(*rgb.shape[:2], scale_factor, SCALE_FACTOR_OPTION)  # the filter shrinks by it first
    blurred = ttplanet_blur(rgb, blur_strength).astype(np.float32) / MAX_LEVEL
    filtered = fast_guided_filter(blurred, blurred, radius, eps, scale_factor)
    levels = np.clip(np.round(filtered * MAX_LEVEL), 0, MAX_LEVEL).astype(np.uint8)
    return shrink_and_enlarge(levels, scale_factor, cv2.INTER_CUBIC, SCALE_FACTOR_OPTION)
