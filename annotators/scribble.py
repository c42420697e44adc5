"""Scribble condition from a user's drawing: white strokes on black, thickened.

v1.1 gradio_scribble2image takes dark strokes on a white page (stroke where min over channels
< 127); gradio_scribble2image_interactive takes white strokes on a black canvas. Here both go
through one rule: turn the drawing light-on-dark (inverting a dark-on-light page), call a pixel a
stroke when its brightest channel exceeds `threshold`, then grow strokes by dilation. For a
dark-on-light page with the default threshold this is exactly v1.1's `min(img) < 127`.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

# On the inverted page, v1.1's min(img) < 127 reads max(255 - img) > 128.
DEFAULT_STROKE_THRESHOLD = 128
# Grow each stroke by this many pixels on every side (a disc of radius 2); scribble models were
# trained on thick, hand-drawn strokes.
DEFAULT_STROKE_GROWTH_PX = 2
# A page whose median gray level is at least this is "light": the background is the majority.
LIGHT_PAGE_MEDIAN = 128


def is_dark_on_light(image_rgb: np.ndarray) -> bool:
    """True when the drawing is dark strokes on a light page (the median pixel is light)."""
    return float(np.median(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY))) >= LIGHT_PAGE_MEDIAN


def scribble(
    image: np.ndarray,
    threshold: int = DEFAULT_STROKE_THRESHOLD,
    stroke_growth_px: int = DEFAULT_STROKE_GROWTH_PX,
    invert: bool | None = None,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Binary stroke map (uint8 HxWx3, 255 on strokes).

    `invert`: None decides with `is_dark_on_light`; True treats the drawing as dark-on-light;
    False as light-on-dark. `stroke_growth_px=0` keeps strokes as drawn.
    """
    if stroke_growth_px < 0:
        raise ValueError(f"stroke_growth_px must be >= 0, got {stroke_growth_px}")

    def detect(rgb: np.ndarray) -> np.ndarray:
        dark_on_light = is_dark_on_light(rgb) if invert is None else invert
        light_on_dark = 255 - rgb if dark_on_light else rgb
        strokes = np.where(light_on_dark.max(axis=2) > threshold, 255, 0).astype(np.uint8)
        if stroke_growth_px > 0:
            size = 2 * stroke_growth_px + 1
            disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
            strokes = cv2.dilate(strokes, disc)
        return strokes

    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
