"""Standard line art (A1111's "lineart_standard (from white bg & black line)",
comfyui_controlnet_aux's "Standard Lineart"): weight-free line art of a drawing or a photo.

A pixel is a line where it is darker than its Gaussian-blurred surroundings in every colour
channel: intensity = min over R, G, B of (blur - pixel), clipped to 0..255. The intensities are
then scaled so that the median of the clear ones (above `intensity_threshold`) lands at 127, a
floor of 16 keeping faint pages from being amplified into noise; x 127, clipped, truncated to
uint8: white lines on black, for lineart ControlNets.

Computed in float32 step by step as the peers do (intensity / scale, then x 127), so the maps
equal theirs to the bit. The map comes back to the image's size bilinearly, as every soft map of
this pack (comfyui_controlnet_aux returns it at the detect resolution; controlnet-aux 0.0.10
resizes it back bicubically).
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

# comfyui_controlnet_aux lineart_standard (and A1111 processor.py lineart_standard): blur sigma
# 6.0, threshold 8. Its node offers sigma up to 100 and the threshold up to 16.
DEFAULT_GAUSSIAN_SIGMA = 6.0
DEFAULT_INTENSITY_THRESHOLD = 8
# max(16, median): the smallest divisor, so a page with only faint lines is not blown up.
MIN_INTENSITY_SCALE = 16
# The median clear intensity is drawn at this level (x 127 after the division).
MEDIAN_LEVEL = 127


def lineart_standard_intensity(rgb: np.ndarray, gaussian_sigma: float, intensity_threshold: float) -> np.ndarray:
    """HxW uint8 line map of a uint8 RGB image at its own size (the module docstring's rule)."""
    x = rgb.astype(np.float32)
    # ksize (0, 0): OpenCV derives the kernel from sigma (about 8 sigma wide for float32 input).
    blurred = cv2.GaussianBlur(x, (0, 0), gaussian_sigma)
    intensity = np.min(blurred - x, axis=2).clip(0, 255)
    clear = intensity[intensity > intensity_threshold]
    # No clear line at all: the peers' median of nothing is NaN, which max() passes over to 16.
    median = np.median(clear) if clear.size else MIN_INTENSITY_SCALE
    intensity /= max(MIN_INTENSITY_SCALE, median)
    intensity *= MEDIAN_LEVEL
    return intensity.clip(0, 255).astype(np.uint8)


def lineart_standard(
    image: np.ndarray,
    gaussian_sigma: float = DEFAULT_GAUSSIAN_SIGMA,
    intensity_threshold: float = DEFAULT_INTENSITY_THRESHOLD,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Standard line art (uint8 HxWx3, white lines on black) at the image's size.

    `gaussian_sigma` is the blur's width in detect-resolution pixels: wider finds thicker lines.
    `intensity_threshold`: only darkenings above it set the scale (their median is drawn at 127).
    """
    if not gaussian_sigma > 0:
        raise ValueError(f"gaussian_sigma must be positive (the blur's width in pixels), got {gaussian_sigma}")
    return run_at_resolution(
        image, resolution, lambda rgb: lineart_standard_intensity(rgb, gaussian_sigma, intensity_threshold),
        restore_interpolation=cv2.INTER_LINEAR)
