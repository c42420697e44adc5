"""OpenPose annotator against controlnet-aux 0.0.10 (the oracle: ControlNet v1.1's code) and
against poses whose right answer is known.

Random weights give meaningless heatmaps, so the networks are compared on raw outputs, and the
decoding / drawing on synthetic heatmaps and PAFs built from known skeletons. The oracle's
classes are constructed directly (never from_pretrained: nothing is downloaded).
"""

import math
import sys
import types

import cv2
import numpy as np
import pytest
import torch
from skimage import data
from skimage.color import hsv2rgb

from annotators.openpose import (BodyPoseNetwork, OpenPoseNetworks, Pose, draw_poses, load_openpose,
                                 openpose, poses_to_json)
from annotators.openpose.body import LIMB_PAF_CHANNELS, LIMBS, body_maps, decode_body
from annotators.openpose.hand_face import face_box, face_points, hand_boxes, hand_points, label_blobs
from annotators.openpose.inference import network_input, pad_to_stride, scale_like_v11
from annotators.openpose.networks import FACE_WEIGHTS, BODY_WEIGHTS, HAND_WEIGHTS
from annotators.weights import BadWeightsError

oracle_body = pytest.importorskip("controlnet_aux.open_pose.body")
from controlnet_aux import open_pose as oracle  # noqa: E402
from controlnet_aux.open_pose import face as oracle_face  # noqa: E402
from controlnet_aux.open_pose import hand as oracle_hand  # noqa: E402
from controlnet_aux.open_pose import util as oracle_util  # noqa: E402
from controlnet_aux.open_pose.model import bodypose_model, handpose_model  # noqa: E402

PUBLISHED_FILES = {BODY_WEIGHTS: bodypose_model, HAND_WEIGHTS: handpose_model,
                   FACE_WEIGHTS: oracle_face.FaceNet}


def published_state_dict(network_class, seed: int) -> dict:
    """Random He-normal weights under the published (flat) key names. He scaling keeps the
    activations alive through ~30 ReLU layers, so the comparison is not of near-zero maps."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):  # shapes only: skips the slow default initialisation
        shapes = network_class().state_dict()
    state = {}
    for key, value in shapes.items():
        flat = key if network_class is oracle_face.FaceNet else key.split(".", 1)[1]  # drop model0. etc.
        if key.endswith("weight"):
            fan_in = value.shape[1] * value.shape[2] * value.shape[3]
            state[flat] = torch.randn(value.shape, generator=generator) * math.sqrt(2.0 / fan_in)
        else:
            state[flat] = torch.randn(value.shape, generator=generator) * 0.05
    return state


@pytest.fixture(scope="module")
def models_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("annotators")
    for seed, (file_name, network_class) in enumerate(PUBLISHED_FILES.items()):
        # Stored as float16 (the real files are float32): half the disk traffic, and both
        # loaders cast to their parameters' dtype exactly.
        state = {key: value.half() for key, value in published_state_dict(network_class, seed).items()}
        torch.save(state, folder / file_name)
    return folder


@pytest.fixture(scope="module")
def networks(models_folder):
    return load_openpose([str(models_folder)], "cpu", torch.float32, hands=True, face=True)


@pytest.fixture(scope="module")
def oracle_networks(models_folder):
    """The oracle's own loaders (Body / Hand / Face read the file, rename, load strictly)."""
    return types.SimpleNamespace(body=oracle_body.Body(str(models_folder / BODY_WEIGHTS)),
                                 hand=oracle_hand.Hand(str(models_folder / HAND_WEIGHTS)),
                                 face=oracle_face.Face(str(models_folder / FACE_WEIGHTS)))


def small_astronaut_bgr(height: int, width: int) -> np.ndarray:
    """Small (the networks cost seconds per call on a CPU) and not square (catches transposes)."""
    rgb = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb[:, :, ::-1])


def relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# --- networks ------------------------------------------------------------------------------------

def test_preprocessing_equals_oracle():
    bgr = small_astronaut_bgr(300, 290)  # 290 wide: not a multiple of 8, so it is padded
    scale = 0.5 * 368 / bgr.shape[0]
    theirs_padded, pad = oracle_util.padRightDownCorner(oracle_util.smart_resize_k(bgr, scale, scale), 8, 128)
    theirs = np.transpose(np.float32(theirs_padded[:, :, :, None]), (3, 2, 0, 1)) / 256 - 0.5
    ours_padded, pad_bottom, pad_right = pad_to_stride(scale_like_v11(bgr, scale))
    assert (pad_bottom, pad_right) == (pad[2], pad[3]) and pad_right > 0
    np.testing.assert_array_equal(network_input(ours_padded).numpy(), theirs)


