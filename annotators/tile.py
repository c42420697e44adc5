"""Tile condition: the image itself, optionally blurred and/or reduced in detail.

v1.1 tile uses the image as is. A1111 `tile_resample` shrinks it by a factor (INTER_AREA,
sizes truncated) and lets the later hint resize enlarge it again, which for photos is
INTER_CUBIC (`high_quality_resize`). Here both steps happen, so the map keeps the image's
size: blur (sigma px) -> shrink by `downsample_factor` -> enlarge back.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import to_rgb_uint8

NO_DOWNSAMPLING = 1.0  # factor 1 keeps the image's detail
NO_BLUR = 0.0


def tile(
    image: np.ndarray,
    downsample_factor: float = NO_DOWNSAMPLING,
    blur_sigma: float = NO_BLUR,
) -> np.ndarray:
    """Tile map (uint8 HxWx3) at the image's size."""
    if downsample_factor < 1.0:
        raise ValueError(f"tile downsample_factor must be >= 1, got {downsample_factor}")
    if blur_sigma < 0.0:
        raise ValueError(f"tile blur_sigma must be >= 0, got {blur_sigma}")
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    if blur_sigma > 0.0:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur_sigma)
    if downsample_factor > 1.0:
        small_height = int(height / downsample_factor)  # truncated, as A1111
        small_width = int(width / downsample_factor)
        if min(small_height, small_width) < 1:
            raise ValueError(
                f"tile downsample_factor {downsample_factor} shrinks the {height}x{width} image "
                "below one pixel; use a smaller factor")
        small = cv2.resize(rgb, (small_width, small_height), interpolation=cv2.INTER_AREA)
        rgb = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return rgb
