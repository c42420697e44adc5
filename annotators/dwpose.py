"""DWPose (Yang et al. 2023): whole-body poses (body, feet, hands, face) drawn as OpenPose maps.

DWPose finds people with a detector (YOLOX-L, `yolox_network`), as its ONNX pipeline does
(comfyui_controlnet_aux's `dw_onnx/cv_ox_det.py`, from Megvii's YOLOX demo):

- `letterbox`: the image scaled to fit 640×640 and padded with grey (114) on the right and
  bottom, pixels 0..255 in the order given (RGB: DWPose's pipeline hands YOLOX the RGB image,
  though mmdet trained it on BGR; we keep what users' maps were made with);
- `detect_people`: per grid point a box and the person score (objectness × person probability);
  candidates above 0.1, greedy NMS at IoU 0.45, then the people above 0.3 (`detect_boxes`, which
  Animal Pose runs on COCO's animal classes).

Then, for each person's box:

1. `person_crop_box`: the box's centre, and its size padded by 1.25 and widened or heightened
   to the network's 288:384 aspect (mmpose's bbox_xyxy2cs and TopdownAffine._fix_aspect_ratio);
2. `crop_person`: that region warped to 288×384 with bilinear sampling and normalised with
   ImageNet's mean and deviation (mmpose's TopdownAffine, PoseDataPreprocessor);
3. RTMPose (`rtmpose_network`) and `simcc_maximum`: 133 keypoints in crop pixels;
4. `keypoints_to_image`: back to image pixels (mmpose's TopdownPoseEstimator);
5. `wholebody_to_pose`: the 133 COCO-WholeBody keypoints as the OpenPose skeleton ControlNet's
   pose models read (18 body points with a neck between the shoulders, 21 per hand, 68 face
   points), keeping body points scored above 0.3 and hand and face points at 0.3 or above, as
   DWPose's own `DWposeDetector` does.

Weights, one file per network, either kind:

- the ONNX exports DWPose publishes (huggingface.co/yzd-v/DWPose), which comfyui_controlnet_aux
  and sd-webui-controlnet run with onnxruntime: `yolox_l.onnx` (Megvii's YOLOX-L export) and
  `dw-ll_ucoco_384.onnx` (RTMPose-l). Their graphs run here with torch operations
  (`onnx_graph.OnnxGraph`), on ComfyUI's device, with no onnxruntime;
- the checkpoints DWPose's mmpose/mmdet pipeline loads (controlnet-aux's `DWposeDetector`):
  `dw-ll_ucoco_384.pth` (yzd-v/DWPose) for RTMPose and mmdet's
  `yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth` for YOLOX, into our own networks.

comfyui_controlnet_aux's TorchScript files (`*.torchscript.pt`) are not read: loading one runs
the code it holds.

Where the detector finds nobody, no pose is drawn, as in comfyui_controlnet_aux (mmpose and
DWPose's first release would run the keypoint network on the whole image instead, which draws
a skeleton on any picture).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION
from .networks_common import image_batch, network_from_weights, to_numpy
from .onnx_file import load_onnx
from .onnx_graph import CHANNELS_LAST_DEVICES, OnnxGraph, UnsupportedOnnxOperator
from .openpose.body import BODY_PARTS
from .openpose.detector import poses_at_resolution
from .openpose.pose import HAND_POINTS, Point, Pose
from .rtmpose_network import Rtmpose, RtmposeConfig, simcc_maximum
from .weights import BadWeightsError, drop_prefixes, find_weights, load_state_dict, strip_prefix
from .yolox_network import Detections, Yolox, YoloxConfig, decode_detections, decode_exported

POSE_ONNX = "dw-ll_ucoco_384.onnx"
DETECTOR_ONNX = "yolox_l.onnx"
POSE_WEIGHTS = "dw-ll_ucoco_384.pth"
DETECTOR_WEIGHTS = "yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth"
WEIGHTS_REPOS = {
    POSE_ONNX: "yzd-v/DWPose",
    DETECTOR_ONNX: "yzd-v/DWPose",
    POSE_WEIGHTS: "yzd-v/DWPose",
    DETECTOR_WEIGHTS: "https://download.openmmlab.com/mmdetection/v2.0/yolox/yolox_l_8x8_300e_coco/",
}
# The files each network can be read from, the default first.
DETECTOR_FILES = (DETECTOR_ONNX, DETECTOR_WEIGHTS)
POSE_FILES = (POSE_ONNX, POSE_WEIGHTS)
ONNX_SUFFIX = ".onnx"
# Megvii's YOLOX-L export: the P5 levels' strides (its demo_postprocess, p6=False).
EXPORTED_DETECTOR_STRIDES = (8, 16, 32)
# Training leftovers beside the weights: mmcv's EMA hook keeps its averages as `ema_*` buffers in
# mmdet 2 checkpoints (the weights saved are already the averaged ones); DWPose's distillation
# checkpoints hold the student under `student.` and may hold the teacher.
DETECTOR_TRAINING_PREFIXES = ("ema_",)
DISTILLATION_STUDENT_PREFIX = "student."
DISTILLATION_TEACHER_PREFIXES = ("teacher.",)

# cv_ox_det.py (DWPose's detector step): input size, pad value, thresholds; COCO's class 0 is a person.
DETECTOR_INPUT_SIZE = 640
LETTERBOX_VALUE = 114
CANDIDATE_SCORE_THRESHOLD = 0.1
NMS_IOU_THRESHOLD = 0.45
BOX_SCORE_THRESHOLD = 0.3
PERSON_CLASS = 0
# Megvii's NMS measures boxes in whole pixels, both ends included: side = x2 - x1 + 1.
INCLUSIVE_PIXEL = 1.0

# mmpose bbox_xyxy2cs(padding=1.25) as DWPose's pipelines call it: context around the person.
PERSON_BOX_PADDING = 1.25
# PoseDataPreprocessor in dwpose-l_384x288.py: ImageNet statistics of RGB pixels 0..255.
POSE_MEAN = np.array([123.675, 116.28, 103.53])
POSE_STD = np.array([58.395, 57.12, 57.375])
# DWposeDetector: body points are drawn above this score, hand and face points at or above it.
KEYPOINT_SCORE_THRESHOLD = 0.3
# Crops RTMPose runs in one batch: a crowd costs the memory of this many at a time, not of everyone
# in it (DWPose's own pipeline runs them one by one).
POSE_CROPS_PER_BATCH = 8

# COCO-WholeBody's keypoint order: 17 body points, 6 feet, 68 face, left hand, right hand.
COCO_BODY_PARTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                   "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
                   "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
FOOT_POINTS = 6
WHOLEBODY_FACE_POINTS = 68
FACE_START = len(COCO_BODY_PARTS) + FOOT_POINTS
LEFT_HAND_START = FACE_START + WHOLEBODY_FACE_POINTS
RIGHT_HAND_START = LEFT_HAND_START + HAND_POINTS


class ExportedDetector(nn.Module):
    """YOLOX as `yolox_l.onnx` holds it: forward(Bx3xHxW pixels) -> Detections."""
    strides = EXPORTED_DETECTOR_STRIDES

    def __init__(self, graph: OnnxGraph):
        super().__init__()
        self.graph = graph

    def forward(self, image_batch: torch.Tensor) -> Detections:
        (rows,) = self.graph(image_batch)
        return decode_exported(rows.float(), self.strides, tuple(image_batch.shape[-2:]))


class ExportedPose(nn.Module):
    """RTMPose as `dw-ll_ucoco_384.onnx` holds it: forward(normalised crops Bx3xHxW) -> (x logits,
    y logits), like `Rtmpose`; a graph exported for one crop at a time runs the crops one by one."""

    def __init__(self, graph: OnnxGraph, input_size: tuple[int, int], one_at_a_time: bool):
        super().__init__()
        self.graph = graph
        self.input_size = input_size  # (width, height), as RtmposeConfig.input_size
        self.one_at_a_time = one_at_a_time

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.one_at_a_time:
            return self.graph(crops)
        outputs = [self.graph(crop[None]) for crop in crops]
        return tuple(torch.cat(parts) for parts in zip(*outputs))


@dataclass
class DWPoseNetworks:
    """What `dwpose()` runs."""
    detector: Yolox | ExportedDetector
    pose: Rtmpose | ExportedPose


def _checked(path: str, state_dict: dict[str, torch.Tensor], what: str, layout: str) -> dict[str, torch.Tensor]:
    if not any(key.startswith("backbone.") for key in state_dict):
        example = next(iter(state_dict), "(none)")
        raise BadWeightsError(f"'{path}' does not hold {what} weights ({layout}; its first key is '{example}'): "
                              "use the file published under this name")
    return state_dict


def _detector_weights(path: str) -> dict[str, torch.Tensor]:
    state_dict = drop_prefixes(load_state_dict(path, opaque_objects=True), DETECTOR_TRAINING_PREFIXES)
    return _checked(path, state_dict, "YOLOX", "mmdet's layout: backbone., neck., bbox_head.")


def _pose_weights(path: str) -> dict[str, torch.Tensor]:
    state_dict = load_state_dict(path, opaque_objects=True)
    if any(key.startswith(DISTILLATION_STUDENT_PREFIX) for key in state_dict):
        state_dict = strip_prefix(drop_prefixes(state_dict, DISTILLATION_TEACHER_PREFIXES), DISTILLATION_STUDENT_PREFIX)
    return _checked(path, state_dict, "RTMPose", "mmpose's layout: backbone., head.")


def load_dwpose(folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                detector_file: str = DETECTOR_ONNX, pose_file: str = POSE_ONNX) -> DWPoseNetworks:
    """YOLOX-L and RTMPose-l from the files named (one of DETECTOR_FILES and of POSE_FILES), in
    eval mode. Both files are found before either is read, so a missing one is reported at once."""
    detector_path, pose_path = find_network_files(
        "DWPose", folders, ((detector_file, DETECTOR_FILES), (pose_file, POSE_FILES)), WEIGHTS_REPOS)
    detector = load_detector(detector_path)
    if pose_file.endswith(ONNX_SUFFIX):
        pose = exported_rtmpose(pose_path)
    else:
        pose = _built(lambda weights: Rtmpose(RtmposeConfig.from_state_dict(weights)),
                      _pose_weights(pose_path), pose_path, "RTMPose")
    return DWPoseNetworks(detector=placed_network(detector, device, dtype), pose=placed_network(pose, device, dtype))


def find_network_files(annotator: str, folders: Sequence[str], choices: Sequence[tuple[str, Sequence[str]]],
                       repos: dict[str, str]) -> list[str]:
    """The path of each file named, each checked to be one of its choices: all are found before
    any is read, so a missing one is reported at once."""
    for name, allowed in choices:
        if name not in allowed:
            raise ValueError(f"{annotator} reads {' or '.join(allowed)}, not '{name}'")
    return [find_weights(name, folders, repos[name]) for name, _ in choices]


def load_detector(path: str) -> Yolox | ExportedDetector:
    """YOLOX-L from its ONNX export or mmdet's checkpoint (by the file's suffix)."""
    if path.endswith(ONNX_SUFFIX):
        return _exported_detector(path)
    return _built(lambda weights: Yolox(YoloxConfig.from_state_dict(weights)), _detector_weights(path), path, "YOLOX")


def placed_network(network: torch.nn.Module, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    """`network` on `device` in `dtype`, for inference. The checkpoints' torch networks keep their
    convolution weights channels-last on the devices where the ONNX graphs run channels-last
    (bench/dwpose_onnx.py, 2 CPU threads: detector 8%, pose 12% faster); a graph's weights stay
    as they are, since its convolutions pick their layout per call."""
    network = network.to(device=device, dtype=dtype).eval().requires_grad_(False)
    if not isinstance(network, (ExportedDetector, ExportedPose)) and torch.device(device).type in CHANNELS_LAST_DEVICES:
        network = network.to(memory_format=torch.channels_last)
    return network


def _graph(path: str, what: str, inputs: int, outputs: int) -> OnnxGraph:
    """The ONNX graph in `path`, checked to take `inputs` image batches and give `outputs` tensors."""
    name = os.path.basename(path)
    try:
        graph = OnnxGraph(load_onnx(path), source=name)
    except UnsupportedOnnxOperator as error:
        raise BadWeightsError(f"'{name}' cannot run here: {error}. Use the {what} file published under this name") from error
    if len(graph.input_names) != inputs or len(graph.output_names) != outputs or len(graph.input_shapes[0]) != 4:
        raise BadWeightsError(f"'{name}' is not {what} as DWPose exports it (its graph takes {len(graph.input_names)} "
                              f"input(s) and gives {len(graph.output_names)} output(s)): use the file published "
                              "under this name")
    return graph


def _exported_detector(path: str) -> ExportedDetector:
    return ExportedDetector(_graph(path, "YOLOX", inputs=1, outputs=1))


def exported_rtmpose(path: str) -> ExportedPose:
    """An RTMPose ONNX export (DWPose's, or Animal Pose's AP-10K model), its crop size read from the graph."""
    graph = _graph(path, "RTMPose", inputs=1, outputs=2)
    batch, _, height, width = graph.input_shapes[0]
    if not isinstance(height, int) or not isinstance(width, int):
        raise BadWeightsError(f"'{os.path.basename(path)}' does not fix its input size (height {height}, "
                              f"width {width}): use the RTMPose file published under this name")
    return ExportedPose(graph, input_size=(width, height), one_at_a_time=batch == 1)


def _built(build, state_dict: dict[str, torch.Tensor], path: str, what: str) -> nn.Module:
    try:
        return network_from_weights(build, state_dict)
    except (KeyError, ValueError, RuntimeError) as error:  # a key or count the config reads is absent; a strict-load mismatch
        raise BadWeightsError(f"'{path}' does not hold {what} weights as DWPose uses them ({type(error).__name__}: "
                              f"{str(error)[:300]}): use the file published under this name") from error


def letterbox(image_rgb: np.ndarray) -> tuple[np.ndarray, float]:
    """uint8 HxWx3 -> (uint8 640×640×3 detector input, the scale applied to the image)."""
    height, width = image_rgb.shape[:2]
    ratio = min(DETECTOR_INPUT_SIZE / height, DETECTOR_INPUT_SIZE / width)
    scaled_width, scaled_height = int(width * ratio), int(height * ratio)
    padded = np.full((DETECTOR_INPUT_SIZE, DETECTOR_INPUT_SIZE, 3), LETTERBOX_VALUE, np.uint8)
    padded[:scaled_height, :scaled_width] = cv2.resize(image_rgb, (scaled_width, scaled_height),
                                                       interpolation=cv2.INTER_LINEAR)
    return padded, ratio


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices of the boxes kept, best first: each kept box drops the lower-scored ones that
    overlap it by more than the threshold (intersection over union, inclusive pixels)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + INCLUSIVE_PIXEL) * (y2 - y1 + INCLUSIVE_PIXEL)
    order = scores.argsort()[::-1]
    kept = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        kept.append(int(best))
        overlap_width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + INCLUSIVE_PIXEL)
        overlap_height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + INCLUSIVE_PIXEL)
        intersection = overlap_width * overlap_height
        order = rest[intersection / (areas[best] + areas[rest] - intersection) <= iou_threshold]
    return kept


def _detections(detector: Yolox | ExportedDetector, batch: torch.Tensor) -> Detections:
    if isinstance(detector, ExportedDetector):
        return detector(batch)
    levels = detector(batch)
    return decode_detections([tuple(t.float() for t in level) for level in levels], detector.strides)


def detect_people(image_rgb: np.ndarray, detector: Yolox | ExportedDetector) -> np.ndarray:
    """Person boxes (n, 4), x1 y1 x2 y2 in image pixels, most confident first."""
    return detect_boxes(image_rgb, detector, (PERSON_CLASS,))


def detect_boxes(image_rgb: np.ndarray, detector: Yolox | ExportedDetector, classes: Sequence[int]) -> np.ndarray:
    """Boxes (n, 4) of the COCO `classes`, x1 y1 x2 y2 in image pixels: class by class in the
    order given, each class's most confident first. Per class (cv_ox_det.py's multiclass_nms, then
    its class and score filter): candidates above 0.1, NMS, kept above 0.3."""
    detector_input, ratio = letterbox(image_rgb)
    with torch.no_grad():
        detections = _detections(detector, image_batch(detector_input, detector))
    all_boxes = to_numpy(detections.boxes[0]) / ratio
    class_scores = to_numpy(detections.class_scores[0])
    found = []
    for class_index in classes:
        scores = class_scores[:, class_index]
        candidates = scores > CANDIDATE_SCORE_THRESHOLD
        boxes, scores = all_boxes[candidates], scores[candidates]
        kept = non_maximum_suppression(boxes, scores, NMS_IOU_THRESHOLD)
        found.append(boxes[kept][scores[kept] > BOX_SCORE_THRESHOLD])
    boxes = np.concatenate(found)
    return boxes[has_area(boxes)]


def has_area(boxes: np.ndarray) -> np.ndarray:
    """Which boxes (n, 4) have a positive width and height. YOLOX sizes are exp(delta) x stride,
    which underflows to 0 for a very negative delta (seen with random weights, and possible in
    fp16); such a box holds nobody, and its crop would divide by its zero size (mmpose and DWPose
    pass it on and crop garbage)."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def person_crop_box(box_xyxy: np.ndarray, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(centre, size) of the image region cropped for one person: the box padded by 1.25, then
    grown along one side to the network input's aspect ratio (never shrunk)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    width, height = (x2 - x1) * PERSON_BOX_PADDING, (y2 - y1) * PERSON_BOX_PADDING
    aspect = input_size[0] / input_size[1]
    size = np.array([width, width / aspect]) if width > height * aspect else np.array([height * aspect, height])
    return centre, size