def test_networks_equal_oracle_on_a_photo(networks, oracle_networks):
    """The same files loaded by the oracle's loaders and by ours give the same raw maps. The body
    sees 184 rows as in use (0.5 x boxsize 368); hand and face get a smaller crop for speed."""
    body_batch = network_input(small_astronaut_bgr(184, 72))
    crop_batch = network_input(small_astronaut_bgr(80, 64))
    with torch.no_grad():
        pairs = list(zip(networks.body(body_batch), oracle_networks.body.model(body_batch.clone())))
        pairs.append((networks.hand(crop_batch), oracle_networks.hand.model(crop_batch.clone())))
        pairs.append((networks.face(crop_batch), oracle_networks.face.model(crop_batch.clone())[-1]))
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape and theirs.abs().max() > 1e-3  # alive, not all zero
        assert relative_error(ours.numpy(), theirs.numpy()) < 1e-4
    assert [p[0].shape[1] for p in pairs] == [38, 19, 22, 71]


class RecordedOutputs(torch.nn.Module):
    """Replays one forward of a network, so two pipelines can share it without paying twice."""

    def __init__(self, outputs):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.outputs = outputs

    def forward(self, x):
        return self.outputs


def test_body_maps_and_people_equal_oracle_on_real_network_output(networks, monkeypatch):
    """Random weights still give many heatmap peaks and PAF-linked "people" (3 here): the
    oracle's image-sized heatmaps (caught where it smooths them) and decoded people equal ours."""
    bgr = small_astronaut_bgr(256, 120)  # the body network sees it at 184 x 86 -> padded 184 x 88
    scaled, _, _ = pad_to_stride(scale_like_v11(bgr, 0.5 * 368 / 256))
    with torch.no_grad():
        replay = RecordedOutputs(networks.body(network_input(scaled)))
    seen = []
    real_filter = oracle_body.gaussian_filter
    monkeypatch.setattr(oracle_body, "gaussian_filter", lambda m, sigma: seen.append(m.copy()) or real_filter(m, sigma=sigma))
    their_body = oracle_body.Body.__new__(oracle_body.Body)
    their_body.model = replay
    candidate, subset = their_body(bgr)
    heatmaps, pafs = body_maps(replay, bgr)
    assert heatmaps.shape == (256, 120, 19) and pafs.shape == (256, 120, 38) and len(subset) >= 2
    np.testing.assert_allclose(heatmaps[:, :, :18], np.stack(seen, axis=2), rtol=0, atol=1e-4 * np.abs(seen).max())
    assert_same_people(decode_body(heatmaps, pafs), candidate, subset)


# --- synthetic people ------------------------------------------------------------------------

# Two stick figures (x, y) on a 240x200 canvas, all 18 keypoints, limbs short enough that
# v1.1's distance prior does not penalise them.
PERSON_A = [(60, 40), (60, 60), (45, 60), (40, 80), (38, 100), (75, 60), (80, 80), (82, 100),
            (50, 100), (48, 125), (47, 150), (70, 100), (72, 125), (73, 150), (55, 35), (65, 35),
            (50, 38), (70, 38)]
PERSON_B = [(x + 110, y + 20) for x, y in PERSON_A]
CANVAS_H, CANVAS_W = 200, 240  # multiples of 8: the oracle pads nothing
PEAK_SIGMA = 2.0
PAF_HALF_WIDTH = 2.0


