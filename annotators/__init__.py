"""Weight-free annotators: photos (or depth / label maps) -> ControlNet condition maps.

Pure numpy / OpenCV; no ComfyUI import, no network. Every annotator is one module with one
entry point taking an image array (see `image` for the accepted dtypes and layouts) and
returning a uint8 HxWx3 RGB map at the input's size; `inpaint_hint` alone returns float32.
"""

from .binary import binary
from .canny import canny, median_thresholds
from .color_grid import color_grid
from .hough import hough_lines, hough_segments
from .image import detection_size, resize_for_detection, to_rgb_uint8
from .inpaint import inpaint_hint
from .normal_from_depth import normal_from_depth
from .resolution import (ResizeMode, high_quality_resize, pixel_perfect_resolution,
                         resize_geometry, resize_to_target)
from .scribble import scribble
from .segmentation import PALETTES, colorize_labels
from .shuffle import content_shuffle, shuffle_flow
from .tile import tile
from .xdog import xdog_scribble

__all__ = [
    "PALETTES", "ResizeMode", "binary", "canny", "color_grid", "colorize_labels",
    "content_shuffle", "detection_size", "high_quality_resize", "hough_lines", "hough_segments",
    "inpaint_hint", "median_thresholds", "normal_from_depth", "pixel_perfect_resolution",
    "resize_for_detection", "resize_geometry", "resize_to_target", "scribble", "shuffle_flow",
    "tile", "to_rgb_uint8", "xdog_scribble",
]
