"""AnyLine line art (comfyui_controlnet_aux's "AnyLine Lineart", after TheMistoAI's
ComfyUI-Anyline), made for TheMistoAI's MistoLine ControlNet: MTEED soft edges with a line-art
map screened over them.

Per image, at the detect resolution (default 1280, the peer's), as comfyui_controlnet_aux's
node_wrappers/anyline.py does on float maps in 0..1:
  1. edges: the TEED network (annotators/teed.py) with MistoLine's `MTEED.pth`, quantised with 2
     safe steps (TEED's default), as a uint8 map / 255;
  2. line art (`merge_with_lineart`): Standard line art with sigma 2 and threshold 3 (the peer's
     fixed choice for AnyLine, not the Standard Lineart node's defaults), or the realistic, anime
     or manga line-art network's map (sk_model.pth, netG.pth, erika.pth); uint8 / 255;
  3. intensity mask: line-art values outside lineart_lower_bound..lineart_upper_bound become 0;
  4. small pieces dropped: connected pieces of the remaining nonzero line art (4-neighbour for
     object_connectivity 1, 8-neighbour for 2) smaller than object_min_size are removed. The peer
     runs skimage's remove_small_objects on the map repeated in three channels, where each piece
     is three pixels deep: a piece of n pixels counts 3n, so 36 drops pieces under 12 pixels.
     That count is kept, so the same numbers give the same maps. "Smaller than" is
     remove_small_objects' documented min_size; scikit-image 0.26 passes a min_size on as its new
     max_size ("at most", scikit-image issue 8001), so the peer running on 0.26 also drops the
     pieces of exactly min_size (12 pixels at the default 36);
  5. screen blend: 1 - (1 - line) * (1 - edges) where the line art is nonzero, the edges elsewhere.
The result is a float32 map in 0..1 (blends of 8-bit levels are not 8-bit levels); it comes back to
the image's size bilinearly (the peer returns it at the detect resolution).

The peer computes the MTEED map and the line-art map each through its own resize to the detect
resolution; here the image is resized once and both run on it, the same input. Its manga line
rounds the detect resolution up to a multiple of 256 and fails to blend where that differs; here
the manga line map is made at the detect resolution like the others. The peer spells one choice
"lineart_realisitic"; here it is "lineart_realistic".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from .image import run_at_resolution
from .lineart import LINEART_WEIGHTS, lineart, load_lineart
from .lineart_anime import LINEART_ANIME_WEIGHTS, lineart_anime, load_lineart_anime
from .lineart_standard import lineart_standard
from .manga_line import MANGA_LINE_WEIGHTS, load_manga_line, manga_line
from .teed import DEFAULT_SAFE_STEPS, MTEED_WEIGHTS, TEEDNetwork, WEIGHTS_REPOS, load_teed, teed

__all__ = ["MTEED_WEIGHTS", "LINEART_WEIGHTS", "LINEART_ANIME_WEIGHTS", "MANGA_LINE_WEIGHTS", "WEIGHTS_REPOS",
           "AnyLineNetworks", "anyline", "clean_line_art", "load_anyline", "remove_small_components", "screen_blend"]

# node_wrappers/anyline.py AnyLinePreprocessor.INPUT_TYPES: resolution 1280, bounds 0 and 1,
# object_min_size 36, object_connectivity 1, merge_with_lineart "lineart_standard".
DEFAULT_DETECT_RESOLUTION = 1280
DEFAULT_LOWER_BOUND = 0.0
DEFAULT_UPPER_BOUND = 1.0
DEFAULT_MIN_SIZE = 36
DEFAULT_CONNECTIVITY = 1
# get_anyline: LineartStandardDetector(guassian_sigma=2, intensity_threshold=3).
STANDARD_GAUSSIAN_SIGMA = 2.0
STANDARD_INTENSITY_THRESHOLD = 3
# The peer's mask is the gray line art repeated in three channels, so skimage counts each piece
# three times over (step 4 of the module docstring).
MASK_DEPTH = 3
# object_connectivity -> OpenCV's neighbourhood: skimage's connectivity 1 is 4-neighbour in the
# plane (6 in the peer's 3-D mask), 2 is 8-neighbour (18 in 3-D, the plane's diagonals included).
NEIGHBOURHOODS = {1: 4, 2: 8}
UINT8_MAX = 255.0


@dataclass(frozen=True)
class LineArtSource:
    """A learned line-art annotator AnyLine can merge: its entry point, loader and weight file."""

    annotate: Callable[..., np.ndarray]  # annotate(image, network, resolution) -> uint8 HxWx3
    loader: Callable[..., nn.Module]
    weights: str


STANDARD = "lineart_standard"
LEARNED_LINE_ART = {
    "lineart_realistic": LineArtSource(lineart, load_lineart, LINEART_WEIGHTS),
    "lineart_anime": LineArtSource(lineart_anime, load_lineart_anime, LINEART_ANIME_WEIGHTS),
    "manga_line": LineArtSource(manga_line, load_manga_line, MANGA_LINE_WEIGHTS),
}
MERGE_CHOICES = (STANDARD, *LEARNED_LINE_ART)


@dataclass
class AnyLineNetworks:
    """MTEED, the line art to merge and its network (None for the weight-free Standard line art)."""

    mteed: TEEDNetwork
    merge_with_lineart: str = STANDARD
    line_art: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.merge_with_lineart not in MERGE_CHOICES:
            raise ValueError(f"merge_with_lineart must be one of {', '.join(MERGE_CHOICES)}, "
                             f"got '{self.merge_with_lineart}'")
        if (self.line_art is None) != (self.merge_with_lineart == STANDARD):
            raise ValueError(f"merge_with_lineart '{self.merge_with_lineart}' needs "
                             + ("no line-art network" if self.merge_with_lineart == STANDARD else
                                f"the network of {LEARNED_LINE_ART[self.merge_with_lineart].weights}"))


def load_anyline(
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    merge_with_lineart: str = STANDARD,
) -> AnyLineNetworks:
    """MTEED (`MTEED.pth`, TheMistoAI/MistoLine) and, for a learned `merge_with_lineart`, its
    line-art network, from the annotators models folders."""
    if merge_with_lineart not in MERGE_CHOICES:
        raise ValueError(f"merge_with_lineart must be one of {', '.join(MERGE_CHOICES)}, got '{merge_with_lineart}'")
    mteed = load_teed(folders, device, dtype, mteed=True)
    source = LEARNED_LINE_ART.get(merge_with_lineart)
    line_art = source.loader(folders, device=device, dtype=dtype) if source else None
    return AnyLineNetworks(mteed, merge_with_lineart, line_art)


def remove_small_components(mask: np.ndarray, min_size: int, connectivity: int) -> np.ndarray:
    """HxW bool `mask` without its connected pieces of fewer than `min_size` pixels (skimage's
    remove_small_objects(mask, min_size, connectivity) in the plane: connectivity 1 joins the 4
    edge neighbours, 2 the 8 neighbours)."""
    if connectivity not in NEIGHBOURHOODS:
        raise ValueError(f"connectivity must be 1 (4 neighbours) or 2 (8 neighbours), got {connectivity}")
    _, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=NEIGHBOURHOODS[connectivity])
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False  # label 0 is the background
    return keep[labels]


def line_art_map(rgb: np.ndarray, networks: AnyLineNetworks) -> np.ndarray:
    """HxW uint8 line-art map (white on black) of step 2, at the image's own size."""
    if networks.merge_with_lineart == STANDARD:
        line = lineart_standard(rgb, STANDARD_GAUSSIAN_SIGMA, STANDARD_INTENSITY_THRESHOLD, resolution=None)
    else:
        line = LEARNED_LINE_ART[networks.merge_with_lineart].annotate(rgb, networks.line_art, resolution=None)
    return line[:, :, 0]  # gray maps: the three channels are equal