def synthetic_maps(people):
    """float32 heatmaps (Gaussian bump of height 1 per keypoint) and PAFs (unit vector along
    each limb within PAF_HALF_WIDTH pixels of it)."""
    ys, xs = np.mgrid[0:CANVAS_H, 0:CANVAS_W].astype(np.float64)
    heatmaps = np.zeros((CANVAS_H, CANVAS_W, 19), np.float32)
    pafs = np.zeros((CANVAS_H, CANVAS_W, 38), np.float32)
    for person in people:
        for part, point in enumerate(person):
            if point is not None:
                x, y = point
                heatmaps[:, :, part] += np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * PEAK_SIGMA ** 2))
        for (a, b), (cx, cy) in zip(LIMBS, LIMB_PAF_CHANNELS):
            if person[a] is None or person[b] is None:
                continue
            (x1, y1), (x2, y2) = person[a], person[b]
            length = math.hypot(x2 - x1, y2 - y1)
            ux, uy = (x2 - x1) / length, (y2 - y1) / length
            along = (xs - x1) * ux + (ys - y1) * uy
            across = np.abs((xs - x1) * uy - (ys - y1) * ux)
            band = (along >= 0) & (along <= length) & (across <= PAF_HALF_WIDTH)
            pafs[band, cx], pafs[band, cy] = ux, uy
    heatmaps[:, :, 18] = np.clip(1 - heatmaps[:, :, :18].max(axis=2), 0, 1)  # background
    return heatmaps, pafs


class MapsStub(torch.nn.Module):
    """Stands in for the body network: returns given maps (as [1, C, H, W])."""

    def __init__(self, heatmaps, pafs):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.outputs = (torch.from_numpy(pafs.transpose(2, 0, 1)[None].copy()),
                        torch.from_numpy(heatmaps.transpose(2, 0, 1)[None].copy()))

    def forward(self, x):
        return self.outputs


def oracle_decode(heatmaps, pafs, monkeypatch):
    """Run the oracle's Body.__call__ with the network replaced by the maps and its resizes by
    the identity, so its decoder sees exactly these arrays."""
    monkeypatch.setattr(oracle_util, "smart_resize_k", lambda x, fx, fy: x)
    monkeypatch.setattr(oracle_util, "smart_resize", lambda x, s: x)
    body = oracle_body.Body.__new__(oracle_body.Body)
    body.model = MapsStub(heatmaps, pafs)
    return body(np.zeros((CANVAS_H, CANVAS_W, 3), np.uint8))


def assert_same_people(ours, candidate, subset):
    assert len(ours) == len(subset)
    for person, row in zip(ours, subset):
        expected = [None if i < 0 else tuple(candidate[int(i)][:3]) for i in row[:18]]
        assert [None if k is None else k[:2] for k in person.keypoints] == [None if e is None else e[:2] for e in expected]
        np.testing.assert_allclose([k[2] for k in person.keypoints if k], [e[2] for e in expected if e], rtol=1e-12)
        assert person.part_count == row[19]
        assert person.total_score == pytest.approx(row[18], rel=1e-12)


def test_decode_two_people_equals_known_skeletons_and_oracle(monkeypatch):
    heatmaps, pafs = synthetic_maps([PERSON_A, PERSON_B])
    ours = decode_body(heatmaps.astype(np.float64), pafs.astype(np.float64))
    candidate, subset = oracle_decode(heatmaps, pafs, monkeypatch)
    assert_same_people(ours, candidate, subset)
    found = sorted([[k[:2] for k in person.keypoints] for person in ours])
    assert found == sorted([PERSON_A, PERSON_B])
    for person in ours:
        assert person.part_count == 18
        assert all(k[2] == pytest.approx(1.0, abs=1e-6) for k in person.keypoints)  # bump height


def test_decode_drops_missing_keypoints_and_small_fragments(monkeypatch):
    # Person A without its left arm (5, 6, 7); person B reduced to nose-neck-eye (3 parts: dropped).
    partial_a = [None if i in (5, 6, 7) else p for i, p in enumerate(PERSON_A)]
    tiny_b = [PERSON_B[i] if i in (0, 1, 14) else None for i in range(18)]
    heatmaps, pafs = synthetic_maps([partial_a, tiny_b])
    ours = decode_body(heatmaps.astype(np.float64), pafs.astype(np.float64))
    assert_same_people(ours, *oracle_decode(heatmaps, pafs, monkeypatch))
    assert len(ours) == 1
    assert [None if k is None else k[:2] for k in ours[0].keypoints] == \
        [None if i in (5, 6, 7) else p for i, p in enumerate(PERSON_A)]


# --- hands and faces ---------------------------------------------------------------------------

def oracle_body_result(keypoints):
    return oracle_body.BodyResult([None if k is None else oracle_body.Keypoint(*k) for k in keypoints], 0.0, 0)


