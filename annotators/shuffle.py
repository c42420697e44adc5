"""Content shuffle (v1.1 `annotator/shuffle` ContentShuffleDetector): the image's own pixels,
moved by a smooth random flow field, so colours and textures survive but layout does not.

Flow: for x and y separately, uniform noise on a coarse (h/cell + 2) x (w/cell + 2) grid, cubic
upscaling, crop, min-max scaled to 0..1, times (W - 1) or (H - 1). Then cv2.remap samples the
image at those coordinates (bilinear). The noise comes from np.random.RandomState(seed), drawn
x first then y exactly as v1.1 draws from the global numpy generator, so `seed=s` gives the same
map as v1.1 / controlnet-aux after np.random.seed(s).
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution

DEFAULT_CELL_PX = 256  # v1.1 ContentShuffleDetector f=256: size of one noise cell, in pixels
DEFAULT_SEED = 0


def _noise_disk(height: int, width: int, cell_px: int, rng: np.random.RandomState) -> np.ndarray:
    """v1.1 make_noise_disk with C=1: smooth noise in 0..1, shape (height, width)."""
    coarse = rng.uniform(low=0.0, high=1.0, size=(height // cell_px + 2, width // cell_px + 2, 1))
    # The grid has a one-cell margin on each side so the crop avoids cubic edge artefacts.
    smooth = cv2.resize(coarse, (width + 2 * cell_px, height + 2 * cell_px),
                        interpolation=cv2.INTER_CUBIC)
    smooth = smooth[cell_px:cell_px + height, cell_px:cell_px + width]
    smooth = smooth - smooth.min()
    return smooth / smooth.max()


def shuffle_flow(height: int, width: int, seed: int = DEFAULT_SEED,
                 cell_px: int = DEFAULT_CELL_PX) -> np.ndarray:
    """The float32 (height, width, 2) map of source (x, y) coordinates used by `content_shuffle`."""
    rng = np.random.RandomState(seed)
    x = _noise_disk(height, width, cell_px, rng) * float(width - 1)
    y = _noise_disk(height, width, cell_px, rng) * float(height - 1)
    return np.stack([x, y], axis=2).astype(np.float32)


def content_shuffle(
    image: np.ndarray,
    seed: int = DEFAULT_SEED,
    cell_px: int = DEFAULT_CELL_PX,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Shuffled image (uint8 HxWx3): same seed, same output."""
    if cell_px < 1:
        raise ValueError(f"cell_px must be at least 1, got {cell_px}")

    def detect(rgb: np.ndarray) -> np.ndarray:
        height, width = rgb.shape[:2]
        return cv2.remap(rgb, shuffle_flow(height, width, seed, cell_px), None, cv2.INTER_LINEAR)

    return run_at_resolution(image, resolution, detect)