def crop_matrix(centre: np.ndarray, size: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """The 2×3 affine map from image to crop pixels: the region's centre to the crop's centre,
    scaled uniformly (the region already has the crop's aspect)."""
    scale = input_size[0] / size[0]
    return np.array([[scale, 0.0, input_size[0] / 2 - scale * centre[0]],
                     [0.0, scale, input_size[1] / 2 - scale * centre[1]]])


def crop_person(image_rgb: np.ndarray, centre: np.ndarray, size: np.ndarray,
                input_size: tuple[int, int]) -> np.ndarray:
    """uint8 HxWx3 RGB image -> the person's normalised crop, float32 3×height×width."""
    crop = cv2.warpAffine(image_rgb, crop_matrix(centre, size, input_size), tuple(input_size),
                          flags=cv2.INTER_LINEAR)
    return ((crop - POSE_MEAN) / POSE_STD).astype(np.float32).transpose(2, 0, 1)


def keypoints_to_image(keypoints: np.ndarray, centre: np.ndarray, size: np.ndarray,
                       input_size: tuple[int, int]) -> np.ndarray:
    """Crop pixels (..., 2) -> image pixels: the inverse of `crop_matrix`."""
    return keypoints / np.asarray(input_size) * size + centre - size / 2


def estimate_keypoints(image_rgb: np.ndarray, boxes: np.ndarray, network: Rtmpose | ExportedPose
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Each box's keypoints (DWPose: 133) in image pixels (n, k, 2) and their scores (n, k), from
    uint8 RGB and boxes (n, 4) x1 y1 x2 y2; the crops run in batches of POSE_CROPS_PER_BATCH."""
    input_size = network.input_size
    regions = [person_crop_box(box, input_size) for box in boxes]
    parameter = next(network.parameters())
    logits = []
    for start in range(0, len(regions), POSE_CROPS_PER_BATCH):
        crops = np.stack([crop_person(image_rgb, centre, size, input_size)
                          for centre, size in regions[start:start + POSE_CROPS_PER_BATCH]])
        with torch.no_grad():
            logits.append(network(torch.from_numpy(crops).to(parameter.device, parameter.dtype)))
    x_logits, y_logits = (torch.cat(parts).float() for parts in zip(*logits))
    crop_keypoints, scores = (to_numpy(t) for t in simcc_maximum(x_logits, y_logits))
    keypoints = np.stack([keypoints_to_image(points, centre, size, input_size)
                          for points, (centre, size) in zip(crop_keypoints, regions)])
    return keypoints, scores


def _point(xy: np.ndarray, width: int, height: int) -> Point:
    return float(xy[0]) / width, float(xy[1]) / height


def _points_at_or_above(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int) -> list[Point | None]:
    return [_point(xy, width, height) if score >= KEYPOINT_SCORE_THRESHOLD else None
            for xy, score in zip(keypoints, scores)]


def wholebody_to_pose(keypoints: np.ndarray, scores: np.ndarray, width: int, height: int) -> Pose:
    """One person's 133 keypoints (image pixels) and scores -> an OpenPose `Pose` (fractions of
    the image). The neck, which COCO lacks, is the shoulders' midpoint when both are kept."""
    coco = {name: index for index, name in enumerate(COCO_BODY_PARTS)}
    shoulders = [coco["left_shoulder"], coco["right_shoulder"]]
    body: list[Point | None] = []
    for name in BODY_PARTS:
        if name == "neck":
            both = all(scores[index] > KEYPOINT_SCORE_THRESHOLD for index in shoulders)
            body.append(_point(keypoints[shoulders].mean(axis=0), width, height) if both else None)
        else:
            index = coco[name]
            body.append(_point(keypoints[index], width, height) if scores[index] > KEYPOINT_SCORE_THRESHOLD else None)
    face = slice(FACE_START, FACE_START + WHOLEBODY_FACE_POINTS)
    left, right = (slice(start, start + HAND_POINTS) for start in (LEFT_HAND_START, RIGHT_HAND_START))
    return Pose(body=body,
                left_hand=_points_at_or_above(keypoints[left], scores[left], width, height),
                right_hand=_points_at_or_above(keypoints[right], scores[right], width, height),
                face=_points_at_or_above(keypoints[face], scores[face], width, height))


def wholebody_poses(image_rgb: np.ndarray, networks: DWPoseNetworks) -> list[Pose]:
    """Everyone DWPose finds in a uint8 RGB image, as OpenPose poses (fractions of its size)."""
    boxes = detect_people(image_rgb, networks.detector)
    if len(boxes) == 0:
        return []
    keypoints, scores = estimate_keypoints(image_rgb, boxes, networks.pose)
    height, width = image_rgb.shape[:2]
    return [wholebody_to_pose(points, point_scores, width, height) for points, point_scores in zip(keypoints, scores)]


def dwpose(
    image: np.ndarray,
    networks: DWPoseNetworks,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    include_body: bool = True,
    include_hand: bool = True,
    include_face: bool = True,
) -> tuple[np.ndarray, dict[str, Any]]:
    """(pose map uint8 HxWx3 at the image's size, OpenPose-format keypoints in its pixels), as
    `openpose()` returns them. Every part is estimated at once; the include flags choose what is
    drawn and written (a part left out is absent from the keypoints too)."""
    def kept_parts(pose: Pose) -> Pose:
        return Pose(body=pose.body if include_body else [None] * len(pose.body),
                    left_hand=pose.left_hand if include_hand else None,
                    right_hand=pose.right_hand if include_hand else None,
                    face=pose.face if include_face else None)

    return poses_at_resolution(image, resolution, lambda rgb: [kept_parts(pose) for pose in wholebody_poses(rgb, networks)],
                               include_body, include_hand, include_face)