@pytest.mark.parametrize("shift", [(0, 0), (-55, -30), (150, 140)])  # inside, clipped top-left, bottom-right
def test_hand_and_face_boxes_equal_oracle(shift):
    keypoints = [(x + shift[0], y + shift[1], 1.0) for x, y in PERSON_A]
    height, width = 200, 240
    detection = types.SimpleNamespace(keypoints=keypoints)
    their_hands = oracle_util.handDetect(oracle_body_result(keypoints), np.zeros((height, width, 3)))
    assert [(*box, left) for box, left in hand_boxes(detection, height, width)] == their_hands
    assert face_box(detection, height, width) == oracle_util.faceDetect(oracle_body_result(keypoints),
                                                                        np.zeros((height, width, 3)))
    if shift == (0, 0):  # by hand: left wrist (82,100), elbow (80,80), shoulder (75,60)
        forearm, upper = math.hypot(2, 20), math.hypot(5, 20)
        side = 1.5 * max(forearm, 0.9 * upper)
        assert hand_boxes(detection, height, width)[0] == (
            (int(82 + 0.33 * 2 - side / 2), int(100 + 0.33 * 20 - side / 2), int(side)), True)


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
def test_blobs_are_numbered_as_scikit_image_numbers_them(density):
    """v1.1 picks the strongest blob by label number on ties, so the numbering must match too."""
    from skimage.measure import label

    mask = np.random.default_rng(int(density * 100)).random((61, 67)) < density
    labels, count = label_blobs(mask)
    expected, expected_count = label(mask, return_num=True, connectivity=2)
    assert count == expected_count and count > 1
    assert np.array_equal(labels, expected)


