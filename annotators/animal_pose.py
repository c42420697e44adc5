"""Animal Pose: the poses of animals (AP-10K's 17 keypoints) drawn for animal OpenPose ControlNets.

As comfyui_controlnet_aux's "AnimalPose Estimator" (`dwpose/animalpose.py`), with DWPose's
top-down steps (annotators/dwpose.py):

1. YOLOX-L, DWPose's detector and files, finds COCO's ten animal classes (bird, cat, dog, horse,
   sheep, cow, elephant, bear, zebra, giraffe): class by class, NMS within each class, boxes
   scored above 0.3 (`dwpose.detect_boxes`). An animal two classes claim is found twice, as there;
2. RTMPose-m trained on AP-10K (`rtmpose-m_ap10k_256.onnx`) places 17 keypoints on each box's
   crop, 256×256, with DWPose's padding, warp, normalisation and SimCC decoding
   (`dwpose.estimate_keypoints`);
3. each animal is drawn as 17 lines of 5 px in comfyui_controlnet_aux's colours, at the detect
   resolution, whatever the keypoints' scores (there is no threshold there: every animal found
   has a whole skeleton).

Keypoints come back in comfyui_controlnet_aux's AP-10K format: {"version": "ap10k", "animals":
[[[x, y, score] x 17] per animal], "canvas_width", "canvas_height"}, here in the image's pixels
(there: the detect resolution's), scores clipped to 0..1. The format, the skeleton and its drawing
are in annotators/ap10k.py, which Draw Pose Keypoints shares.

Weights: `yolox_l.onnx` (or mmdet's YOLOX-L checkpoint) as for DWPose, and the AP-10K model
`rtmpose-m_ap10k_256.onnx` that comfyui_controlnet_aux fetches from huggingface.co/hr16/UnJIT-DWPose,
run as a graph of torch operations. Its TorchScript twin (`*_bs5.torchscript.pt`, that pack's
default) is not read: loading one runs the code it holds.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .ap10k import AP10K_KEYPOINTS, Animal, animals_to_json, draw_animals
from .dwpose import (DETECTOR_FILES, DETECTOR_ONNX, DETECTOR_WEIGHTS, DWPoseNetworks, ExportedPose, detect_boxes,
                     estimate_keypoints, exported_rtmpose, find_network_files, load_detector, placed_network)
from .dwpose import WEIGHTS_REPOS as DWPOSE_WEIGHTS_REPOS
from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution, to_rgb_uint8
from .weights import BadWeightsError

POSE_ONNX = "rtmpose-m_ap10k_256.onnx"
POSE_FILES = (POSE_ONNX,)
WEIGHTS_REPOS = {DETECTOR_ONNX: DWPOSE_WEIGHTS_REPOS[DETECTOR_ONNX],
                 DETECTOR_WEIGHTS: DWPOSE_WEIGHTS_REPOS[DETECTOR_WEIGHTS],
                 POSE_ONNX: "hr16/UnJIT-DWPose"}

# COCO's animal classes, bird (14) to giraffe (23): animalpose.py's detect_classes.
ANIMAL_CLASSES = tuple(range(14, 24))


def load_animal_pose(folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     detector_file: str = DETECTOR_ONNX, pose_file: str = POSE_ONNX) -> DWPoseNetworks:
    """YOLOX-L (one of DETECTOR_FILES) and the AP-10K RTMPose-m (POSE_ONNX), in eval mode; both
    files are found before either is read."""
    detector_path, pose_path = find_network_files(
        "Animal Pose", folders, ((detector_file, DETECTOR_FILES), (pose_file, POSE_FILES)), WEIGHTS_REPOS)
    detector = load_detector(detector_path)
    pose = exported_rtmpose(pose_path)
    check_keypoint_count(placed_keypoints(pose))  # now, not only once an animal is found
    return DWPoseNetworks(detector=placed_network(detector, device, dtype), pose=placed_network(pose, device, dtype))


def placed_keypoints(pose: ExportedPose) -> int:
    """How many keypoints an RTMPose export places: its x logits (batch x keypoints x bins) for one
    black crop. Exports need not declare that size (torch's leave it symbolic), so it is run."""
    width, height = pose.input_size
    with torch.no_grad():
        x_logits, _ = pose(torch.zeros(1, 3, height, width, dtype=pose.graph.float_dtype()))
    return x_logits.shape[1]


def check_keypoint_count(count: int) -> None:
    """Refuse, by name, a pose network that does not place AP-10K's 17 keypoints."""
    if count != len(AP10K_KEYPOINTS):
        raise BadWeightsError(
            f"the pose file places {count} keypoints, not AP-10K's {len(AP10K_KEYPOINTS)}: Animal Pose needs "
            f"{POSE_ONNX} (DWPose's whole-body file is for people)")


def find_animals(image_rgb: np.ndarray, networks: DWPoseNetworks) -> list[Animal]:
    """Every animal found in a uint8 RGB image: its AP-10K keypoints in the image's pixels and
    their scores."""
    boxes = detect_boxes(image_rgb, networks.detector, ANIMAL_CLASSES)
    if len(boxes) == 0:
        return []
    keypoints, scores = estimate_keypoints(image_rgb, boxes, networks.pose)
    check_keypoint_count(keypoints.shape[1])
    return list(zip(keypoints, scores))


def animal_pose(image: np.ndarray, networks: DWPoseNetworks, resolution: int | None = DEFAULT_DETECT_RESOLUTION
                ) -> tuple[np.ndarray, dict[str, Any]]:
    """(pose map uint8 HxWx3 at the image's size, AP-10K keypoints in its pixels): the animals
    found and drawn at the detect resolution."""
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    found: list[Animal] = []

    def detect(detect_rgb: np.ndarray) -> np.ndarray:
        detect_height, detect_width = detect_rgb.shape[:2]
        animals = find_animals(detect_rgb, networks)
        to_image = np.array([width / detect_width, height / detect_height])
        found.extend((keypoints * to_image, scores) for keypoints, scores in animals)
        return draw_animals(animals, detect_height, detect_width)

    pose_map = run_at_resolution(rgb, resolution, detect)
    return pose_map, animals_to_json(found, width, height)
