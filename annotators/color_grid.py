"""Colour grid (A1111 `color`, the T2I-Adapter colour condition): the image's average colours
on a coarse grid of 64-pixel cells.

A1111 annotator/color: shrink to (w // 64, h // 64) with INTER_CUBIC, enlarge back with
INTER_NEAREST so every cell is one flat colour. A1111 resizes the short side to the resolution
without rounding; we use the shared v1.1 resize, which rounds to a multiple of 64 so the cells
tile the map exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, check_min_side, run_at_resolution

CELL_PX = 64  # A1111 annotator/color: w // 64, h // 64


def color_grid(
    image: np.ndarray,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Colour-grid map (uint8 HxWx3). With `resolution=None` the image needs sides >= 64."""

    def detect(rgb: np.ndarray) -> np.ndarray:
        check_min_side(rgb, CELL_PX, "color_grid")
        height, width = rgb.shape[:2]
        cells = cv2.resize(rgb, (width // CELL_PX, height // CELL_PX),
                           interpolation=cv2.INTER_CUBIC)
        return cv2.resize(cells, (width, height), interpolation=cv2.INTER_NEAREST)

    # Nearest keeps every cell one flat colour at the image's size.
    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
