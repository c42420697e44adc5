"""DWPose's top-down steps (annotators/dwpose.py) against their references.

- The crop region, warp and normalisation against mmpose 1.3.2 (bbox_xyxy2cs, TopdownAffine,
  get_warp_matrix, PoseDataPreprocessor's statistics), which DWPose's pipelines run.
- Keypoints back to the image: the exact inverse of the crop's warp.
- The detector stage (letterbox, decoding, person scores, NMS, thresholds) and the keypoint
  stage (crops, network, decoding, back to the image) against DWPose's ONNX
  pipeline as comfyui_controlnet_aux runs it (`dw_onnx/cv_ox_pose.py`, shipped identically in
  the `dwpose` 1.0.1 package and loaded here by path; `cv_ox_det.py` for the detector), their
  ONNX sessions replaced by our networks.
- The 133 keypoints as an OpenPose pose map: against controlnet-aux 0.0.10's DWposeDetector
  (its Wholebody conversion and drawing) with mmdet's and mmpose's inference replaced by the
  keypoints the test chooses.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from skimage import data

from annotators import dwpose as dwpose_module  # for monkeypatching its constants
from annotators.dwpose import (COCO_BODY_PARTS, DETECTOR_INPUT_SIZE, DETECTOR_ONNX, DETECTOR_WEIGHTS, FACE_START, POSE_ONNX, POSE_WEIGHTS,
                               DWPoseNetworks, ExportedDetector, ExportedPose,
                               detect_people, dwpose, estimate_keypoints, load_dwpose, KEYPOINT_SCORE_THRESHOLD, LEFT_HAND_START,
                               POSE_MEAN, POSE_STD, RIGHT_HAND_START, WHOLEBODY_FACE_POINTS,
                               BOX_SCORE_THRESHOLD, _detections, crop_matrix, crop_person, has_area,
                               keypoints_to_image, letterbox, person_crop_box, wholebody_to_pose)
from annotators.networks_common import image_batch
from annotators.openpose.drawing import draw_poses
from annotators.rtmpose_network import (DWPOSE_INPUT_SIZE, SIMCC_SPLIT_RATIO, WHOLEBODY_KEYPOINTS,
                                        Rtmpose, RtmposeConfig)
from annotators.weights import BadWeightsError, MissingWeightsError
from annotators.yolox_network import Yolox, YoloxConfig
from workflows.random_models import MegviiYoloxExport, save_detector_onnx, save_pose_onnx

from .openmmlab import import_openmmlab
from .random_learned import (RTMPOSE_TEST_CROP, RTMPOSE_TEST_WIDTHS, YOLOX_TEST_FACTORS, adjust, assert_loaded,
                             random_state_dict)

PHOTO = data.astronaut()  # 512x512 RGB
WIDE_BOX = np.array([40.0, 100.5, 400.0, 260.0])   # wider than 288:384 after padding
TALL_BOX = np.array([150.0, 20.0, 260.5, 480.0])   # taller
MATRIX_TOLERANCE = 1e-5  # mmpose builds the matrix from float32 points


def mmpose_crop(box: np.ndarray) -> dict:
    import_openmmlab("mmpose.datasets.transforms")
    from mmpose.datasets.transforms import TopdownAffine
    from mmpose.structures.bbox import bbox_xyxy2cs
    centre, scale = bbox_xyxy2cs(box[None], padding=1.25)
    results = dict(img=PHOTO.copy(), bbox_center=centre, bbox_scale=scale)
    return TopdownAffine(input_size=DWPOSE_INPUT_SIZE).transform(results)


@pytest.mark.parametrize("box", [WIDE_BOX, TALL_BOX], ids=["wide", "tall"])
def test_crop_region_equals_mmpose(box):
    expected = mmpose_crop(box)
    centre, size = person_crop_box(box, DWPOSE_INPUT_SIZE)
    np.testing.assert_allclose(centre, expected["bbox_center"][0], rtol=1e-12)
    np.testing.assert_allclose(size, expected["bbox_scale"][0], rtol=1e-6)  # mmpose keeps float32
    assert size[0] / size[1] == pytest.approx(DWPOSE_INPUT_SIZE[0] / DWPOSE_INPUT_SIZE[1])


@pytest.mark.parametrize("box", [WIDE_BOX, TALL_BOX], ids=["wide", "tall"])
def test_crop_warp_equals_mmpose(box):
    import_openmmlab("mmpose.structures.bbox")
    from mmpose.structures.bbox import get_warp_matrix
    expected = mmpose_crop(box)
    centre, size = person_crop_box(box, DWPOSE_INPUT_SIZE)
    reference_matrix = get_warp_matrix(centre, size, 0.0, output_size=DWPOSE_INPUT_SIZE)
    matrix = crop_matrix(centre, size, DWPOSE_INPUT_SIZE)
    assert np.abs(matrix - reference_matrix).max() <= MATRIX_TOLERANCE * np.abs(reference_matrix).max()
    crop = crop_person(PHOTO, centre, size, DWPOSE_INPUT_SIZE)
    assert crop.shape == (3, DWPOSE_INPUT_SIZE[1], DWPOSE_INPUT_SIZE[0]) and crop.dtype == np.float32
    expected_crop = ((expected["img"] - POSE_MEAN) / POSE_STD).transpose(2, 0, 1)
    # OpenCV samples bilinearly in 1/32-pixel fixed point, so the float32 rounding of mmpose's
    # matrix could move a sample by one step; for these boxes no pixel differs.
    np.testing.assert_allclose(crop, expected_crop, rtol=0, atol=1e-5)  # float32 normalisation


def test_constants_are_dwposes_config():
    """Input size, statistics and SimCC split ratio as DWPose's own config (shipped in
    controlnet-aux) sets them, read with mmengine."""
    import_openmmlab("mmengine.config")
    from mmengine.config import Config
    dwpose = pytest.importorskip("controlnet_aux.dwpose")
    config = Config.fromfile(Path(dwpose.__file__).parent / "dwpose_config" / "dwpose-l_384x288.py")
    assert tuple(config.codec.input_size) == DWPOSE_INPUT_SIZE
    assert config.codec.simcc_split_ratio == SIMCC_SPLIT_RATIO
    assert config.model.head.out_channels == WHOLEBODY_KEYPOINTS
    assert config.model.data_preprocessor.bgr_to_rgb  # the network reads RGB
    np.testing.assert_array_equal(config.model.data_preprocessor.mean, POSE_MEAN)
    np.testing.assert_array_equal(config.model.data_preprocessor.std, POSE_STD)


@pytest.mark.parametrize("box", [WIDE_BOX, TALL_BOX], ids=["wide", "tall"])
def test_keypoints_to_image_inverts_the_crop(box):
    centre, size = person_crop_box(box, DWPOSE_INPUT_SIZE)
    image_points = np.random.default_rng(0).uniform(0, 512, size=(20, 2))
    matrix = crop_matrix(centre, size, DWPOSE_INPUT_SIZE)
    crop_points = image_points @ matrix[:, :2].T + matrix[:, 2]
    np.testing.assert_allclose(keypoints_to_image(crop_points, centre, size, DWPOSE_INPUT_SIZE), image_points,
                               rtol=1e-12, atol=1e-9)


def random_people(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints (count, 133, 2) inside 512×512, scores in [0, 1] with some exactly at 0.3."""
    rng = np.random.default_rng(seed)
    keypoints = rng.uniform(8, 504, size=(count, WHOLEBODY_KEYPOINTS, 2))
    keypoints[1:, :, 0] = keypoints[1:, :, 0] / 3 + 340  # later people on the right: no overlap
    keypoints[0, :, 0] = keypoints[0, :, 0] / 3
    scores = rng.uniform(0, 1, size=(count, WHOLEBODY_KEYPOINTS))
    scores[:, ::9] = KEYPOINT_SCORE_THRESHOLD
    return keypoints, scores


