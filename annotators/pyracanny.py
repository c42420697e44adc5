"""PyraCanny: Canny edges found at nine scales and blended into one soft edge map.

lllyasviel's Fooocus (extras/preprocessors.py `canny_pyramid`), also comfyui_controlnet_aux's
"PyraCanny". Stability's canny Control-LoRAs seem to have been trained on canny maps of many
resolutions (Fooocus's comment), so one scale misses structure the model looks for:
  1. the image is shrunk (INTER_AREA) to 0.2, 0.3, ..., 1.0 of its size;
  2. at each scale each colour channel gets its own Canny edges (0 or 1);
  3. from the coarsest scale up, the running map is enlarged (bilinear) to the next scale and
     blended with that scale's edges, which take a quarter;
  4. the three channels are summed, and the 1st..99th percentile range is stretched to 0..255.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

PYRAMID_SCALES = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # Fooocus's, coarsest first
FINER_SCALE_SHARE = 0.25       # a finer scale's edges' share in the blend (Fooocus: acc * 0.75 + edge * 0.25)
LOW_PERCENTILE = 1             # the blend's range is stretched between these percentiles (Fooocus's)
HIGH_PERCENTILE = 99
DEFAULT_LOW_THRESHOLD = 64     # comfyui_controlnet_aux's PyraCanny node and Fooocus's defaults
DEFAULT_HIGH_THRESHOLD = 128
MAX_LEVEL = 255


def pyramid_edges(rgb: np.ndarray, low_threshold: int, high_threshold: int) -> np.ndarray:
    """Steps 1-3: the blended per-channel edges, float32 HxWx3 in 0..1. Scales at which the
    image would be less than a pixel wide or high are skipped (only images under 5 pixels have
    them; Fooocus fails there)."""
    height, width = rgb.shape[:2]
    blended = None
    for scale in PYRAMID_SCALES:
        small_width, small_height = int(width * scale), int(height * scale)
        if min(small_width, small_height) < 1:
            continue
        small = cv2.resize(rgb, (small_width, small_height), interpolation=cv2.INTER_AREA)
        edges = np.stack([cv2.Canny(np.ascontiguousarray(small[:, :, channel]), low_threshold, high_threshold)
                          for channel in range(3)], axis=2).astype(np.float32) / MAX_LEVEL
        if blended is None:
            blended = edges
        else:
            enlarged = cv2.resize(blended, (small_width, small_height), interpolation=cv2.INTER_LINEAR)
            blended = enlarged * (1.0 - FINER_SCALE_SHARE) + edges * FINER_SCALE_SHARE
    return blended


def stretch_to_levels(values: np.ndarray) -> np.ndarray:
    """Step 4: values at the low percentile or below -> 0, at the high one or above -> 255,
    linear between, truncated to uint8 (Fooocus's `norm255` then `astype(np.uint8)`). Where the
    two percentiles are equal (edges on under 1% of the image, or none), Fooocus divides by
    zero and its map comes out 255 above that value and 0 elsewhere; this gives that map."""
    low = np.percentile(values, LOW_PERCENTILE)
    high = np.percentile(values, HIGH_PERCENTILE)
    if high <= low:
        return np.where(values > high, MAX_LEVEL, 0).astype(np.uint8)
    return np.clip((values - low) / (high - low) * MAX_LEVEL, 0, MAX_LEVEL).astype(np.uint8)


def pyracanny(
    image: np.ndarray,
    low_threshold: int = DEFAULT_LOW_THRESHOLD,
    high_threshold: int = DEFAULT_HIGH_THRESHOLD,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """PyraCanny map (uint8 HxWx3, gray) at the image's size; `resolution=None` detects at the
    image's own size."""
    if low_threshold < 0 or high_threshold < 0:
        raise ValueError(f"pyracanny thresholds must be >= 0, got low={low_threshold}, high={high_threshold}")
    if low_threshold > high_threshold:
        raise ValueError(
            f"pyracanny low_threshold ({low_threshold}) is above high_threshold ({high_threshold}); swap them")

    def detect(rgb: np.ndarray) -> np.ndarray:
        summed = pyramid_edges(rgb, int(low_threshold), int(high_threshold)).sum(axis=2)
        return stretch_to_levels(summed)

    return run_at_resolution(image, resolution, detect)
