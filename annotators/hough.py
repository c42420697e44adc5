"""Straight lines by OpenCV's probabilistic Hough transform, drawn white on black.

A weight-free stand-in for the paper's "Hough lines" condition (the paper and v1.1 use the
learned M-LSD detector, which needs weights): Canny edges -> cv2.HoughLinesP -> each returned
segment drawn with cv2.line. The defaults are ours, tuned for a 512-pixel detect resolution:
lines shorter than 1/16 of it are ignored and gaps up to 10 px are bridged.
"""

from __future__ import annotations

import cv2
import numpy as np

from .canny import DEFAULT_HIGH_THRESHOLD, DEFAULT_LOW_THRESHOLD
from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

DEFAULT_RHO_PX = 1.0            # accumulator distance step, pixels
DEFAULT_THETA_DEGREES = 1.0     # accumulator angle step, degrees
DEFAULT_VOTES = 50              # accumulator votes (edge pixels) a line needs
DEFAULT_MIN_LINE_LENGTH_PX = 32  # shorter segments are dropped (512 / 16)
DEFAULT_MAX_LINE_GAP_PX = 10     # collinear edge runs closer than this are joined
DEFAULT_LINE_THICKNESS_PX = 1    # M-LSD maps are one pixel wide too


def hough_segments(
    edges: np.ndarray,
    rho_px: float = DEFAULT_RHO_PX,
    theta_degrees: float = DEFAULT_THETA_DEGREES,
    votes: int = DEFAULT_VOTES,
    min_line_length_px: float = DEFAULT_MIN_LINE_LENGTH_PX,
    max_line_gap_px: float = DEFAULT_MAX_LINE_GAP_PX,
) -> np.ndarray:
    """cv2.HoughLinesP on a single-channel uint8 edge map -> int array (N, 4) of x1, y1, x2, y2."""
    lines = cv2.HoughLinesP(
        edges, rho=rho_px, theta=np.deg2rad(theta_degrees), threshold=votes,
        minLineLength=min_line_length_px, maxLineGap=max_line_gap_px)
    if lines is None:  # OpenCV returns None, not an empty array, when nothing is found
        return np.zeros((0, 4), dtype=np.int32)
    return lines.reshape(-1, 4).astype(np.int32)


def hough_lines(
    image: np.ndarray,
    canny_low_threshold: float = DEFAULT_LOW_THRESHOLD,
    canny_high_threshold: float = DEFAULT_HIGH_THRESHOLD,
    rho_px: float = DEFAULT_RHO_PX,
    theta_degrees: float = DEFAULT_THETA_DEGREES,
    votes: int = DEFAULT_VOTES,
    min_line_length_px: float = DEFAULT_MIN_LINE_LENGTH_PX,
    max_line_gap_px: float = DEFAULT_MAX_LINE_GAP_PX,
    line_thickness_px: int = DEFAULT_LINE_THICKNESS_PX,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Line map (uint8 HxWx3): the segments of `hough_segments` on Canny edges, drawn in white.

    Lengths and gaps are in pixels of the detect resolution. `resolution=None` detects at the
    image's own size.
    """
    if line_thickness_px < 1:
        raise ValueError(f"line_thickness_px must be at least 1, got {line_thickness_px}")

    def detect(rgb: np.ndarray) -> np.ndarray:
        edges = cv2.Canny(rgb, canny_low_threshold, canny_high_threshold)
        segments = hough_segments(edges, rho_px, theta_degrees, votes,
                                  min_line_length_px, max_line_gap_px)
        canvas = np.zeros(rgb.shape[:2], dtype=np.uint8)
        for x1, y1, x2, y2 in segments:
            cv2.line(canvas, (int(x1), int(y1)), (int(x2), int(y2)), 255, line_thickness_px)
        return canvas

    # Nearest keeps the lines binary when the map is brought back to the image's size.
    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