def controlnet_aux_dwpose_map(monkeypatch, keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """controlnet-aux's DWposeDetector on a 512×512 image (no resizing), its detector and pose
    estimator replaced by these keypoints."""
    import_openmmlab("mmengine.structures")
    from mmengine.structures import InstanceData
    wholebody = pytest.importorskip("controlnet_aux.dwpose.wholebody")
    from controlnet_aux.dwpose import DWposeDetector

    class Found:
        pred_instances = InstanceData(bboxes=torch.zeros(len(keypoints), 4), scores=torch.ones(len(keypoints)),
                                      labels=torch.zeros(len(keypoints), dtype=torch.long))

    class Merged:
        pred_instances = InstanceData(keypoints=keypoints.copy(), keypoint_scores=scores.copy())

    monkeypatch.setattr(wholebody, "inference_detector", lambda model, image: Found(), raising=False)
    monkeypatch.setattr(wholebody, "nms", lambda boxes, threshold: np.arange(len(boxes)), raising=False)
    monkeypatch.setattr(wholebody, "inference_topdown", lambda model, image, boxes=None: [], raising=False)
    monkeypatch.setattr(wholebody, "merge_data_samples", lambda results: Merged(), raising=False)
    estimator = wholebody.Wholebody.__new__(wholebody.Wholebody)
    estimator.detector = estimator.pose_estimator = None
    detector = DWposeDetector.__new__(DWposeDetector)
    detector.pose_estimation = estimator
    return np.asarray(detector(PHOTO, detect_resolution=512, image_resolution=512, output_type="np"))


@pytest.mark.parametrize("people", [1, 2])
def test_pose_map_equals_controlnet_aux_dwpose(monkeypatch, people):
    keypoints, scores = random_people(people, seed=people)
    expected = controlnet_aux_dwpose_map(monkeypatch, keypoints, scores)
    poses = [wholebody_to_pose(k, s, 512, 512) for k, s in zip(keypoints, scores)]
    actual = draw_poses(poses, 512, 512)
    assert (expected > 0).mean() > 0.01  # something was drawn
    np.testing.assert_array_equal(actual, expected)


def test_neck_needs_both_shoulders():
    keypoints, scores = random_people(1, seed=3)
    keypoints, scores = keypoints[0], scores[0]
    left, right = COCO_BODY_PARTS.index("left_shoulder"), COCO_BODY_PARTS.index("right_shoulder")
    scores[[left, right]] = 0.9
    pose = wholebody_to_pose(keypoints, scores, 512, 512)
    np.testing.assert_allclose(np.array(pose.body[1]) * 512, (keypoints[left] + keypoints[right]) / 2)
    scores[right] = KEYPOINT_SCORE_THRESHOLD
    assert wholebody_to_pose(keypoints, scores, 512, 512).body[1] is None


def test_wholebody_layout_is_mmposes_dataset_definition():
    """Body names, face, and which hand comes first, from mmpose's COCO-WholeBody metainfo."""
    mmpose = import_openmmlab("mmpose")
    from mmengine.config import Config
    path = Path(mmpose.__file__).parent / ".mim" / "configs" / "_base_" / "datasets" / "coco_wholebody.py"
    names = [point["name"] for _, point in sorted(Config.fromfile(path).dataset_info.keypoint_info.items())]
    assert len(names) == WHOLEBODY_KEYPOINTS
    assert tuple(names[:len(COCO_BODY_PARTS)]) == COCO_BODY_PARTS
    assert names[FACE_START] == "face-0" and names[FACE_START + WHOLEBODY_FACE_POINTS - 1] == "face-67"
    assert names[LEFT_HAND_START] == "left_hand_root" and names[RIGHT_HAND_START] == "right_hand_root"
    assert names[RIGHT_HAND_START - 1] == "left_pinky_finger4" and names[-1] == "right_pinky_finger4"


def test_hands_and_face_come_from_their_slices():
    keypoints, scores = random_people(1, seed=4)
    keypoints, scores = keypoints[0], np.ones(WHOLEBODY_KEYPOINTS)
    pose = wholebody_to_pose(keypoints, scores, 512, 512)
    for points, start in ((pose.face, FACE_START), (pose.left_hand, LEFT_HAND_START),
                          (pose.right_hand, RIGHT_HAND_START)):
        np.testing.assert_allclose(np.array(points) * 512, keypoints[start:start + len(points)])


# --- the keypoint stage against DWPose's ONNX pipeline ------------------------------------------

def dwpose_onnx_module(name: str):
    """`dwpose/dw_onnx/<name>.py` from the dwpose package, without its package __init__ (which
    imports plotting and scipy modules the functions do not use)."""
    spec = importlib.util.find_spec("dwpose")
    if spec is None:
        pytest.skip("the dwpose package (oracle) is not installed")
    path = Path(spec.origin).parent / "dw_onnx" / f"{name}.py"
    module_spec = importlib.util.spec_from_file_location(f"dwpose_oracle_{name}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


class NetworkInferenceSession:
    """Stands in for an onnxruntime session (the oracle checks the class name for that)."""

    def __init__(self, network: torch.nn.Module) -> None:
        self.network = network

    def get_inputs(self):
        return [SimpleNamespace(name="input")]

    def run(self, output_names, feeds):
        with torch.no_grad():
            return [t.numpy() for t in self.network(torch.from_numpy(feeds["input"]))]


def tiny_rtmpose(seed: int, input_size: tuple[int, int] = DWPOSE_INPUT_SIZE) -> Rtmpose:
    """A narrow, shallow CSPNeXt with random weights (DWPose's input size and keypoints unless
    told), its SimCC logits sharpened so that keypoints score above 0.3 and are drawn."""
    network = Rtmpose(RtmposeConfig(**RTMPOSE_TEST_WIDTHS, input_size=input_size)).eval()
    network.load_state_dict(adjust("dwpose", random_state_dict(network.state_dict(), seed)))
    return network


def test_keypoint_stage_equals_dwpose_onnx_pipeline():
    oracle = dwpose_onnx_module("cv_ox_pose")
    network = tiny_rtmpose(seed=7)
    boxes = np.stack([WIDE_BOX, TALL_BOX, np.array([300.0, 300.0, 330.0, 420.0])])
    expected_keypoints, expected_scores = oracle.inference_pose(NetworkInferenceSession(network), boxes, PHOTO,
                                                                model_input_size=DWPOSE_INPUT_SIZE)
    keypoints, scores = estimate_keypoints(PHOTO, boxes, network)
    assert keypoints.shape == (3, WHOLEBODY_KEYPOINTS, 2) and (scores > 0).mean() > 0.2
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_allclose(keypoints, expected_keypoints, rtol=1e-12, atol=1e-9)


class BatchSizeRecorder(torch.nn.Module):
    """`network`, noting the batch sizes it is called with."""

    def __init__(self, network: Rtmpose) -> None:
        super().__init__()
        self.network, self.input_size, self.batch_sizes = network, network.input_size, []

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.batch_sizes.append(len(crops))
        return self.network(crops)


def test_a_crowd_runs_in_bounded_batches_with_the_same_keypoints(monkeypatch):
    """Crops run POSE_CROPS_PER_BATCH at a time (memory bounded on crowded photos), with the
    keypoints of DWPose's own pipeline, which runs them one by one."""
    oracle = dwpose_onnx_module("cv_ox_pose")
    network = tiny_rtmpose(seed=7, input_size=RTMPOSE_TEST_CROP)
    boxes = np.stack([WIDE_BOX + shift for shift in range(0, 50, 10)])
    expected_keypoints, expected_scores = oracle.inference_pose(NetworkInferenceSession(network), boxes, PHOTO,
                                                                model_input_size=RTMPOSE_TEST_CROP)
    monkeypatch.setattr(dwpose_module, "POSE_CROPS_PER_BATCH", 2)
    recorder = BatchSizeRecorder(network)
    keypoints, scores = estimate_keypoints(PHOTO, boxes, recorder)
    assert recorder.batch_sizes == [2, 2, 1]
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keypoints, expected_keypoints, rtol=1e-12, atol=1e-9)


def tiny_yolox(seed: int) -> Yolox:
    """A narrow YOLOX with random weights that finds tens of overlapping "people" (random_learned.adjust)."""
    network = Yolox(YoloxConfig.scaled(*YOLOX_TEST_FACTORS)).eval()
    network.load_state_dict(adjust("dwpose", random_state_dict(network.state_dict(), seed)))
    return network


def small_networks() -> DWPoseNetworks:
    return DWPoseNetworks(detector=tiny_yolox(seed=8), pose=tiny_rtmpose(seed=7, input_size=RTMPOSE_TEST_CROP))


class MegviiLayoutInferenceSession(NetworkInferenceSession):
    """YOLOX as Megvii exports it to ONNX (workflows.random_models.MegviiYoloxExport)."""

    def run(self, output_names, feeds):
        with torch.no_grad():
            return [MegviiYoloxExport(self.network)(torch.from_numpy(feeds["input"])).numpy()]


@pytest.mark.parametrize("image", [PHOTO, PHOTO[40:340, 10:500]], ids=["square", "wide"])
def test_detector_stage_equals_dwpose_onnx_pipeline(image):
    oracle = dwpose_onnx_module("cv_ox_det")
    network = tiny_yolox(seed=8)
    image = np.ascontiguousarray(image)
    session = MegviiLayoutInferenceSession(network)
    expected = oracle.inference_detector(session, image, detect_classes=[0])
    boxes = detect_people(image, network)
    # Several people kept, out of more confident candidates: NMS had work to do.
    detector_input, _ = oracle.preprocess(image, (640, 640))
    predictions = session.run(None, {"input": detector_input[None]})[0][0]
    confident = int((predictions[:, 4] * predictions[:, 5] > 0.3).sum())
    assert 3 <= len(expected) < confident
    assert boxes.shape == expected.shape
    assert np.isfinite(expected).all()
    # float32 both, the box centre summed in another order
    np.testing.assert_allclose(boxes, expected, rtol=1e-5, atol=1e-3, equal_nan=False)


# --- the whole annotator --------------------------------------------------------------------------

def test_dwpose_equals_the_onnx_pipeline_composed():
    """Detector stage -> keypoint stage (the oracle's) -> OpenPose poses -> comfyui_controlnet_aux's
    per-person drawing order; the image at the detect resolution already, so no resizing."""
    networks = small_networks()
    image = np.ascontiguousarray(PHOTO)
    boxes = dwpose_onnx_module("cv_ox_det").inference_detector(MegviiLayoutInferenceSession(networks.detector), image)
    keypoints, scores = dwpose_onnx_module("cv_ox_pose").inference_pose(
        NetworkInferenceSession(networks.pose), boxes, image, model_input_size=RTMPOSE_TEST_CROP)
    expected = draw_poses([wholebody_to_pose(k, s, 512, 512) for k, s in zip(keypoints, scores)], 512, 512)
    pose_map, keypoints_json = dwpose(image, networks, resolution=512)
    assert len(keypoints_json["people"]) == len(boxes) > 1
    assert (expected > 0).mean() > 0.01
    np.testing.assert_array_equal(pose_map, expected)


def test_include_flags_leave_parts_out_of_map_and_keypoints():
    networks = small_networks()
    image = np.ascontiguousarray(PHOTO[:256, :256])
    everything, everyone = dwpose(image, networks, resolution=256)
    body_only, bodies = dwpose(image, networks, resolution=256, include_hand=False, include_face=False)
    nothing, _ = dwpose(image, networks, resolution=256, include_body=False, include_hand=False, include_face=False)
    assert not nothing.any()
    assert (body_only != everything).any() and body_only.any()
    person = bodies["people"][0]
    assert person["hand_left_keypoints_2d"] == [] and person["face_keypoints_2d"] == []
    assert person["pose_keypoints_2d"] == everyone["people"][0]["pose_keypoints_2d"]
    assert len(everyone["people"][0]["face_keypoints_2d"]) == 3 * WHOLEBODY_FACE_POINTS


def test_nobody_found_gives_an_empty_map():
    networks = small_networks()
    with torch.no_grad():
        for level in range(3):  # no objects anywhere
            networks.detector.bbox_head.multi_level_conv_obj[level].weight.zero_()
            networks.detector.bbox_head.multi_level_conv_obj[level].bias.fill_(-30.0)
    pose_map, keypoints_json = dwpose(PHOTO, networks, resolution=256)
    assert pose_map.shape == PHOTO.shape and not pose_map.any()
    assert keypoints_json["people"] == []


def test_boxes_without_area_are_dropped_before_cropping():
    """Box sizes of exp(-1000) x stride underflow to 0: every confident detection is a point,
    and DWPose finds nobody rather than dividing by a zero box size."""
    networks = small_networks()
    with torch.no_grad():
        for level in range(3):  # an object at every grid point, each a box of size exp(-1000) x stride = 0
            for conv in (networks.detector.bbox_head.multi_level_conv_obj[level],
                         networks.detector.bbox_head.multi_level_conv_cls[level]):
                conv.weight.zero_()
                conv.bias.fill_(30.0)
            reg = networks.detector.bbox_head.multi_level_conv_reg[level]
            reg.weight.zero_()
            reg.bias.copy_(torch.tensor([0.0, 0.0, -1000.0, -1000.0]))
        detections = _detections(networks.detector, image_batch(letterbox(PHOTO)[0], networks.detector))
    boxes = detections.boxes[0].numpy()
    assert (detections.class_scores[0, :, 0] > BOX_SCORE_THRESHOLD).all()  # each one confident...
    assert (boxes[:, 2] == boxes[:, 0]).all() and (boxes[:, 3] == boxes[:, 1]).all()  # ...and a point
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero on the way
        pose_map, keypoints_json = dwpose(PHOTO, networks, resolution=256)
    assert not pose_map.any() and keypoints_json["people"] == []
    assert has_area(np.array([[0, 0, 1, 1], [2, 2, 2, 5], [2, 2, 5, 2], [3, 3, 3, 3]], float)).tolist() == [
        True, False, False, False]


# --- loading the checkpoints ---------------------------------------------------------------------

def save_checkpoints(folder: Path, student_prefix: bool = False) -> tuple[dict, dict]:
    """The two files as their trainers save them: weights under state_dict beside metadata (numpy
    arrays, which plain weights_only refuses), mmdet's EMA buffers, DWPose's student prefix."""
    detector = tiny_yolox(seed=1).state_dict()
    pose = tiny_rtmpose(seed=2).state_dict()
    ema = {"ema_" + key.replace(".", "_"): value.clone() for key, value in list(detector.items())[:3]}
    torch.save({"meta": {"CLASSES": ("person", "bicycle"), "config": "model = dict(type='YOLOX')"},
                "state_dict": {**detector, **ema}, "optimizer": {"state": {}}}, folder / DETECTOR_WEIGHTS)
    saved_pose = {("student." + key if student_prefix else key): value for key, value in pose.items()}
    if student_prefix:
        saved_pose["teacher.backbone.stem.0.conv.weight"] = torch.zeros(3)
    torch.save({"meta": {"dataset_meta": {"sigmas": np.linspace(0.02, 0.1, 5)}}, "state_dict": saved_pose},
               folder / POSE_WEIGHTS)
    return detector, pose


def load_checkpoints(folder: Path) -> DWPoseNetworks:
    return load_dwpose([str(folder)], detector_file=DETECTOR_WEIGHTS, pose_file=POSE_WEIGHTS)


@pytest.mark.parametrize("student_prefix", [False, True], ids=["plain", "distillation"])
def test_load_dwpose_reads_both_checkpoints(tmp_path, student_prefix):
    detector, pose = save_checkpoints(tmp_path, student_prefix)
    networks = load_checkpoints(tmp_path)
    assert_loaded(networks.detector, detector)
    assert_loaded(networks.pose, pose)
    assert networks.pose.config.input_size == DWPOSE_INPUT_SIZE
    for network in (networks.detector, networks.pose):  # on the CPU, convolution weights channels-last (placed_network)
        kernels = [p for p in network.parameters() if p.dim() == 4]
        assert kernels and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)


