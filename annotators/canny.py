"""Canny edges: white one-pixel edges on black (the ControlNet "canny" condition).

Thresholds are either given (v1.1 / controlnet-aux defaults 100 and 200) or chosen by the
"median rule": low = (1 - sigma) * m, high = (1 + sigma) * m with m the median gray level and
sigma = 0.33 (Rosebrock, "Zero-parameter, automatic Canny edge detection", PyImageSearch 2015).
The median tracks the image's exposure, so dark and bright photos get comparable edge density.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

DEFAULT_LOW_THRESHOLD = 100   # v1.1 gradio_canny2image / controlnet-aux CannyDetector
DEFAULT_HIGH_THRESHOLD = 200  # same source
MEDIAN_RULE_SIGMA = 0.33      # Rosebrock's auto_canny default


def median_thresholds(image_rgb: np.ndarray, sigma: float = MEDIAN_RULE_SIGMA) -> tuple[int, int]:
    """The median rule on a uint8 RGB image: (low, high) = ((1-sigma)*m, (1+sigma)*m), rounded
    (not truncated: 0.67 * 100 is 66.999... in floating point) and kept in 0..255."""
    median = float(np.median(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY)))
    low = max(0, round((1.0 - sigma) * median))
    high = min(255, round((1.0 + sigma) * median))
    return low, high


def canny(
    image: np.ndarray,
    low_threshold: float = DEFAULT_LOW_THRESHOLD,
    high_threshold: float = DEFAULT_HIGH_THRESHOLD,
    auto_thresholds: bool = False,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Canny edge map (uint8 HxWx3, 255 on edges) at the image's size.

    `auto_thresholds=True` ignores the given thresholds and uses `median_thresholds` on the
    image at the detect resolution. `resolution=None` detects at the image's own size.
    """
    if not auto_thresholds:
        if low_threshold < 0 or high_threshold < 0:
            raise ValueError(
                f"canny thresholds must be >= 0, got low={low_threshold}, high={high_threshold}")
        if low_threshold > high_threshold:
            raise ValueError(
                f"canny low_threshold ({low_threshold}) is above high_threshold "
                f"({high_threshold}); swap them")

    def detect(rgb: np.ndarray) -> np.ndarray:
        low, high = median_thresholds(rgb) if auto_thresholds else (low_threshold, high_threshold)
        # cv2.Canny on a 3-channel image uses the strongest channel gradient, as v1.1 does.
        return cv2.Canny(rgb, low, high)

    # Nearest keeps the map binary when it is brought back to the image's size.
    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
