"""Colour a segmentation label map with a published palette (ADE20K or COCO-Stuff).

This is the drawing half of ControlNet's seg annotator (v1.0 UniFormer draws mmseg's ADE20K
palette at opacity 1): the label map comes from a segmentor, the colours from `palettes`.
Labels with no palette row (mmseg's ignore index 255, negatives, unused COCO-Stuff ids) are
drawn black, as mmseg's `show_result` leaves them.
"""

from __future__ import annotations

import numpy as np

from .image import check_array
from .palettes import (ADE20K_PALETTE, COCO_PANOPTIC_PALETTE, COCO_STUFF_PALETTE,
                       COCO_STUFF_RAW_ID_COUNT, COCO_STUFF_UNUSED_IDS)

UNLABELED_COLOUR = (0, 0, 0)  # mmseg show_result starts from a zero (black) canvas


def _coco_stuff_raw_palette() -> np.ndarray:
    """COCO_STUFF_PALETTE re-indexed by raw COCO-Stuff id 0..181 (unused ids black)."""
    used_ids = [i for i in range(COCO_STUFF_RAW_ID_COUNT) if i not in COCO_STUFF_UNUSED_IDS]
    table = np.zeros((COCO_STUFF_RAW_ID_COUNT, 3), dtype=np.uint8)
    table[used_ids] = np.asarray(COCO_STUFF_PALETTE, dtype=np.uint8)
    return table


# name -> (classes, 3) uint8 table. "coco_stuff" is indexed by mmseg train id (0..170),
# "coco_stuff_raw" by the ids in COCO-Stuff's own label files (0..181); "coco_panoptic" by
# OneFormer COCO's 133 contiguous ids (detectron2's order).
PALETTES: dict[str, np.ndarray] = {
    "ade20k": np.asarray(ADE20K_PALETTE, dtype=np.uint8),
    "coco_stuff": np.asarray(COCO_STUFF_PALETTE, dtype=np.uint8),
    "coco_stuff_raw": _coco_stuff_raw_palette(),
    "coco_panoptic": np.asarray(COCO_PANOPTIC_PALETTE, dtype=np.uint8),
}


def colorize_labels(labels: np.ndarray, palette: str = "ade20k") -> np.ndarray:
    """uint8 HxWx3 RGB map: pixel = PALETTES[palette][label], black for labels off the table."""
    if palette not in PALETTES:
        raise ValueError(f"unknown palette {palette!r}; choose one of {sorted(PALETTES)}")
    labels = check_array(labels, "labels")
    if labels.ndim == 3:
        if labels.shape[2] != 1:
            raise ValueError(
                f"labels must be HxW class indices, got shape {labels.shape}; "
                "pass the segmentor's argmax, not a colour image")
        labels = labels[:, :, 0]
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be integers (class indices), got dtype {labels.dtype}; "
            "cast with labels.astype(np.int64) if the values are whole numbers")
    table = PALETTES[palette]
    # One extra black row catches every label that is not a class of this palette.
    lookup = np.concatenate([table, np.asarray([UNLABELED_COLOUR], dtype=np.uint8)])
    indices = labels.astype(np.int64)
    indices = np.where((indices >= 0) & (indices < len(table)), indices, len(table))
    return lookup[indices]
