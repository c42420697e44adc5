"""Poses as OpenPose's JSON keypoint format, which ComfyUI pose editors read and write.

Layout (CMU OpenPose `doc/02_output.md`, plus the canvas size the ComfyUI editors add):
  {"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...],   18 body keypoints
               "face_keypoints_2d": [...],                          70 points or []
               "hand_left_keypoints_2d": [...],                     21 points or []
               "hand_right_keypoints_2d": [...]}],                  21 points or []
   "canvas_width": W, "canvas_height": H}
x, y are pixels of the canvas. The detector keeps no calibrated confidence, so c is 1.0 for a
found point (as comfyui_controlnet_aux writes it) and a missing point is 0, 0, 0 (OpenPose's way).
"""

from __future__ import annotations

from typing import Any

from .pose import Point, Pose

FOUND_CONFIDENCE = 1.0


def flatten(points: list[Point | None] | None, width: int, height: int) -> list[float]:
    """[x, y, c] per point in canvas pixels; [] when the part was not detected or not asked."""
    if points is None:
        return []
    values: list[float] = []
    for point in points:
        if point is None:
            values += [0.0, 0.0, 0.0]
        else:
            values += [float(point[0]) * width, float(point[1]) * height, FOUND_CONFIDENCE]
    return values


def poses_to_json(poses: list[Pose], width: int, height: int) -> dict[str, Any]:
    """The OpenPose-format dict for `poses` on a width x height canvas (json.dumps-ready)."""
    return {
        "people": [{
            "pose_keypoints_2d": flatten(pose.body, width, height),
            "face_keypoints_2d": flatten(pose.face, width, height),
            "hand_left_keypoints_2d": flatten(pose.left_hand, width, height),
            "hand_right_keypoints_2d": flatten(pose.right_hand, width, height),
        } for pose in poses],
        "canvas_width": width,
        "canvas_height": height,
    }