def test_hand_points_equal_oracle_and_known(monkeypatch):
    heatmaps = np.zeros((128, 128, 22))
    ys, xs = np.mgrid[0:128, 0:128]
    known = {}
    for part in range(21):
        if part in (4, 9):
            continue  # not found
        x, y = 10 + 5 * part, 20 + 4 * part
        heatmaps[:, :, part] = np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8.0)
        known[part] = (x, y)
    # Part 0 gets a second, taller but much smaller blob: the blob with the larger sum wins.
    heatmaps[:, :, 0] *= 0.6
    heatmaps[100, 100, 0] = 1.0
    heatmaps[:, :, 0] += 0.3 * np.exp(-((xs - 100) ** 2 + (ys - 100) ** 2) / 2.0) * (np.abs(xs - 100) + np.abs(ys - 100) > 0)
    crop_size = 96
    ours = hand_points(heatmaps, crop_size, crop_size)
    assert ours == [None if p not in known else (int(known[p][0] * crop_size / 128), int(known[p][1] * crop_size / 128))
                    for p in range(21)]

    # The oracle, with its network and resizes replaced so that its average is these heatmaps.
    monkeypatch.setattr(oracle_util, "smart_resize",
                        lambda x, s: heatmaps.copy() if s == (128, 128) else np.zeros((int(s[0]), int(s[1]), 3)))
    monkeypatch.setattr(oracle_util, "smart_resize_k", lambda x, fx, fy: x)
    hand = oracle_hand.Hand.__new__(oracle_hand.Hand)
    hand.model = lambda batch: torch.zeros(1, 22, batch.shape[2] // 8, batch.shape[3] // 8)
    hand.model.parameters = lambda: iter([torch.zeros(1)])
    theirs = hand(np.zeros((crop_size, crop_size, 3), np.uint8))
    assert [None if tuple(p) == (0, 0) else tuple(p) for p in theirs.tolist()] == ours


def test_face_points_equal_oracle_and_known():
    heatmaps = np.zeros((71, 60, 80), np.float32)
    known = [(5 + p % 10 * 7, 3 + p // 10 * 8) for p in range(70)]
    for p, (x, y) in enumerate(known):
        heatmaps[p, y, x] = 0.9
        heatmaps[p, y, x + 1] = 0.5
    theirs = oracle_face.Face.compute_peaks_from_heatmaps(None, heatmaps)  # background empty: skipped
    assert face_points(heatmaps) == known == [tuple(p) for p in theirs.tolist()]
    heatmaps[3] = 0.01  # below the threshold: None in place (the oracle would shift later points)
    assert face_points(heatmaps) == known[:3] + [None] + known[4:]


# --- drawing and JSON -----------------------------------------------------------------------------

@pytest.fixture
def matplotlib_colours(monkeypatch):
    """The oracle's hand colours use matplotlib's hsv_to_rgb; matplotlib is not installed, so
    scikit-image's hsv2rgb (an independent implementation) stands in for it."""
    colors = types.SimpleNamespace(hsv_to_rgb=lambda hsv: hsv2rgb(np.asarray(hsv, float)[None, None])[0, 0])
    monkeypatch.setitem(sys.modules, "matplotlib", types.SimpleNamespace(colors=colors))


def known_poses(height, width):
    rng = np.random.default_rng(5)
    body_a = [(x / width, y / height) for x, y in PERSON_A]
    body_b = [None if i in (4, 10, 16) else (x / width, y / height) for i, (x, y) in enumerate(PERSON_B)]
    hand = [None if i == 7 else (np.float32(rng.uniform(0.05, 0.95)), np.float32(rng.uniform(0.05, 0.95)))
            for i in range(21)]
    face = [None if i % 9 == 0 else (np.float32(rng.uniform(0.05, 0.95)), np.float32(rng.uniform(0.05, 0.95)))
            for i in range(70)]
    return [Pose(body_a, left_hand=hand, right_hand=hand[::-1], face=face), Pose(body_b)]


def to_oracle_poses(poses):
    """Ours -> the oracle's PoseResult; a missing hand / face point becomes (-1, -1) as there."""
    def keypoints(points):
        return None if points is None else [oracle_body.Keypoint(*(p if p is not None else (-1.0, -1.0)))
                                            for p in points]
    return [oracle.PoseResult(oracle_body.BodyResult([None if p is None else oracle_body.Keypoint(*p) for p in pose.body], 0, 0),
                              keypoints(pose.left_hand), keypoints(pose.right_hand), keypoints(pose.face))
            for pose in poses]


@pytest.mark.parametrize("flags", [(True, True, True), (True, False, False), (False, True, True)])
def test_drawing_equals_oracle_pixel_for_pixel(flags, matplotlib_colours):
    height, width = 300, 260
    poses = known_poses(height, width)
    ours = draw_poses(poses, height, width, *flags)
    theirs = oracle.draw_poses(to_oracle_poses(poses), height, width, *flags)
    np.testing.assert_array_equal(ours, theirs)
    assert ours.any()


def test_drawing_colours_by_hand():
    poses = [Pose([(0.5, 0.5)] + [None] * 17, right_hand=[(0.2, 0.2), (0.4, 0.2)] + [None] * 19,
                  face=[(0.8, 0.8)] + [None] * 69)]
    canvas = draw_poses(poses, 100, 100)
    assert tuple(canvas[50, 50]) == (255, 0, 0)        # nose joint: first body colour
    assert tuple(canvas[20, 20]) == (0, 0, 255)        # hand point
    assert tuple(canvas[20, 30]) == (255, 0, 0)        # hand edge 0: hue 0 -> red
    assert tuple(canvas[80, 80]) == (255, 255, 255)    # face point
    assert set(map(tuple, canvas.reshape(-1, 3))) == {(0, 0, 0), (255, 0, 0), (0, 0, 255), (255, 255, 255)}


def test_json_structure_and_values():
    poses = [Pose([(0.25, 0.5)] + [None] * 17, left_hand=[None] * 20 + [(0.5, 0.75)],
                  face=[(0.1, 0.2)] + [None] * 69)]
    result = poses_to_json(poses, width=400, height=200)
    assert result == {
        "people": [{
            "pose_keypoints_2d": [100.0, 100.0, 1.0] + [0.0] * 51,
            "face_keypoints_2d": [40.0, 40.0, 1.0] + [0.0] * 207,
            "hand_left_keypoints_2d": [0.0] * 60 + [200.0, 150.0, 1.0],
            "hand_right_keypoints_2d": [],
        }],
        "canvas_width": 400, "canvas_height": 200,
    }
    assert poses_to_json([], 7, 9) == {"people": [], "canvas_width": 7, "canvas_height": 9}


# --- the whole annotator --------------------------------------------------------------------------

class LowResolutionStub(torch.nn.Module):
    """A body "network" that returns the synthetic maps shrunk to 1/8 of its input, as a real
    one would: the whole pipeline (resizes, decoding, drawing) then runs on them."""

    def __init__(self, heatmaps, pafs):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.maps = np.concatenate([pafs, heatmaps], axis=2)

    def forward(self, x):
        size = (x.shape[3] // 8, x.shape[2] // 8)  # OpenCV resizes at most 4 channels at once here
        small = np.stack([cv2.resize(self.maps[:, :, c], size, interpolation=cv2.INTER_AREA)
                          for c in range(self.maps.shape[2])])
        small = torch.from_numpy(small[None])
        return small[:, :38], small[:, 38:]


def test_openpose_end_to_end_equals_oracle_detector(matplotlib_colours):
    heatmaps, pafs = synthetic_maps([PERSON_A, PERSON_B])
    stub = LowResolutionStub(heatmaps * 2.0, pafs)  # taller bumps survive the 1/8 shrink
    photo = np.full((CANVAS_H, CANVAS_W, 3), 90, np.uint8)
    pose_map, keypoints = openpose(photo, OpenPoseNetworks(body=stub), resolution=None)

    body = oracle_body.Body.__new__(oracle_body.Body)
    body.model = stub
    detector = oracle.OpenposeDetector(body)
    their_poses = detector.detect_poses(photo)
    np.testing.assert_array_equal(pose_map, oracle.draw_poses(their_poses, CANVAS_H, CANVAS_W, True, False, False))
    assert len(keypoints["people"]) == 2 and pose_map.any()
    for person, theirs in zip(keypoints["people"], their_poses):
        expected = [v for k in theirs.body.keypoints
                    for v in ((k.x * CANVAS_W, k.y * CANVAS_H, 1.0) if k else (0.0, 0.0, 0.0))]
        np.testing.assert_allclose(person["pose_keypoints_2d"], expected, atol=1e-9)
    # One network-map pixel covers 200 / 23 = 8.7 image pixels here, so shrinking and
    # re-enlarging may move a bump by about half of one.
    found = sorted(np.array(p["pose_keypoints_2d"]).reshape(18, 3)[:, :2].tolist() for p in keypoints["people"])
    assert np.abs(np.array(found) - np.array(sorted([PERSON_A, PERSON_B]))).max() <= 5


def test_openpose_map_comes_back_at_input_size(networks):
    photo = data.astronaut()[:300, :100]  # detected at 192 x 64, so the body network is cheap
    pose_map, keypoints = openpose(photo, OpenPoseNetworks(body=networks.body), resolution=64)
    assert pose_map.shape == (300, 100, 3) and pose_map.dtype == np.uint8
    assert (keypoints["canvas_width"], keypoints["canvas_height"]) == (100, 300)


def test_openpose_needs_the_hand_network_when_asked():
    with pytest.raises(ValueError, match=r"^include_hand needs the hand network; load it with "
                                         r"load_openpose\(\.\.\., hands=True\)$"):
        openpose(data.astronaut(), OpenPoseNetworks(body=BodyPoseNetwork()), include_hand=True)


# --- loading ----------------------------------------------------------------------------------

def test_loader_reads_published_names_in_both_layouts(models_folder, tmp_path, networks):
    aux_layout = tmp_path / "ckpts" / "lllyasviel" / "Annotators"
    aux_layout.mkdir(parents=True)
    for file_name in PUBLISHED_FILES:
        (aux_layout / file_name).symlink_to(models_folder / file_name)
    loaded = load_openpose([str(tmp_path)], "cpu", torch.float16, hands=True, face=True)
    for ours, reference, key_count in ((loaded.body, networks.body, 184), (loaded.hand, networks.hand, 104),
                                       (loaded.face, networks.face, 104)):
        assert not ours.training and len(ours.state_dict()) == key_count
        for (key, value), (reference_key, reference_value) in zip(ours.state_dict().items(),
                                                                  reference.state_dict().items()):
            assert key == reference_key and value.dtype == torch.float16
            assert torch.equal(value.float(), reference_value)


def test_loader_is_strict(models_folder, tmp_path):
    state = torch.load(models_folder / BODY_WEIGHTS, weights_only=True)
    state["model0.conv1_1.weight"] = state.pop("conv1_1.weight")  # a nested (unpublished) name
    torch.save(state, tmp_path / BODY_WEIGHTS)
    with pytest.raises(BadWeightsError, match=r"does not hold BodyPoseNetwork weights: 1 keys missing "
                                              r"\(e\.g\. \['conv1_1\.weight'\]\), 1 unexpected "
                                              r"\(e\.g\. \['model0\.conv1_1\.weight'\]\)"):
        load_openpose([str(tmp_path)])
