"""Reading OpenPose-format keypoints back and drawing them (Draw Pose Keypoints): the inverse of
`poses_to_json`, checked by round trips through it and against `draw_poses` on the same poses;
AP-10K frames likewise through `animals_to_json` and `draw_animals` (whose drawing
tests/annotators/test_animal_pose.py checks against comfyui_controlnet_aux's)."""

import json

import numpy as np
import pytest

from annotators.ap10k import AP10K_KEYPOINTS, animals_to_json, draw_animals
from annotators.openpose import Pose, draw_poses, poses_to_json
from annotators.openpose.keypoints_json import draw_keypoint_frames, frames_from_text, keypoint_frames, poses_from_json

WIDTH, HEIGHT = 96, 64


def grid_poses(seed: int) -> list[Pose]:
    """Two people whose points sit on a 1/32 grid (exact in binary, so pixels → fractions → pixels
    is exact), about a fifth of them missing; one has hands and a face."""
    rng = np.random.default_rng(seed)

    def points(count: int) -> list:
        return [None if rng.random() < 0.2 else (rng.integers(1, 32) / 32, rng.integers(1, 32) / 32)
                for _ in range(count)]

    return [Pose(points(18), left_hand=points(21), right_hand=points(21), face=points(70)), Pose(points(18))]


def test_reading_is_the_inverse_of_writing():
    poses = grid_poses(0)
    assert poses_from_json(poses_to_json(poses, WIDTH, HEIGHT), (WIDTH, HEIGHT)) == poses


def test_a_frame_draws_as_its_poses_do():
    poses = grid_poses(1)
    (drawn,) = draw_keypoint_frames([poses_to_json(poses, WIDTH, HEIGHT)])
    assert np.array_equal(drawn, draw_poses(poses, HEIGHT, WIDTH))
    assert drawn.any()


def test_width_and_height_rescale_the_canvas():
    poses = grid_poses(2)
    (drawn,) = draw_keypoint_frames([poses_to_json(poses, WIDTH, HEIGHT)], 2 * WIDTH, 2 * HEIGHT)
    assert np.array_equal(drawn, draw_poses(poses, 2 * HEIGHT, 2 * WIDTH))


def test_parts_can_be_left_out_of_the_drawing():
    poses = grid_poses(3)
    (drawn,) = draw_keypoint_frames([poses_to_json(poses, WIDTH, HEIGHT)], draw_body_parts=False, draw_faces=False)
    assert np.array_equal(drawn, draw_poses(poses, HEIGHT, WIDTH, draw_body_parts=False, draw_faces=False))


def test_cmu_openpose_files_without_a_canvas_take_the_given_size():
    poses = grid_poses(4)
    frame = poses_to_json(poses, WIDTH, HEIGHT)
    del frame["canvas_width"], frame["canvas_height"]
    (drawn,) = draw_keypoint_frames([frame], WIDTH, HEIGHT)
    assert np.array_equal(drawn, draw_poses(poses, HEIGHT, WIDTH))


def test_confidence_zero_or_below_is_missing_and_any_positive_one_is_found():
    frame = {"people": [{"pose_keypoints_2d": [48, 32, 0.3, 10, 10, 0, 20, 20, -1] + [0] * 45}],
             "canvas_width": WIDTH, "canvas_height": HEIGHT}
    (pose,) = poses_from_json(frame, (WIDTH, HEIGHT))
    assert pose.body == [(0.5, 0.5)] + [None] * 17
    assert pose.left_hand is None and pose.right_hand is None and pose.face is None


def test_dwpose_faces_of_68_points_are_read():
    face = [(i / 128 + 0.25, 0.5) for i in range(68)]
    frame = poses_to_json([Pose([None] * 18, face=face)], WIDTH, HEIGHT)
    assert len(frame["people"][0]["face_keypoints_2d"]) == 3 * 68
    (pose,) = poses_from_json(frame, (WIDTH, HEIGHT))
    assert pose.face == face