def clean_line_art(line: np.ndarray, lower_bound: float, upper_bound: float, min_size: int,
                   connectivity: int) -> np.ndarray:
    """Steps 3 and 4 on a float32 HxW line-art map in 0..1: values outside lower..upper and
    pieces the peer counts as smaller than `min_size` (n pixels count MASK_DEPTH * n) become 0."""
    line = np.where((line >= lower_bound) & (line <= upper_bound), line, 0)
    # The smallest piece the peer keeps: n pixels with MASK_DEPTH * n >= min_size.
    min_pixels = math.ceil(min_size / MASK_DEPTH)
    return np.where(remove_small_components(line != 0, min_pixels, connectivity), line, 0)


def screen_blend(edges: np.ndarray, line: np.ndarray) -> np.ndarray:
    """Step 5 on float32 maps in 0..1: 1 - (1 - line)(1 - edges) where there is line art, the
    edges as they are elsewhere (not screened with 0, which float rounding could move)."""
    return np.where(line != 0, 1 - (1 - line) * (1 - edges), edges)


def anyline(
    image: np.ndarray,
    networks: AnyLineNetworks,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    lineart_lower_bound: float = DEFAULT_LOWER_BOUND,
    lineart_upper_bound: float = DEFAULT_UPPER_BOUND,
    object_min_size: int = DEFAULT_MIN_SIZE,
    object_connectivity: int = DEFAULT_CONNECTIVITY,
) -> np.ndarray:
    """AnyLine map (float32 HxWx3 in 0..1, white lines on black) at the image's size; see the
    module docstring for the steps and their parameters."""
    if object_connectivity not in NEIGHBOURHOODS:
        raise ValueError(f"object_connectivity must be 1 (4 neighbours) or 2 (8 neighbours), got {object_connectivity}")

    def detect(rgb: np.ndarray) -> np.ndarray:
        edges = teed(rgb, networks.mteed, resolution=None, safe_steps=DEFAULT_SAFE_STEPS)[:, :, 0]
        line = line_art_map(rgb, networks).astype(np.float32) / UINT8_MAX
        line = clean_line_art(line, lineart_lower_bound, lineart_upper_bound, object_min_size, object_connectivity)
        blended = screen_blend(edges.astype(np.float32) / UINT8_MAX, line)
        return np.repeat(blended[:, :, None], 3, axis=2)

    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_LINEAR)