def test_missing_detector_names_its_address(tmp_path):
    save_checkpoints(tmp_path)
    (tmp_path / DETECTOR_WEIGHTS).unlink()
    with pytest.raises(MissingWeightsError) as error:
        load_checkpoints(tmp_path)
    assert str(error.value) == (
        f"annotator weights '{DETECTOR_WEIGHTS}' not found. Download {DETECTOR_WEIGHTS} from "
        "https://download.openmmlab.com/mmdetection/v2.0/yolox/yolox_l_8x8_300e_coco/ and put it in "
        f"{tmp_path} (looked in: {tmp_path}). Nothing is downloaded automatically.")


def test_missing_pose_names_its_hub_repository(tmp_path):
    save_checkpoints(tmp_path)
    (tmp_path / POSE_WEIGHTS).unlink()
    with pytest.raises(MissingWeightsError, match=f"Download {POSE_WEIGHTS} from https://huggingface.co/yzd-v/DWPose "):
        load_checkpoints(tmp_path)


def test_files_swapped_are_refused_by_name(tmp_path):
    save_checkpoints(tmp_path)
    (tmp_path / DETECTOR_WEIGHTS).rename(tmp_path / "detector")
    (tmp_path / POSE_WEIGHTS).rename(tmp_path / DETECTOR_WEIGHTS)
    (tmp_path / "detector").rename(tmp_path / POSE_WEIGHTS)
    with pytest.raises(BadWeightsError, match=f"'{tmp_path / DETECTOR_WEIGHTS}' does not hold YOLOX weights as DWPose uses them"):
        load_checkpoints(tmp_path)


