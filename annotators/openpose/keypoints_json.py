"""Poses as OpenPose's JSON keypoint format, which ComfyUI pose editors read and write.

Layout (CMU OpenPose `doc/02_output.md`, plus the canvas size the ComfyUI editors add):
  {"people": [{"pose_keypoints_2d": [x0, y0, c0, x1, y1, c1, ...],   18 body keypoints
               "face_keypoints_2d": [...],                          70 points or []
               "hand_left_keypoints_2d": [...],                     21 points or []
               "hand_right_keypoints_2d": [...]}],                  21 points or []
   "canvas_width": W, "canvas_height": H}
x, y are pixels of the canvas. The detector keeps no calibrated confidence, so c is 1.0 for a
found point (as comfyui_controlnet_aux writes it) and a missing point is 0, 0, 0 (OpenPose's way).

Read back (`poses_from_json`), a point with confidence 0 or less is missing (NaN is refused, as
are NaN or infinite coordinates of a point that is there); faces may have 70
points (OpenPose) or 68 (DWPose, no pupils); CMU OpenPose's own files have no canvas size, so
one must be given. Animal Pose's AP-10K frames ({"animals": [...]}, annotators/ap10k.py) are read
and drawn too, each animal whole as that node draws it.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, NamedTuple

import numpy as np

from ..ap10k import Animal, animals_from_json, draw_animals
from .drawing import draw_poses
from .pose import BODY_POINTS, FACE_POINTS, HAND_POINTS, Point, Pose

FOUND_CONFIDENCE = 1.0
VALUES_PER_POINT = 3  # x, y, confidence
DWPOSE_FACE_POINTS = 68
# JSON key -> (Pose field, the point counts it may hold).
PARTS = {
    "pose_keypoints_2d": ("body", (BODY_POINTS,)),
    "hand_left_keypoints_2d": ("left_hand", (HAND_POINTS,)),
    "hand_right_keypoints_2d": ("right_hand", (HAND_POINTS,)),
    "face_keypoints_2d": ("face", (FACE_POINTS, DWPOSE_FACE_POINTS)),
}


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


def _points(values: Any, width: float, height: float, where: str, counts: tuple[int, ...]) -> list[Point | None] | None:
    """A part's flat [x, y, c, ...] in canvas pixels -> fractions of the canvas; None when empty."""
    allowed = " or ".join(f"{VALUES_PER_POINT * count} ({count} points)" for count in counts)
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where} must be a list of numbers (x, y, confidence per point)")
    if not values:
        return None
    if len(values) not in [VALUES_PER_POINT * count for count in counts]:
        raise ValueError(f"{where} has {len(values)} numbers; expected {allowed} as x, y, confidence, or none")
    triples = list(zip(values[0::3], values[1::3], values[2::3]))
    for index, (x, y, confidence) in enumerate(triples):
        if math.isnan(confidence) or (confidence > 0 and not (math.isfinite(x) and math.isfinite(y))):
            raise ValueError(f"{where}, point {index}: ({x}, {y}, confidence {confidence}) is not a number; a point is "
                             "x, y, confidence (0 for a missing point)")
    return [(x / width, y / height) if confidence > 0 else None for x, y, confidence in triples]


def is_animal_frame(frame: Any) -> bool:
    """An AP-10K frame (Animal Pose's keypoints): "animals" and no "people"."""
    return isinstance(frame, Mapping) and "animals" in frame and "people" not in frame


def _check_frame(frame: Any, where: str) -> None:
    if not isinstance(frame, Mapping) or not isinstance(frame.get("people"), list):
        raise ValueError(f"{where} is not an OpenPose frame: expected an object with a 'people' list")


def canvas_size(frame: Mapping[str, Any], where: str = "the pose JSON") -> tuple[int, int] | None:
    """(width, height) the frame's coordinates are pixels of, or None when it does not say."""
    width, height = frame.get("canvas_width"), frame.get("canvas_height")
    if width is None and height is None:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf for v in (width, height)):
        raise ValueError(f"{where}: canvas_width and canvas_height must both be positive numbers, got {width!r} and {height!r}")
    return int(width), int(height)


def poses_from_json(frame: Mapping[str, Any], canvas: tuple[int, int], where: str = "the pose JSON") -> list[Pose]:
    """The poses of one OpenPose-format frame whose pixel coordinates are on a `canvas`
    (width, height) canvas; the inverse of `poses_to_json`. `where` names the frame in errors."""
    _check_frame(frame, where)
    width, height = canvas
    poses = []
    for index, person in enumerate(frame["people"]):
        if not isinstance(person, Mapping):
            raise ValueError(f"{where}, person {index}: expected an object with pose_keypoints_2d and so on")
        parts = {field: _points(person.get(key, []), width, height, f"{where}, person {index}: {key}", counts)
                 for key, (field, counts) in PARTS.items()}
        parts["body"] = parts["body"] or [None] * BODY_POINTS
        poses.append(Pose(**parts))
    return poses


