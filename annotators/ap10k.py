"""AP-10K animal keypoints (17 per animal), as comfyui_controlnet_aux's Animal Pose writes and
draws them: the keypoint order, the limbs and their colours, the map and the JSON format.

Format (that pack's POSE_KEYPOINT for animals): {"version": "ap10k", "animals": [[[x, y, score] x 17]
per animal], "canvas_width": W, "canvas_height": H}, x and y in pixels of the canvas. Every animal
has all 17 points and is drawn whole, whatever the scores (the pack has no threshold).

Here, apart from the detector (annotators/animal_pose.py), so that Draw Pose Keypoints can read and
draw such frames without loading any network code.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import cv2
import numpy as np

# AP-10K's keypoint order (mmpose's ap10k dataset info).
AP10K_KEYPOINTS = ("left_eye", "right_eye", "nose", "neck", "root_of_tail", "left_shoulder", "left_elbow",
                   "left_front_paw", "right_shoulder", "right_elbow", "right_front_paw", "left_hip", "left_knee",
                   "left_back_paw", "right_hip", "right_knee", "right_back_paw")
# The lines animalpose.py draws, in its order, each with its colour (RGB, as the map is).
AP10K_LIMBS = (
    (("left_eye", "right_eye"), (255, 255, 255)),
    (("right_eye", "nose"), (100, 255, 100)),
    (("left_eye", "nose"), (150, 255, 255)),
    (("nose", "neck"), (100, 50, 255)),
    (("neck", "right_shoulder"), (50, 150, 200)),
    (("right_shoulder", "right_elbow"), (0, 255, 255)),
    (("right_elbow", "right_front_paw"), (0, 150, 0)),
    (("neck", "left_shoulder"), (0, 0, 255)),
    (("left_shoulder", "left_elbow"), (0, 0, 150)),
    (("left_elbow", "left_front_paw"), (255, 50, 255)),
    (("neck", "root_of_tail"), (255, 0, 255)),
    (("root_of_tail", "right_hip"), (255, 0, 0)),
    (("right_hip", "right_knee"), (150, 0, 0)),
    (("right_knee", "right_back_paw"), (255, 255, 100)),
    (("root_of_tail", "left_hip"), (0, 150, 0)),
    (("left_hip", "left_knee"), (255, 255, 0)),
    (("left_knee", "left_back_paw"), (150, 150, 150)),
)
LIMB_THICKNESS_PX = 5  # animalpose.py: int(5 // scaleFactor), its scale factor 1
KEYPOINTS_VERSION = "ap10k"

Animal = tuple[np.ndarray, np.ndarray]  # (17 keypoints x, y in pixels, their 17 scores)


def draw_animals(animals: Sequence[Animal], height: int, width: int) -> np.ndarray:
    """uint8 height×width×3 map: each animal's limbs in AP10K_LIMBS' order and colours, end points
    truncated to whole pixels as animalpose.py does."""
    canvas = np.zeros((height, width, 3), np.uint8)
    index = {name: i for i, name in enumerate(AP10K_KEYPOINTS)}
    for keypoints, _ in animals:
        for (start, end), colour in AP10K_LIMBS:
            (x1, y1), (x2, y2) = keypoints[index[start]], keypoints[index[end]]
            cv2.line(canvas, (int(x1), int(y1)), (int(x2), int(y2)), colour, LIMB_THICKNESS_PX)
    return canvas


def animals_to_json(animals: Sequence[Animal], width: int, height: int) -> dict[str, Any]:
    """comfyui_controlnet_aux's AP-10K keypoints dict (json.dumps-ready) on a width×height canvas."""
    return {
        "version": KEYPOINTS_VERSION,
        "animals": [np.concatenate((keypoints, np.clip(scores, 0.0, 1.0)[:, None]), axis=1).tolist()
                    for keypoints, scores in animals],
        "canvas_height": height,
        "canvas_width": width,
    }


def animals_from_json(animals: Any, where: str) -> list[Animal]:
    """The animals of an AP-10K frame's "animals" list (keypoints in canvas pixels, scores), or
    an error naming the animal and point that is not 17 [x, y, score] finite numbers."""
    if not isinstance(animals, list):
        raise ValueError(f"{where}: 'animals' must be a list of animals, each {len(AP10K_KEYPOINTS)} [x, y, score] points")
    read = []
    for index, points in enumerate(animals):
        if not isinstance(points, list) or len(points) != len(AP10K_KEYPOINTS):
            count = len(points) if isinstance(points, list) else type(points).__name__
            raise ValueError(f"{where}, animal {index}: expected {len(AP10K_KEYPOINTS)} [x, y, score] points "
                             f"(AP-10K), got {count}")
        for number, point in enumerate(points):
            if not (isinstance(point, (list, tuple)) and len(point) == 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)):
                raise ValueError(f"{where}, animal {index}, point {number}: expected [x, y, score] as finite numbers, "
                                 f"got {point!r}")
        values = np.asarray(points, dtype=np.float64)
        read.append((values[:, :2], values[:, 2]))
    return read
