"""Drawing poses the way ControlNet's OpenPose models were trained to read them.

ControlNet v1.1 `annotator/openpose/util.py` (`draw_bodypose`, `draw_handpose`,
`draw_facepose`; controlnet-aux 0.0.10 is the same): black canvas, colours are RGB. Coordinates
are truncated to whole pixels (int()), as there, so maps are pixel-identical.
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from .pose import Point, Pose

# The 17 drawn limbs: body.LIMBS without the two redundant shoulder-ear ones.
DRAWN_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11),
               (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
# One colour per limb and per keypoint (limb i and keypoint i share colour i).
BODY_COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
                (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
                (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
                (255, 0, 255), (255, 0, 170), (255, 0, 85))
LIMB_HALF_WIDTH = 4        # stickwidth: limbs are filled ellipses this many pixels across / 2
LIMB_BRIGHTNESS = 0.6      # limbs are drawn at 60% of their colour, joints at 100%
JOINT_RADIUS = 4
ELLIPSE_ANGLE_STEP = 1     # degrees between ellipse polygon vertices

# Hand: wrist (0) to each finger's four joints; edge i gets hue i / 20 at full saturation.
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
              (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18),
              (18, 19), (19, 20))
HAND_EDGE_THICKNESS = 2
HAND_POINT_RADIUS = 4
HAND_POINT_COLOUR = (0, 0, 255)
FACE_POINT_RADIUS = 3
FACE_POINT_COLOUR = (255, 255, 255)
# v1.1 skips hand and face points whose pixel x or y is 0 (it marks "not found" with 0 or -1).
MIN_DRAWN_COORDINATE = 0.01


def hand_edge_colour(edge_index: int) -> tuple[float, float, float]:
    """v1.1 uses matplotlib's hsv_to_rgb(hue, 1, 1) * 255; OpenCV rounds the floats."""
    red, green, blue = colorsys.hsv_to_rgb(edge_index / float(len(HAND_EDGES)), 1.0, 1.0)
    return (red * 255, green * 255, blue * 255)


def draw_body(canvas: np.ndarray, keypoints: list[Point | None]) -> None:
    height, width = canvas.shape[:2]
    for (start, end), colour in zip(DRAWN_LIMBS, BODY_COLOURS):
        if keypoints[start] is None or keypoints[end] is None:
            continue
        x1, x2 = keypoints[start][0] * float(width), keypoints[end][0] * float(width)
        y1, y2 = keypoints[start][1] * float(height), keypoints[end][1] * float(height)
        length = ((y1 - y2) ** 2 + (x1 - x2) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y1 - y2, x1 - x2))
        centre = (int((x1 + x2) / 2), int((y1 + y2) / 2))
        polygon = cv2.ellipse2Poly(centre, (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360,
                                   ELLIPSE_ANGLE_STEP)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * LIMB_BRIGHTNESS) for c in colour])
    for point, colour in zip(keypoints, BODY_COLOURS):
        if point is not None:
            cv2.circle(canvas, (int(point[0] * width), int(point[1] * height)), JOINT_RADIUS, colour,
                       thickness=-1)


def to_pixel(point: Point | None, height: int, width: int) -> tuple[int, int] | None:
    """Whole-pixel position, or None for points v1.1 does not draw."""
    if point is None:
        return None
    x, y = int(point[0] * width), int(point[1] * height)
    return (x, y) if x > MIN_DRAWN_COORDINATE and y > MIN_DRAWN_COORDINATE else None


def draw_hand(canvas: np.ndarray, points: list[Point | None]) -> None:
    height, width = canvas.shape[:2]
    pixels = [to_pixel(point, height, width) for point in points]
    for index, (start, end) in enumerate(HAND_EDGES):
        if pixels[start] is not None and pixels[end] is not None:
            cv2.line(canvas, pixels[start], pixels[end], hand_edge_colour(index), thickness=HAND_EDGE_THICKNESS)
    for pixel in pixels:
        if pixel is not None:
            cv2.circle(canvas, pixel, HAND_POINT_RADIUS, HAND_POINT_COLOUR, thickness=-1)


def draw_face(canvas: np.ndarray, points: list[Point | None]) -> None:
    height, width = canvas.shape[:2]
    for point in points:
        pixel = to_pixel(point, height, width)
        if pixel is not None:
            cv2.circle(canvas, pixel, FACE_POINT_RADIUS, FACE_POINT_COLOUR, thickness=-1)


def draw_poses(poses: list[Pose], height: int, width: int, draw_body_parts: bool = True,
               draw_hands: bool = True, draw_faces: bool = True) -> np.ndarray:
    """uint8 HxWx3 RGB pose map; each person's body, then hands, then face, as v1.1 layers them."""
    canvas = np.zeros((height, width, 3), np.uint8)
    for pose in poses:
        if draw_body_parts:
            draw_body(canvas, pose.body)
        if draw_hands:
            for hand in (pose.left_hand, pose.right_hand):
                if hand:
                    draw_hand(canvas, hand)
        if draw_faces and pose.face:
            draw_face(canvas, pose.face)
    return canvas