def test_not_a_pose_checkpoint_is_refused(tmp_path):
    save_checkpoints(tmp_path)
    torch.save({"state_dict": {"model0.conv1_1.weight": torch.zeros(1)}}, tmp_path / POSE_WEIGHTS)
    with pytest.raises(BadWeightsError) as error:
        load_checkpoints(tmp_path)
    assert str(error.value) == (
        f"'{tmp_path / POSE_WEIGHTS}' does not hold RTMPose weights (mmpose's layout: backbone., head.; its first "
        "key is 'model0.conv1_1.weight'): use the file published under this name")


# --- the published ONNX files, against onnxruntime running DWPose's ONNX pipeline ----------------

def save_onnx_files(folder: Path, pose_batch_axis: bool = True) -> DWPoseNetworks:
    """`small_networks()` exported as `yolox_l.onnx` (Megvii's layout, fixed 1x3x640x640 input) and
    `dw-ll_ucoco_384.onnx` (free batch, or fixed at 1); returns the networks exported."""
    pytest.importorskip("onnx")  # torch's exporter writes through it
    networks = small_networks()
    save_detector_onnx(networks.detector, folder / DETECTOR_ONNX, DETECTOR_INPUT_SIZE)
    save_pose_onnx(networks.pose, folder / POSE_ONNX, batch_axis=pose_batch_axis)
    return networks


