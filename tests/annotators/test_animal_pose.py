"""Animal Pose (annotators/animal_pose.py) against comfyui_controlnet_aux's AnimalPose pipeline.

- Boxes: the dwpose package's `cv_ox_det.inference_detector` with comfyui_controlnet_aux's
  `detect_classes` (COCO 14..23), the same file that pack runs, on a small random YOLOX whose
  cat and dog classes fire (and whose person class fires too, which must not count).
- Keypoints: `cv_ox_pose.inference_pose` at the AP-10K model's crop size.
- The map: a transcription of animalpose.py's drawing (`drawBetweenKeypointsList` with its
  1-based keypoint pairs and colour list, written out below as that file has them), which our
  module spells with AP-10K's keypoint names instead.
- The ONNX files: ours run as graphs of torch operations, the oracle's on onnxruntime.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from annotators.animal_pose import ANIMAL_CLASSES, POSE_ONNX, animal_pose, find_animals, load_animal_pose
from annotators.ap10k import AP10K_KEYPOINTS, draw_animals
from annotators.dwpose import (DETECTOR_INPUT_SIZE, DETECTOR_ONNX, DWPoseNetworks, ExportedDetector, ExportedPose,
                               detect_boxes)
from annotators.image import resize_for_detection
from annotators.rtmpose_network import Rtmpose, RtmposeConfig
from annotators.weights import BadWeightsError, MissingWeightsError
from workflows.random_models import save_detector_onnx, save_pose_onnx

from .random_learned import AP10K_TEST_CROP, DWPOSE_PERSON_BIAS, RTMPOSE_TEST_WIDTHS, adjust, random_state_dict
from .test_dwpose import (MegviiLayoutInferenceSession, NetworkInferenceSession, dwpose_onnx_module,
                          onnxruntime_session, tiny_rtmpose, tiny_yolox)

PHOTO = data.astronaut()  # 512x512 RGB
CAT, DOG = 15, 16  # COCO class indices

# comfyui_controlnet_aux dwpose/animalpose.py, AnimalPoseImage.__call__: 1-based pairs, RGB colours.
AUX_KEYPOINT_PAIRS = [(1, 2), (2, 3), (1, 3), (3, 4), (4, 9), (9, 10), (10, 11), (4, 6), (6, 7), (7, 8), (4, 5), (5, 15),
                      (15, 16), (16, 17), (5, 12), (12, 13), (13, 14)]
AUX_COLOURS = [(255, 255, 255), (100, 255, 100), (150, 255, 255), (100, 50, 255), (50, 150, 200), (0, 255, 255),
               (0, 150, 0), (0, 0, 255), (0, 0, 150), (255, 50, 255), (255, 0, 255), (255, 0, 0), (150, 0, 0),
               (255, 255, 100), (0, 150, 0), (255, 255, 0), (150, 150, 150)]


def aux_animal_map(keypoint_sets, height: int, width: int) -> np.ndarray:
    """animalpose.py's drawBetweenKeypointsList for each animal, scale factor 1."""
    pose_img = np.zeros((height, width, 3), dtype=np.uint8)
    for keypoints in keypoint_sets:
        for (first, second), colour in zip(AUX_KEYPOINT_PAIRS, AUX_COLOURS):
            point1, point2 = keypoints[first - 1], keypoints[second - 1]
            cv2.line(pose_img, (int(point1[0]), int(point1[1])), (int(point2[0]), int(point2[1])), colour, int(5 // 1.0))
    return pose_img


NEVER_LOGIT = -30.0


def animal_yolox(seed: int = 8, animals: tuple[int, ...] = (CAT, DOG)):
    """tiny_yolox (which finds tens of people) with the `animals` classes as sure as its person
    class, and no other animal."""
    network = tiny_yolox(seed)
    others = [c for c in ANIMAL_CLASSES if c not in animals]
    with torch.no_grad():
        for classes in network.bbox_head.multi_level_conv_cls:
            classes.bias[list(animals)] += DWPOSE_PERSON_BIAS
            classes.bias[others] = NEVER_LOGIT
    return network


def ap10k_rtmpose(seed: int = 7, keypoints: int = len(AP10K_KEYPOINTS)) -> Rtmpose:
    network = Rtmpose(RtmposeConfig(**RTMPOSE_TEST_WIDTHS, keypoints=keypoints, input_size=AP10K_TEST_CROP)).eval()
    network.load_state_dict(adjust("dwpose", random_state_dict(network.state_dict(), seed)))
    return network


def small_networks() -> DWPoseNetworks:
    return DWPoseNetworks(detector=animal_yolox(), pose=ap10k_rtmpose())


def oracle_keypoints(networks: DWPoseNetworks, image: np.ndarray, detector_session=None, pose_session=None):
    """(boxes, keypoints, scores) from the dwpose package's ONNX pipeline with aux's animal classes."""
    boxes = dwpose_onnx_module("cv_ox_det").inference_detector(
        detector_session or MegviiLayoutInferenceSession(networks.detector), image, detect_classes=list(ANIMAL_CLASSES))
    keypoints, scores = dwpose_onnx_module("cv_ox_pose").inference_pose(
        pose_session or NetworkInferenceSession(networks.pose), boxes, image, model_input_size=AP10K_TEST_CROP)
    return boxes, keypoints, scores


def test_drawing_equals_auxs_for_keypoints_anywhere():
    """Points spread over and past a 200x300 canvas (negative ones truncate toward zero, as int()
    does there), three animals overlapping."""
    rng = np.random.default_rng(0)
    keypoint_sets = rng.uniform((-30.0, -30.0), (330.0, 230.0), size=(3, 17, 2))
    animals = [(keypoints, np.ones(17)) for keypoints in keypoint_sets]
    drawn = draw_animals(animals, 200, 300)
    np.testing.assert_array_equal(drawn, aux_animal_map(keypoint_sets, 200, 300))
    assert len(np.unique(drawn.reshape(-1, 3), axis=0)) == 1 + len(set(AUX_COLOURS))  # every limb shows


def test_animal_boxes_equal_the_onnx_pipeline_with_auxs_animal_classes():
    image = np.ascontiguousarray(PHOTO[40:340, 10:500])
    detector = animal_yolox()
    expected = dwpose_onnx_module("cv_ox_det").inference_detector(
        MegviiLayoutInferenceSession(detector), image, detect_classes=list(ANIMAL_CLASSES))
    people = detect_boxes(image, detector, (0,))
    cats, dogs = (detect_boxes(image, detector, (animal,)) for animal in (CAT, DOG))
    assert len(cats) >= 2 and len(dogs) >= 2 and len(people) >= 2  # several of each, people left out below
    boxes = detect_boxes(image, detector, ANIMAL_CLASSES)
    np.testing.assert_array_equal(boxes, np.concatenate((cats, dogs)))  # class by class, in COCO's order
    assert boxes.shape == expected.shape
    np.testing.assert_allclose(boxes, expected, rtol=1e-5, atol=1e-3)  # float32, sums in other orders


def test_animal_pose_equals_auxs_pipeline_composed():
    """Detector and keypoint stages (the oracle's) -> animalpose.py's drawing; the image at the
    detect resolution already, so no resizing; keypoints with their scores clipped to 0..1."""
    networks = small_networks()
    image = np.ascontiguousarray(PHOTO)
    boxes, keypoints, scores = oracle_keypoints(networks, image)
    pose_map, keypoints_json = animal_pose(image, networks, resolution=512)
    assert len(boxes) > 2 and (aux_animal_map(keypoints, 512, 512) > 0).mean() > 0.01
    np.testing.assert_array_equal(pose_map, aux_animal_map(keypoints, 512, 512))
    assert keypoints_json["version"] == "ap10k"
    assert (keypoints_json["canvas_width"], keypoints_json["canvas_height"]) == (512, 512)
    found = np.array(keypoints_json["animals"])
    assert found.shape == (len(boxes), 17, 3) and (found[..., 2] > 0).any()
    # float32 sums in other orders: the boxes' (as above), the crops' (8 at a time here, one by one there)
    np.testing.assert_allclose(found[..., :2], keypoints, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(found[..., 2], np.clip(scores, 0, 1), rtol=1e-5, atol=1e-5)


def test_keypoints_are_in_the_image_pixels_when_detected_at_another_resolution():
    networks = small_networks()
    image = np.ascontiguousarray(PHOTO[:, :384])  # 512 high, 384 wide: detected at 341 x 256
    pose_map, keypoints_json = animal_pose(image, networks, resolution=256)
    detected = resize_for_detection(image, 256)
    animals = find_animals(detected, networks)
    scale = np.array([384 / detected.shape[1], 512 / detected.shape[0]])
    found = np.array(keypoints_json["animals"])
    assert len(animals) > 0 and pose_map.shape == image.shape
    np.testing.assert_allclose(found[..., :2], np.stack([k for k, _ in animals]) * scale, rtol=1e-12)
    assert (keypoints_json["canvas_width"], keypoints_json["canvas_height"]) == (384, 512)


def test_no_animal_gives_an_empty_map():
    networks = DWPoseNetworks(detector=animal_yolox(animals=()), pose=ap10k_rtmpose())  # it finds people only
    pose_map, keypoints_json = animal_pose(PHOTO, networks, resolution=256)
    assert len(detect_boxes(resize_for_detection(PHOTO, 256), networks.detector, (0,))) > 0
    assert pose_map.shape == PHOTO.shape and not pose_map.any()
    assert keypoints_json["animals"] == []


def test_a_whole_body_pose_network_is_refused_by_name():
    networks = DWPoseNetworks(detector=animal_yolox(), pose=tiny_rtmpose(seed=7, input_size=AP10K_TEST_CROP))
    with pytest.raises(BadWeightsError) as error:
        animal_pose(PHOTO, networks, resolution=256)
    assert str(error.value) == (
        f"the pose file places 133 keypoints, not AP-10K's 17: Animal Pose needs {POSE_ONNX} (DWPose's whole-body "
        "file is for people)")


# --- the ONNX files ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    pytest.importorskip("onnx")  # torch's exporter writes through it
    folder = tmp_path_factory.mktemp("animal_pose_onnx")
    networks = small_networks()
    save_detector_onnx(networks.detector, folder / DETECTOR_ONNX, DETECTOR_INPUT_SIZE)
    save_pose_onnx(networks.pose, folder / POSE_ONNX)
    return folder


def test_onnx_files_run_as_auxs_pipeline_on_onnxruntime(onnx_folder):
    networks = load_animal_pose([str(onnx_folder)])
    assert isinstance(networks.detector, ExportedDetector) and isinstance(networks.pose, ExportedPose)
    assert networks.pose.input_size == AP10K_TEST_CROP
    image = np.ascontiguousarray(PHOTO)
    boxes, keypoints, _ = oracle_keypoints(networks, image, onnxruntime_session(onnx_folder / DETECTOR_ONNX),
                                           onnxruntime_session(onnx_folder / POSE_ONNX))
    pose_map, keypoints_json = animal_pose(image, networks, resolution=512)
    assert len(keypoints_json["animals"]) == len(boxes) > 2
    np.testing.assert_array_equal(pose_map, aux_animal_map(keypoints, 512, 512))


def test_missing_pose_file_names_where_it_is_published(onnx_folder, tmp_path):
    (tmp_path / DETECTOR_ONNX).write_bytes((onnx_folder / DETECTOR_ONNX).read_bytes())
    with pytest.raises(MissingWeightsError) as error:
        load_animal_pose([str(tmp_path)])
    assert str(error.value) == (
        f"annotator weights '{POSE_ONNX}' not found. Download {POSE_ONNX} from https://huggingface.co/hr16/UnJIT-DWPose "
        f"and put it in {tmp_path} (looked in: {tmp_path}). Nothing is downloaded automatically.")


def test_a_whole_body_pose_file_is_refused_when_loaded(onnx_folder, tmp_path):
    # Its graph declares 133 keypoints: refused at once, before any photo (one without animals would
    # otherwise give an empty map and hide the wrong file).
    (tmp_path / DETECTOR_ONNX).write_bytes((onnx_folder / DETECTOR_ONNX).read_bytes())
    save_pose_onnx(tiny_rtmpose(seed=7, input_size=AP10K_TEST_CROP), tmp_path / POSE_ONNX)
    with pytest.raises(BadWeightsError) as error:
        load_animal_pose([str(tmp_path)])
    assert str(error.value) == (
        f"the pose file places 133 keypoints, not AP-10K's 17: Animal Pose needs {POSE_ONNX} (DWPose's whole-body "
        "file is for people)")


def test_other_file_names_are_refused():
    with pytest.raises(ValueError) as error:
        load_animal_pose([], pose_file="dw-ll_ucoco_384.onnx")
    assert str(error.value) == f"Animal Pose reads {POSE_ONNX}, not 'dw-ll_ucoco_384.onnx'"
