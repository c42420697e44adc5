"""Synthesized scribble by difference of Gaussians (A1111 `scribble_xdog`), weight-free.

A1111 scripts/preprocessor/legacy/processor.py:
    g1 = GaussianBlur(img, sigma 0.5); g2 = GaussianBlur(img, sigma 5.0)   (float32)
    dog = (255 - min over channels of (g2 - g1)).clip(0, 255) as uint8
    out = 255 where 2 * (255 - dog) > thr_a
A pixel becomes a stroke where, in every channel, the wide blur is brighter than the narrow
one by more than about thr_a / 2: the dark side of an edge or a thin dark line.

Deviation: A1111 evaluates `2 * (255 - dog)` in uint8, which wraps past 255, so its strongest
responses (255 - dog >= 128) can drop out. We compute it in int32, as the formula intends.
A1111 also pads to a multiple of 64 instead of rounding; we use the shared v1.1 resize.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

NARROW_SIGMA = 0.5        # A1111 scribble_xdog g1
WIDE_SIGMA = 5.0          # A1111 scribble_xdog g2
DEFAULT_THRESHOLD = 32    # A1111 thr_a default; controlnet_aux Scribble_XDoG threshold=32


def xdog_scribble(
    image: np.ndarray,
    threshold: int = DEFAULT_THRESHOLD,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Binary stroke map (uint8 HxWx3, 255 on strokes) by the XDoG formula above."""

    def detect(rgb: np.ndarray) -> np.ndarray:
        pixels = rgb.astype(np.float32)
        narrow = cv2.GaussianBlur(pixels, (0, 0), NARROW_SIGMA)
        wide = cv2.GaussianBlur(pixels, (0, 0), WIDE_SIGMA)
        dog = (255 - np.min(wide - narrow, axis=2)).clip(0, 255).astype(np.uint8)
        response = 2 * (255 - dog.astype(np.int32))
        return np.where(response > threshold, 255, 0).astype(np.uint8)

    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