def onnxruntime_session(path: Path):
    onnxruntime = pytest.importorskip("onnxruntime")
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dwpose_onnx")
    save_onnx_files(folder)
    return folder


def test_onnx_files_load_by_default_as_graphs(onnx_folder):
    networks = load_dwpose([str(onnx_folder)])
    assert isinstance(networks.detector, ExportedDetector) and isinstance(networks.pose, ExportedPose)
    assert networks.pose.input_size == RTMPOSE_TEST_CROP and not networks.pose.one_at_a_time
    assert not networks.detector.training and not networks.pose.training


def test_onnx_detector_equals_dwpose_pipeline_on_onnxruntime(onnx_folder):
    """yolox_l.onnx through our graph runner and decoding = through onnxruntime and cv_ox_det.py."""
    image = np.ascontiguousarray(PHOTO[40:340, 10:500])
    expected = dwpose_onnx_module("cv_ox_det").inference_detector(
        onnxruntime_session(onnx_folder / DETECTOR_ONNX), image, detect_classes=[0])
    boxes = detect_people(image, load_dwpose([str(onnx_folder)]).detector)
    assert len(expected) >= 3 and np.isfinite(expected).all()
    assert boxes.shape == expected.shape
    np.testing.assert_allclose(boxes, expected, rtol=1e-5, atol=1e-3)  # float32, sums in other orders


