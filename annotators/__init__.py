"""Annotators: photos (or depth / label maps) -> ControlNet condition maps.

numpy / OpenCV / torch; no ComfyUI import, no network. Every annotator is one module with one
entry point taking an image array (see `image` for the accepted dtypes and layouts) and
returning a uint8 HxWx3 RGB map at the input's size; `inpaint_hint` and `anyline` return float32.
Learned annotators take their network, made by their `load_*` function from the weight file
lllyasviel/Annotators publishes (Depth Anything V2: the files of the depth-anything
repositories; TEED, AnyLine, DSINE and anime face segmentation: 7_model.pth, MTEED.pth, dsine.pt and
UNet.pth from the repositories comfyui_controlnet_aux reads), found in local folders only (see
`weights`). OpenPose lives in the `openpose` subpackage (it also needs scipy, which ComfyUI installs).
"""

from .binary import binary
from .canny import canny, median_thresholds
from .color_grid import color_grid
from .hough import hough_lines, hough_segments
from .image import detection_size, resize_for_detection, to_rgb_uint8
from .inpaint import inpaint_hint
from .lineart_standard import lineart_standard
from .normal_from_depth import normal_from_depth
from .pyracanny import pyracanny
from .recolor import recolor_intensity, recolor_luminance, recolor_map, restore_brightness
from .resolution import (ResizeMode, high_quality_resize, pixel_perfect_resolution,
                         resize_geometry, resize_to_target)
from .depth_anything import (DEPTH_ANYTHING_V2_BASE, DEPTH_ANYTHING_V2_LARGE, DEPTH_ANYTHING_V2_SMALL,
                             DepthAnythingV2Network, depth_anything, load_depth_anything)
from .anime_face_segment import ANIME_FACE_WEIGHTS, AnimeFaceSegmentNetwork, anime_face_segment, load_anime_face_segment
from .anyline import AnyLineNetworks, anyline, load_anyline
from .hed import HED_WEIGHTS, HEDNetwork, hed, load_hed
from .lineart import LINEART_COARSE_WEIGHTS, LINEART_WEIGHTS, LineartNetwork, lineart, load_lineart
from .lineart_anime import LINEART_ANIME_WEIGHTS, AnimeLineartNetwork, lineart_anime, load_lineart_anime
from .leres import LERES_WEIGHTS, LeReSNetwork, leres, load_leres
from .manga_line import MANGA_LINE_WEIGHTS, MangaLineNetwork, load_manga_line, manga_line
from .midas import (MIDAS_WEIGHTS, MiDaSNetwork, load_midas, midas_depth, midas_depth_and_normal,
                    midas_normal)
from .dsine import DSINE_WEIGHTS, DsineNetwork, dsine, load_dsine
from .mlsd import MLSD_WEIGHTS, MLSDNetwork, decode_segments, load_mlsd, mlsd
from .normalbae import NORMALBAE_WEIGHTS, NormalBaeNetwork, load_normalbae, normalbae
from .oneformer import (ONEFORMER_ADE20K_WEIGHTS, ONEFORMER_COCO_WEIGHTS, OneFormerNetwork, load_oneformer,
                        oneformer_segmentation)
from .pidinet import PIDINET_WEIGHTS, PiDiNetNetwork, load_pidinet, pidinet
from .scribble import scribble
from .segmentation import PALETTES, colorize_labels
from .shuffle import content_shuffle, shuffle_flow
from .teed import MTEED_WEIGHTS, TEED_WEIGHTS, TEEDNetwork, load_teed, teed
from .tile import tile, ttplanet_tile_guided_filter, ttplanet_tile_simple
from .uniformer import UNIFORMER_WEIGHTS, UniFormerSegmentationNetwork, load_uniformer, uniformer_segmentation
from .xdog import xdog_scribble
from .zoe import ZOE_WEIGHTS, ZoeDepthNetwork, load_zoe, zoe_depth

__all__ = [
    "AnyLineNetworks", "anyline", "load_anyline", "MTEED_WEIGHTS", "TEED_WEIGHTS", "TEEDNetwork", "load_teed",
    "teed", "lineart_standard",
    "LERES_WEIGHTS", "LeReSNetwork", "leres", "load_leres",
    "DEPTH_ANYTHING_V2_BASE", "DEPTH_ANYTHING_V2_LARGE", "DEPTH_ANYTHING_V2_SMALL", "DepthAnythingV2Network",
    "depth_anything", "load_depth_anything",
    "HED_WEIGHTS", "HEDNetwork", "hed", "load_hed", "LINEART_COARSE_WEIGHTS", "LINEART_WEIGHTS",
    "LineartNetwork", "lineart", "load_lineart", "LINEART_ANIME_WEIGHTS", "AnimeLineartNetwork",
    "lineart_anime", "load_lineart_anime", "MLSD_WEIGHTS", "MLSDNetwork", "decode_segments", "load_mlsd",
    "mlsd", "MANGA_LINE_WEIGHTS", "MangaLineNetwork", "load_manga_line", "manga_line",
    "UNIFORMER_WEIGHTS", "UniFormerSegmentationNetwork", "load_uniformer", "uniformer_segmentation",
    "ONEFORMER_ADE20K_WEIGHTS", "ONEFORMER_COCO_WEIGHTS", "OneFormerNetwork", "load_oneformer", "oneformer_segmentation",
    "MIDAS_WEIGHTS", "MiDaSNetwork", "load_midas", "midas_depth", "midas_depth_and_normal", "midas_normal",
    "NORMALBAE_WEIGHTS", "NormalBaeNetwork", "load_normalbae", "normalbae",
    "DSINE_WEIGHTS", "DsineNetwork", "dsine", "load_dsine",
    "ANIME_FACE_WEIGHTS", "AnimeFaceSegmentNetwork", "anime_face_segment", "load_anime_face_segment",
    "PIDINET_WEIGHTS", "PiDiNetNetwork", "load_pidinet", "pidinet",
    "PALETTES", "ResizeMode", "binary", "canny", "color_grid", "colorize_labels",
    "content_shuffle", "detection_size", "high_quality_resize", "hough_lines", "hough_segments",
    "inpaint_hint", "median_thresholds", "normal_from_depth", "pixel_perfect_resolution",
    "resize_for_detection", "resize_geometry", "resize_to_target", "scribble", "shuffle_flow",
    "tile", "to_rgb_uint8", "xdog_scribble", "recolor_intensity", "recolor_luminance", "recolor_map",
    "pyracanny", "ttplanet_tile_guided_filter", "ttplanet_tile_simple",
    "restore_brightness", "ZOE_WEIGHTS", "ZoeDepthNetwork", "load_zoe", "zoe_depth",
]
