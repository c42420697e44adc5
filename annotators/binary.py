"""Binary condition (A1111 `binary`): white where the image is dark, black elsewhere.

gray = RGB -> gray; out = 255 where gray <= threshold (cv2.THRESH_BINARY_INV). Threshold 0 or
255 means "choose it for me" and uses Otsu's method (A1111 treats both values this way: 0 and
255 would otherwise give an all-black or all-white map).
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

DEFAULT_THRESHOLD = 0          # A1111 thr_a default: Otsu
OTSU_THRESHOLD_VALUES = (0, 255)  # A1111 `binary`: these mean "use Otsu"


def binary(
    image: np.ndarray,
    threshold: int = DEFAULT_THRESHOLD,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Binary map (uint8 HxWx3): 255 where gray <= threshold (Otsu's threshold for 0 or 255)."""
    if not 0 <= threshold <= 255:
        raise ValueError(f"binary threshold must be in 0..255, got {threshold}")

    def detect(rgb: np.ndarray) -> np.ndarray:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if threshold in OTSU_THRESHOLD_VALUES:
            _, result = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
        else:
            _, result = cv2.threshold(gray, threshold, 255, cv2.THRESH_BINARY_INV)
        return result

    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
