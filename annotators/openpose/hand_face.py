"""Hands and faces: a square box from the body keypoints, a network on the crop, one point per
heatmap.

Boxes follow CMU OpenPose (`handDetector.cpp`) and ControlNet v1.1 (`util.handDetect`,
`util.faceDetect`); decoding follows v1.1 `hand.py` / `face.py` (controlnet-aux 0.0.10 is the
same). Points are pixel positions inside the crop, None where not found.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from .body import BodyDetection
from .inference import maps_at_scale, network_input, resize_like_v11, run_network
from .pose import FACE_POINTS, HAND_POINTS

HAND_BOX_SIZE = 368                     # v1.1 hand.py boxsize
HAND_SCALE_SEARCH = (0.5, 1.0, 1.5, 2.0)  # v1.1 hand.py: crop resized to 184, 368, 552, 736
HAND_HEATMAP_SIZE = 128                 # v1.1 hand.py wsize: heatmaps averaged at 128x128
HAND_BLUR_SIGMA = 0.8                   # v1.1 hand.py: GaussianBlur of the crop first
HAND_HEATMAP_SIGMA = 3                  # gaussian_filter before thresholding
HAND_THRESHOLD = 0.05                   # thre
FACE_INPUT_SIZE = 384                   # v1.1 face.py w_size
FACE_THRESHOLD = 0.05                   # compute_peaks_from_heatmaps
MIN_BOX_SIZE = 20                       # v1.1: smaller hand / face boxes are ignored
HAND_OFFSET_RATIO = 0.33                # OpenPose ratioWristElbow: hand centre beyond the wrist
HAND_BOX_SCALE = 1.5                    # box side = 1.5 * max(forearm, 0.9 * upper arm)
UPPER_ARM_WEIGHT = 0.9
FACE_EYE_SCALE = 3.0                    # box half side >= 3 x nose-eye distance (Chebyshev)
FACE_EAR_SCALE = 1.5                    # ... and >= 1.5 x nose-ear distance

# Body keypoint indices (see body.BODY_PARTS).
NOSE, RIGHT_EYE, LEFT_EYE, RIGHT_EAR, LEFT_EAR = 0, 14, 15, 16, 17
ARMS = (((5, 6, 7), True), ((2, 3, 4), False))  # (shoulder, elbow, wrist), is_left; left first as v1.1

Box = tuple[int, int, int]  # x, y of the top-left corner, side


def hand_boxes(body: BodyDetection, image_height: int, image_width: int) -> list[tuple[Box, bool]]:
    """Square boxes (and is_left) for each hand whose shoulder, elbow and wrist were found."""
    boxes = []
    for (shoulder, elbow, wrist), is_left in ARMS:
        points = [body.keypoints[i] for i in (shoulder, elbow, wrist)]
        if any(point is None for point in points):
            continue
        (x1, y1, _), (x2, y2, _), (x3, y3, _) = points
        forearm = math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2)
        upper_arm = math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2)
        side = HAND_BOX_SCALE * max(forearm, UPPER_ARM_WEIGHT * upper_arm)
        x = max(0, x3 + HAND_OFFSET_RATIO * (x3 - x2) - side / 2)
        y = max(0, y3 + HAND_OFFSET_RATIO * (y3 - y2) - side / 2)
        side = min(side if x + side <= image_width else image_width - x,
                   side if y + side <= image_height else image_height - y)
        if side >= MIN_BOX_SIZE:
            boxes.append(((int(x), int(y), int(side)), is_left))
    return boxes


def face_box(body: BodyDetection, image_height: int, image_width: int) -> Box | None:
    """A box around the nose sized by the eyes and ears found, or None."""
    nose = body.keypoints[NOSE]
    if nose is None:
        return None
    half_side, found = 0.0, False
    for index, scale in ((RIGHT_EYE, FACE_EYE_SCALE), (LEFT_EYE, FACE_EYE_SCALE),
                         (RIGHT_EAR, FACE_EAR_SCALE), (LEFT_EAR, FACE_EAR_SCALE)):
        point = body.keypoints[index]
        if point is not None:
            found = True
            half_side = max(half_side, scale * max(abs(nose[0] - point[0]), abs(nose[1] - point[1])))
    if not found:
        return None
    x, y = max(0, nose[0] - half_side), max(0, nose[1] - half_side)
    # v1.1 compares the corner plus the *half* side with the image border (kept for parity).
    side = min(half_side * 2 if x + half_side <= image_width else image_width - x,
               half_side * 2 if y + half_side <= image_height else image_height - y)
    return (int(x), int(y), int(side)) if side >= MIN_BOX_SIZE else None


def hand_heatmaps(network: nn.Module, crop_bgr: np.ndarray) -> np.ndarray:
    """22 heatmaps at 128x128, averaged over the crop resized to each HAND_SCALE_SEARCH size."""
    blurred = cv2.GaussianBlur(crop_bgr, (0, 0), HAND_BLUR_SIGMA)
    average = np.zeros((HAND_HEATMAP_SIZE, HAND_HEATMAP_SIZE, 22))
    for scale in HAND_SCALE_SEARCH:
        size = int(scale * HAND_BOX_SIZE)
        (heatmaps,) = maps_at_scale(network, blurred, size, size, HAND_HEATMAP_SIZE, HAND_HEATMAP_SIZE)
        average += heatmaps / len(HAND_SCALE_SEARCH)
    return average


def label_blobs(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected blobs of a boolean mask, numbered 1..count in raster order of their first
    pixel (0 = background): what v1.1's skimage.measure.label(connectivity=2) returns, done by
    OpenCV so that no scikit-image is needed at run time."""
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    # OpenCV's own numbering follows its scan algorithm, not the first pixels: renumber.
    values, first_pixel = np.unique(labels, return_index=True)
    blobs = values[values > 0][np.argsort(first_pixel[values > 0], kind="stable")]
    renumbered = np.zeros(count, labels.dtype)
    renumbered[blobs] = np.arange(1, len(blobs) + 1)
    return renumbered[labels], len(blobs)


