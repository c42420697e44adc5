"""What the detector returns per person, in the form the drawing and the JSON read."""

from __future__ import annotations

from dataclasses import dataclass

# (x, y) as fractions of the detection image's width and height (v1.1 stores them so), which
# scales to any output size by multiplying by that size.
Point = tuple[float, float]

BODY_POINTS = 18   # COCO keypoints, as ControlNet's OpenPose models read them
HAND_POINTS = 21
FACE_POINTS = 70   # OpenPose's face model; DWPose gives 68 (no pupils)


@dataclass
class Pose:
    body: list[Point | None]                 # 18 COCO keypoints, body.BODY_PARTS order
    left_hand: list[Point | None] | None = None   # 21 points, None if not detected / not asked
    right_hand: list[Point | None] | None = None
    face: list[Point | None] | None = None        # 70 landmarks