def frames_from_text(text: str) -> list[Mapping[str, Any]]:
    """OpenPose-format JSON text: one frame (an object) or a list of frames."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the keypoints JSON is not valid JSON: {error}") from None
    return data if isinstance(data, list) else [data]


class KeypointFrame(NamedTuple):
    """One frame read back: people (OpenPose format, points as fractions of the canvas) or, for
    an AP-10K frame, animals (keypoints in canvas pixels; `poses` is then empty)."""
    canvas: tuple[int, int] | None  # (width, height) the frame names, None when it names none
    poses: list[Pose]
    animals: list[Animal] | None


def read_frames(frames: list[Any], canvas_when_none: tuple[int, int] | None) -> list[KeypointFrame]:
    """Each OpenPose-format or AP-10K frame read, or an error naming the frame and the point. A
    frame that names no canvas (CMU OpenPose's files) reads its pixels on `canvas_when_none`
    (width, height), and is refused when that is None."""
    if not frames:
        raise ValueError("the keypoints hold no frames")
    read = []
    for index, frame in enumerate(frames):
        where = f"keypoints frame {index}"
        animal_frame = is_animal_frame(frame)
        if not animal_frame:
            _check_frame(frame, where)
        canvas = canvas_size(frame, where)
        if canvas is None and canvas_when_none is None:
            raise ValueError(f"{where} has no canvas_width and canvas_height (CMU OpenPose's files have none): set the "
                             "width and height its pixel coordinates refer to")
        if animal_frame:
            read.append(KeypointFrame(canvas, [], animals_from_json(frame["animals"], where)))
        else:
            read.append(KeypointFrame(canvas, poses_from_json(frame, canvas or canvas_when_none, where), None))
    return read


def check_frames(frames: list[Any]) -> None:
    """Refuse frames that Draw Pose Keypoints could not read (what is saved or loaded is then
    drawable). A frame without a canvas is accepted: its size is given when it is drawn."""
    read_frames(frames, canvas_when_none=(1, 1))


def keypoint_frames(pose_keypoint: list[Mapping[str, Any]] | None, keypoints_json: str) -> list[Mapping[str, Any]]:
    """The frames from exactly one of: a POSE_KEYPOINT list (one frame per image), or JSON text."""
    if pose_keypoint is not None and keypoints_json.strip():
        raise ValueError("give the keypoints either as pose_keypoint or as keypoints_json text, not both")
    if pose_keypoint is not None:
        return list(pose_keypoint)
    if keypoints_json.strip():
        return frames_from_text(keypoints_json)
    raise ValueError("no keypoints: connect a pose_keypoint output (OpenPose's) or paste OpenPose-format JSON into "
                     "keypoints_json")


def draw_animal_frame(animals: list[Animal], canvas: tuple[int, int], size: tuple[int, int],
                      draw_skeletons: bool = True) -> np.ndarray:
    """An AP-10K frame's map at `size` (width, height): its animals, keypoints scaled from the
    canvas (not at all when the sizes agree, so the Animal Pose node's own map comes back)."""
    width, height = size
    if not draw_skeletons:
        return np.zeros((height, width, 3), np.uint8)
    if size != canvas:
        scale = np.array([width / canvas[0], height / canvas[1]])
        animals = [(keypoints * scale, scores) for keypoints, scores in animals]
    return draw_animals(animals, height, width)


def draw_keypoint_frames(frames: list[Mapping[str, Any]], width: int = 0, height: int = 0, draw_body_parts: bool = True,
                         draw_hands: bool = True, draw_faces: bool = True) -> list[np.ndarray]:
    """One pose map (uint8 HxWx3 RGB) per OpenPose-format frame, all of one size (an image
    batch). width and height (both or neither; 0 = neither) set that size, and are the canvas of
    frames that name none; otherwise it is the frames' canvas size."""
    if (width > 0) != (height > 0):
        raise ValueError(f"set both width and height, or neither (0 = the canvas size in the keypoints); got {width}×{height}")
    canvas_when_none = (width, height) if width > 0 else None
    maps = []
    for frame in read_frames(frames, canvas_when_none):
        canvas = frame.canvas or canvas_when_none
        size = (width, height) if width > 0 else canvas
        if frame.animals is None:
            maps.append(draw_poses(frame.poses, size[1], size[0], draw_body_parts, draw_hands, draw_faces))
        else:
            maps.append(draw_animal_frame(frame.animals, canvas, size, draw_body_parts))
    sizes = list(dict.fromkeys(f"{m.shape[1]}×{m.shape[0]}" for m in maps))
    if len(sizes) > 1:
        raise ValueError(f"the keypoint frames' canvases differ ({', '.join(sizes)}): set width and height to draw them "
                         "all at one size")
    return maps
