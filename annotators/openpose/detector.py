"""The OpenPose annotator: photo -> pose map and OpenPose-format keypoints.

The flow is ControlNet v1.1's `OpenposeDetector` (controlnet-aux 0.0.10 is the same): the image
at the detect resolution is flipped to BGR (the Caffe models' order), bodies are found, then
each body's hands and face are cropped by boxes from its keypoints and run through their own
networks; everything is drawn on a black canvas which comes back at the input's size.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..image import DEFAULT_DETECT_RESOLUTION, run_at_resolution, to_rgb_uint8
from .body import BodyDetection, body_maps, decode_body
from .drawing import draw_poses
from .hand_face import face_box, face_heatmaps, face_points, hand_boxes, hand_heatmaps, hand_points
from .keypoints_json import poses_to_json
from .networks import OpenPoseNetworks
from .pose import Point, Pose


def crop_points_to_image(points: list[tuple[int, int] | None], box_x: int, box_y: int,
                         height: int, width: int) -> list[Point | None]:
    """Crop pixels -> fractions of the image. v1.1 marks "not found" with 0, so a point on the
    crop's first row or column is lost there too; kept so the drawn maps match. The fractions
    stay numpy float32, as in v1.1, so drawing truncates them to the same pixels."""
    result: list[Point | None] = []
    for point in points:
        if point is None or point[0] == 0 or point[1] == 0:
            result.append(None)
        else:
            result.append((np.float32(point[0] + box_x) / np.float32(width),
                           np.float32(point[1] + box_y) / np.float32(height)))
    return result


def detect_poses(image_bgr: np.ndarray, networks: OpenPoseNetworks, include_hand: bool = False,
                 include_face: bool = False) -> list[Pose]:
    """All people in a uint8 BGR image; coordinates are fractions of its width and height."""
    height, width = image_bgr.shape[:2]
    bodies: list[BodyDetection] = decode_body(*body_maps(networks.body, image_bgr))
    poses = []
    for body in bodies:
        pose = Pose(body=[None if k is None else (k[0] / float(width), k[1] / float(height))
                          for k in body.keypoints])
        if include_hand:
            for (x, y, side), is_left in hand_boxes(body, height, width):
                crop = image_bgr[y:y + side, x:x + side]
                points = hand_points(hand_heatmaps(networks.hand, crop), *crop.shape[:2])
                hand = crop_points_to_image(points, x, y, height, width)
                if is_left:
                    pose.left_hand = hand
                else:
                    pose.right_hand = hand
        if include_face:
            box = face_box(body, height, width)
            if box is not None:
                x, y, side = box
                crop = image_bgr[y:y + side, x:x + side]
                pose.face = crop_points_to_image(face_points(face_heatmaps(networks.face, crop)),
                                                 x, y, height, width)
        poses.append(pose)
    return poses


def openpose(
    image: np.ndarray,
    networks: OpenPoseNetworks,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    include_body: bool = True,
    include_hand: bool = False,
    include_face: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(pose map uint8 HxWx3 at the image's size, OpenPose-format keypoints in its pixels).

    Hands and faces need their networks (`load_openpose(..., hands=True, face=True)`). Bodies
    are always detected, because hand and face boxes come from them; `include_body=False`
    only leaves them out of the drawing.
    """
    if include_hand and networks.hand is None:
        raise ValueError("include_hand needs the hand network; load it with load_openpose(..., hands=True)")
    if include_face and networks.face is None:
        raise ValueError("include_face needs the face network; load it with load_openpose(..., face=True)")
    return poses_at_resolution(
        image, resolution,
        lambda rgb: detect_poses(np.ascontiguousarray(rgb[:, :, ::-1]), networks, include_hand, include_face),
        include_body, include_hand, include_face)


def poses_at_resolution(
    image: np.ndarray,
    resolution: int | None,
    find_poses: Callable[[np.ndarray], list[Pose]],
    draw_body: bool = True,
    draw_hands: bool = True,
    draw_faces: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """What a pose annotator returns: (the map of what `find_poses` found in the uint8 RGB image
    at the detect resolution, back at the image's size; those poses as OpenPose-format keypoints
    in the image's pixels). OpenPose and DWPose share it."""
    rgb = to_rgb_uint8(image)
    found: list[Pose] = []

    def detect(detect_rgb: np.ndarray) -> np.ndarray:
        found.extend(find_poses(detect_rgb))
        return draw_poses(found, *detect_rgb.shape[:2], draw_body_parts=draw_body, draw_hands=draw_hands,
                          draw_faces=draw_faces)

    pose_map = run_at_resolution(rgb, resolution, detect)
    height, width = rgb.shape[:2]
    return pose_map, poses_to_json(found, width, height)