def test_onnx_pose_equals_dwpose_pipeline_on_onnxruntime(onnx_folder):
    boxes = np.stack([WIDE_BOX, TALL_BOX, np.array([300.0, 300.0, 330.0, 420.0])])
    expected_keypoints, expected_scores = dwpose_onnx_module("cv_ox_pose").inference_pose(
        onnxruntime_session(onnx_folder / POSE_ONNX), boxes, PHOTO, model_input_size=RTMPOSE_TEST_CROP)
    keypoints, scores = estimate_keypoints(PHOTO, boxes, load_dwpose([str(onnx_folder)]).pose)
    assert (scores > 0).mean() > 0.2 and (scores > KEYPOINT_SCORE_THRESHOLD).any()
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(keypoints, expected_keypoints)  # the same SimCC bins


def test_dwpose_with_onnx_files_equals_the_onnxruntime_pipeline_composed(onnx_folder):
    image = np.ascontiguousarray(PHOTO)
    boxes = dwpose_onnx_module("cv_ox_det").inference_detector(onnxruntime_session(onnx_folder / DETECTOR_ONNX), image)
    keypoints, scores = dwpose_onnx_module("cv_ox_pose").inference_pose(
        onnxruntime_session(onnx_folder / POSE_ONNX), boxes, image, model_input_size=RTMPOSE_TEST_CROP)
    expected = draw_poses([wholebody_to_pose(k, s, 512, 512) for k, s in zip(keypoints, scores)], 512, 512)
    pose_map, keypoints_json = dwpose(image, load_dwpose([str(onnx_folder)]), resolution=512)
    assert len(keypoints_json["people"]) == len(boxes) > 1
    np.testing.assert_array_equal(pose_map, expected)