def hand_points(heatmaps: np.ndarray, crop_height: int, crop_width: int) -> list[tuple[int, int] | None]:
    """Per keypoint: the maximum of the strongest connected blob of the smoothed heatmap above the
    threshold, scaled from 128x128 to the crop (truncated to whole pixels)."""
    points: list[tuple[int, int] | None] = []
    for part in range(HAND_POINTS):
        heatmap = heatmaps[:, :, part]
        above = gaussian_filter(heatmap, sigma=HAND_HEATMAP_SIGMA) > HAND_THRESHOLD
        if not above.any():
            points.append(None)
            continue
        blobs, count = label_blobs(above)
        strongest = 1 + int(np.argmax([heatmap[blobs == i].sum() for i in range(1, count + 1)]))
        y, x = np.unravel_index(np.argmax(np.where(blobs == strongest, heatmap, 0)), heatmap.shape)
        points.append((int(float(x) * crop_width / HAND_HEATMAP_SIZE),
                       int(float(y) * crop_height / HAND_HEATMAP_SIZE)))
    return points


def face_heatmaps(network: nn.Module, crop_bgr: np.ndarray) -> np.ndarray:
    """71 heatmaps [71, h, w] at the crop's size (bilinear, corners aligned, as v1.1)."""
    height, width = crop_bgr.shape[:2]
    square = resize_like_v11(crop_bgr, FACE_INPUT_SIZE, FACE_INPUT_SIZE)
    maps = run_network(network, network_input(square))
    return F.interpolate(maps, (height, width), mode="bilinear", align_corners=True)[0].numpy()


def face_points(heatmaps: np.ndarray) -> list[tuple[int, int] | None]:
    """Per landmark (the background channel is skipped): its heatmap's maximum if above the
    threshold (the first in row-major order on ties)."""
    points: list[tuple[int, int] | None] = []
    for heatmap in heatmaps[:FACE_POINTS]:
        if not (heatmap > FACE_THRESHOLD).any():
            points.append(None)
            continue
        y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
        points.append((int(x), int(y)))
    return points
