"""A generated stand-in photo: a figure in front of a house under a sky, with shading and grain,
so that every annotator finds edges, lines, regions and depth cues in it. No photo ships with
the pack; this one is drawn on the spot.

It is written as RGBA, transparent over INPAINT_BOX: Load Image's MASK output is 1 - alpha, so
that box is what the inpaint workflow and Inpaint Hint repaint (other workflows ignore the MASK).
"""

from __future__ import annotations

import cv2
import numpy as np

EXAMPLE_IMAGE = "controlnet_suite_example.png"  # the file name every workflow's Load Image names
DRAWN_SIDE = 512  # drawn at this size, then resized
INPAINT_BOX = (0.60, 0.34, 0.80, 0.82)  # left, top, right, bottom as fractions of the side: around the figure


def example_photo(side: int = DRAWN_SIDE, seed: int = 0) -> np.ndarray:
    """side x side x 3 uint8 RGB."""
    s = DRAWN_SIDE
    rows = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None, None]
    sky = (1 - rows) * np.array([120, 170, 235], np.float32) + rows * np.array([220, 230, 245], np.float32)
    image = np.broadcast_to(sky, (s, s, 3)).copy()
    horizon = int(s * 0.62)
    ground = np.linspace(0.0, 1.0, s - horizon, dtype=np.float32)[:, None, None]
    image[horizon:] = (1 - ground) * np.array([110, 150, 80], np.float32) + ground * np.array([60, 100, 45], np.float32)
    cv2.circle(image, (int(s * 0.82), int(s * 0.16)), int(s * 0.07), (250, 220, 120), -1, cv2.LINE_AA)
    # house: wall, roof, door, windows
    cv2.rectangle(image, (int(s * 0.08), int(s * 0.40)), (int(s * 0.48), int(s * 0.70)), (205, 180, 150), -1)
    roof = np.array([[s * 0.05, s * 0.41], [s * 0.28, s * 0.22], [s * 0.51, s * 0.41]], np.int32)
    cv2.fillPoly(image, [roof], (150, 60, 50), cv2.LINE_AA)
    cv2.rectangle(image, (int(s * 0.24), int(s * 0.54)), (int(s * 0.32), int(s * 0.70)), (100, 70, 50), -1)
    for x in (0.12, 0.36):
        cv2.rectangle(image, (int(s * x), int(s * 0.47)), (int(s * (x + 0.08)), int(s * 0.55)), (90, 130, 170), -1)
    # a standing figure: head, torso, arms, legs
    cx = int(s * 0.70)
    cv2.circle(image, (cx, int(s * 0.42)), int(s * 0.04), (230, 190, 160), -1, cv2.LINE_AA)
    limbs = [((0, 0.46), (0, 0.62)), ((0, 0.49), (-0.07, 0.57)), ((0, 0.49), (0.07, 0.55)),
             ((0, 0.62), (-0.04, 0.78)), ((0, 0.62), (0.04, 0.78))]
    for (x0, y0), (x1, y1) in limbs:
        cv2.line(image, (cx + int(s * x0), int(s * y0)), (cx + int(s * x1), int(s * y1)), (60, 60, 130),
                 max(2, s // 40), cv2.LINE_AA)
    image = cv2.GaussianBlur(image, (0, 0), 1.2)
    grain = np.random.default_rng(seed).normal(0.0, 4.0, image.shape).astype(np.float32)
    image = np.clip(image + grain, 0, 255).astype(np.uint8)
    if side != s:
        image = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return image


def inpaint_box_pixels(side: int) -> tuple[int, int, int, int]:
    """INPAINT_BOX in pixels of a side x side photo: (left, top, right, bottom), right and bottom exclusive."""
    left, top, right, bottom = (round(f * side) for f in INPAINT_BOX)
    return left, top, right, bottom


def write_example_photo(path: str, side: int = DRAWN_SIDE) -> str:
    """The photo as an RGBA PNG, alpha 0 over INPAINT_BOX."""
    rgb = example_photo(side)
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    left, top, right, bottom = inpaint_box_pixels(side)
    alpha[top:bottom, left:right] = 0
    cv2.imwrite(path, cv2.cvtColor(np.dstack([rgb, alpha]), cv2.COLOR_RGBA2BGRA))
    return path