def test_text_holds_one_frame_or_a_list_of_them():
    frame = poses_to_json(grid_poses(5), WIDTH, HEIGHT)
    assert frames_from_text(json.dumps(frame)) == [frame]
    assert frames_from_text(json.dumps([frame, frame])) == [frame, frame]


def test_keypoints_come_from_the_socket_or_the_text():
    frame = poses_to_json(grid_poses(6), WIDTH, HEIGHT)
    assert keypoint_frames([frame, frame], "") == [frame, frame]
    assert keypoint_frames(None, json.dumps(frame)) == [frame]
    assert keypoint_frames([frame], "  \n") == [frame]
    with pytest.raises(ValueError) as both:
        keypoint_frames([frame], json.dumps(frame))
    assert str(both.value) == "give the keypoints either as pose_keypoint or as keypoints_json text, not both"
    with pytest.raises(ValueError) as neither:
        keypoint_frames(None, " ")
    assert str(neither.value) == (
        "no keypoints: connect a pose_keypoint output (OpenPose's) or paste OpenPose-format JSON into keypoints_json"
    )


@pytest.mark.parametrize("frames, size, message", [
    ([], (0, 0), "the keypoints hold no frames"),
    ([{"people": []}], (0, 0),
     "keypoints frame 0 has no canvas_width and canvas_height (CMU OpenPose's files have none): set the width and "
     "height its pixel coordinates refer to"),
    ([{"people": []}], (64, 0), "set both width and height, or neither (0 = the canvas size in the keypoints); got 64×0"),
    ([{"people": [], "canvas_width": 64}], (0, 0),
     "keypoints frame 0: canvas_width and canvas_height must both be positive numbers, got 64 and None"),
    ([{"canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0 is not an OpenPose frame: expected an object with a 'people' list"),
    ([[1, 2, 3]], (0, 0), "keypoints frame 0 is not an OpenPose frame: expected an object with a 'people' list"),
    ([{"version": "ap10k", "animals": {}, "canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0: 'animals' must be a list of animals, each 17 [x, y, score] points"),
    ([{"version": "ap10k", "animals": [[[1, 2, 0.5]] * 16], "canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0, animal 0: expected 17 [x, y, score] points (AP-10K), got 16"),
    ([{"version": "ap10k", "animals": [[[1, 2, 0.5]] * 3 + [[1, float("inf"), 0.5]] + [[1, 2, 0.5]] * 13],
       "canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0, animal 0, point 3: expected [x, y, score] as finite numbers, got [1, inf, 0.5]"),
    ([{"version": "ap10k", "animals": []}], (0, 0),
     "keypoints frame 0 has no canvas_width and canvas_height (CMU OpenPose's files have none): set the width and "
     "height its pixel coordinates refer to"),
    ([{"people": ["nobody"], "canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0, person 0: expected an object with pose_keypoints_2d and so on"),
    ([{"people": [{"pose_keypoints_2d": [1, 2, 1] * 17}], "canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0, person 0: pose_keypoints_2d has 51 numbers; expected 54 (18 points) as x, y, confidence, "
     "or none"),
    ([{"people": [{"face_keypoints_2d": [1, 2, 1] * 69}], "canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0, person 0: face_keypoints_2d has 207 numbers; expected 210 (70 points) or 204 (68 points) as "
     "x, y, confidence, or none"),
    ([{"people": [{"hand_left_keypoints_2d": "left"}], "canvas_width": 64, "canvas_height": 64}], (0, 0),
     "keypoints frame 0, person 0: hand_left_keypoints_2d must be a list of numbers (x, y, confidence per point)"),
    ([{"people": [{"pose_keypoints_2d": [1, 2, 1] * 17 + [float("nan"), 2, 1]}], "canvas_width": 64, "canvas_height": 64}],
     (0, 0), "keypoints frame 0, person 0: pose_keypoints_2d, point 17: (nan, 2, confidence 1) is not a number; a point "
     "is x, y, confidence (0 for a missing point)"),
    ([{"people": [{"hand_right_keypoints_2d": [1, 2, float("nan")] * 21}], "canvas_width": 64, "canvas_height": 64}],
     (0, 0), "keypoints frame 0, person 0: hand_right_keypoints_2d, point 0: (1, 2, confidence nan) is not a number; a "
     "point is x, y, confidence (0 for a missing point)"),
    ([{"people": [], "canvas_width": float("inf"), "canvas_height": 64}], (0, 0),
     "keypoints frame 0: canvas_width and canvas_height must both be positive numbers, got inf and 64"),
    ([{"people": [], "canvas_width": 64, "canvas_height": 64}, {"people": [], "canvas_width": 32, "canvas_height": 64}],
     (0, 0), "the keypoint frames' canvases differ (64×64, 32×64): set width and height to draw them all at one size"),
])
def test_bad_keypoints_are_refused_with_what_to_fix(frames, size, message):
    with pytest.raises(ValueError) as error:
        draw_keypoint_frames(frames, *size)
    assert str(error.value) == message


def test_text_that_is_not_json_is_refused():
    with pytest.raises(ValueError) as error:
        frames_from_text("{people: []}")
    assert str(error.value) == (
        "the keypoints JSON is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    )


def random_animals(seed: int, count: int = 2) -> list:
    """Animals whose keypoints spread over (and a little past) the WIDTH x HEIGHT canvas, with
    scores of every kind (animals_to_json clips them to 0..1)."""
    rng = np.random.default_rng(seed)
    return [(rng.uniform(-5, [WIDTH + 5, HEIGHT + 5], size=(len(AP10K_KEYPOINTS), 2)),
             rng.uniform(-0.5, 1.5, size=len(AP10K_KEYPOINTS))) for _ in range(count)]


def test_animal_frames_are_drawn_as_the_animal_pose_node_draws_them():
    animals = random_animals(1)
    frame = animals_to_json(animals, WIDTH, HEIGHT)
    # at the canvas size, the same points: the node's own map (every animal whole, whatever its scores)
    (drawn,) = draw_keypoint_frames([json.loads(json.dumps(frame))])
    expected = draw_animals(animals, HEIGHT, WIDTH)
    assert expected.any()
    np.testing.assert_array_equal(drawn, expected)
    # at another size, the points scaled from the canvas
    (twice,) = draw_keypoint_frames([frame], 2 * WIDTH, 2 * HEIGHT)
    np.testing.assert_array_equal(twice, draw_animals([(k * 2, s) for k, s in animals], 2 * HEIGHT, 2 * WIDTH))
    # a frame naming no canvas reads its pixels at the size given
    no_canvas = {key: value for key, value in frame.items() if not key.startswith("canvas")}
    np.testing.assert_array_equal(draw_keypoint_frames([no_canvas], WIDTH, HEIGHT)[0], expected)
    # include_body off leaves the animals out; hands and faces do not apply
    assert not draw_keypoint_frames([frame], draw_body_parts=False)[0].any()
    np.testing.assert_array_equal(draw_keypoint_frames([frame], draw_hands=False, draw_faces=False)[0], expected)


def test_people_and_animal_frames_are_drawn_in_one_batch():
    people = poses_to_json(grid_poses(3), WIDTH, HEIGHT)
    animals = animals_to_json(random_animals(2, count=1), WIDTH, HEIGHT)
    maps = draw_keypoint_frames([people, animals, {"animals": [], "canvas_width": WIDTH, "canvas_height": HEIGHT}])
    np.testing.assert_array_equal(maps[0], draw_poses(grid_poses(3), HEIGHT, WIDTH))
    np.testing.assert_array_equal(maps[1], draw_animals(random_animals(2, count=1), HEIGHT, WIDTH))
    assert not maps[2].any()