def test_pose_graph_for_one_crop_runs_crops_one_by_one(tmp_path, onnx_folder):
    save_onnx_files(tmp_path, pose_batch_axis=False)
    one_by_one = load_dwpose([str(tmp_path)]).pose
    assert one_by_one.one_at_a_time
    boxes = np.stack([WIDE_BOX, TALL_BOX])
    keypoints, scores = estimate_keypoints(PHOTO, boxes, one_by_one)
    batched_keypoints, batched_scores = estimate_keypoints(PHOTO, boxes, load_dwpose([str(onnx_folder)]).pose)
    np.testing.assert_allclose(scores, batched_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(keypoints, batched_keypoints)


def test_onnx_detector_with_checkpoint_pose(tmp_path):
    _, pose = save_checkpoints(tmp_path)
    save_onnx_files(tmp_path)
    networks = load_dwpose([str(tmp_path)], pose_file=POSE_WEIGHTS)
    assert isinstance(networks.detector, ExportedDetector)
    assert_loaded(networks.pose, pose)


def test_missing_onnx_file_names_dwposes_repository(tmp_path):
    save_onnx_files(tmp_path)
    (tmp_path / DETECTOR_ONNX).unlink()
    with pytest.raises(MissingWeightsError) as error:
        load_dwpose([str(tmp_path)])
    assert str(error.value) == (
        f"annotator weights '{DETECTOR_ONNX}' not found. Download {DETECTOR_ONNX} from https://huggingface.co/yzd-v/DWPose "
        f"and put it in {tmp_path} (looked in: {tmp_path}). Nothing is downloaded automatically.")


def test_truncated_onnx_file_is_refused_by_name(tmp_path):
    save_onnx_files(tmp_path)
    data = (tmp_path / POSE_ONNX).read_bytes()
    (tmp_path / POSE_ONNX).write_bytes(data[:len(data) // 2])
    with pytest.raises(BadWeightsError) as error:
        load_dwpose([str(tmp_path)])
    assert str(error.value) == (f"'{POSE_ONNX}' is not a readable ONNX file (a field runs past the end of its "
                                "message): download the file published under this name again")


def test_onnx_files_swapped_are_refused_by_name(tmp_path):
    save_onnx_files(tmp_path)
    (tmp_path / DETECTOR_ONNX).rename(tmp_path / "detector")
    (tmp_path / POSE_ONNX).rename(tmp_path / DETECTOR_ONNX)
    (tmp_path / "detector").rename(tmp_path / POSE_ONNX)
    with pytest.raises(BadWeightsError) as error:
        load_dwpose([str(tmp_path)])
    assert str(error.value) == (f"'{DETECTOR_ONNX}' is not YOLOX as DWPose exports it (its graph takes 1 input(s) and "
                                "gives 2 output(s)): use the file published under this name")


def test_checkpoint_renamed_to_onnx_is_refused(tmp_path):
    save_onnx_files(tmp_path)
    save_checkpoints(tmp_path)
    (tmp_path / POSE_WEIGHTS).rename(tmp_path / POSE_ONNX)
    with pytest.raises(BadWeightsError, match=f"^'{POSE_ONNX}' is not a readable ONNX file"):
        load_dwpose([str(tmp_path)])


def test_unknown_file_choice_is_refused(tmp_path):
    with pytest.raises(ValueError) as error:
        load_dwpose([str(tmp_path)], pose_file="dw-ll_ucoco_384_bs5.torchscript.pt")
    assert str(error.value) == (f"DWPose reads {POSE_ONNX} or {POSE_WEIGHTS}, not 'dw-ll_ucoco_384_bs5.torchscript.pt'")
