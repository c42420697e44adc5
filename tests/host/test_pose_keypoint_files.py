"""Save Pose Keypoints and Load Pose Keypoints in a real ComfyUI: the file written is the frames'
JSON, numbered as ComfyUI numbers images; what is loaded draws the same map as what was saved;
names outside ComfyUI's listings and unreadable keypoints are refused with the file named."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture
def pack(host):
    return host.pack


@pytest.fixture
def folders(host, tmp_path):
    """ComfyUI's input and output folders moved to empty temporary ones for the test."""
    folder_paths = host.folder_paths
    before = folder_paths.get_input_directory(), folder_paths.get_output_directory()
    (tmp_path / "input").mkdir()
    (tmp_path / "output").mkdir()
    folder_paths.set_input_directory(str(tmp_path / "input"))
    folder_paths.set_output_directory(str(tmp_path / "output"))
    yield tmp_path / "input", tmp_path / "output"
    folder_paths.set_input_directory(before[0])
    folder_paths.set_output_directory(before[1])


def node(pack, node_id: str):
    return importlib.import_module(f"{pack.__name__}.nodes.preprocessors").NODE_CLASS_MAPPINGS[node_id]


def frame(shift: float = 0.0) -> dict:
    """One OpenPose frame on a 64 x 48 canvas: a body with its first 8 points found, the rest
    missing (confidence 0)."""
    points = []
    for index in range(18):
        found = index < 8
        points += [10.0 + 5 * index + shift, 8.0 + 3 * index, 1.0] if found else [0.0, 0.0, 0.0]
    return {"people": [{"pose_keypoints_2d": points}], "canvas_width": 64, "canvas_height": 48}


FRAMES = [frame(), frame(shift=4.0)]


def save(pack, prefix: str = "pose_keypoints", **keypoints) -> dict:
    return node(pack, "CNS_SavePoseKeypoints")().save(prefix, **keypoints)


def load(pack, name: str):
    return node(pack, "CNS_LoadPoseKeypoints")().load(name)


def draw(pack, frames) -> torch.Tensor:
    (maps,) = node(pack, "CNS_DrawPoseKeypoints")().draw(0, 0, True, True, True, pose_keypoint=frames)
    return maps


def test_saving_writes_the_frames_numbered_as_comfyui_numbers_images(pack, folders):
    _, output = folders
    first = save(pack, pose_keypoint=FRAMES)
    second = save(pack, keypoints_json=json.dumps(FRAMES[:1]))
    assert first == {"ui": {"text": ["pose_keypoints_00001_.json"]}}
    assert second == {"ui": {"text": ["pose_keypoints_00002_.json"]}}
    assert json.loads((output / "pose_keypoints_00001_.json").read_text()) == FRAMES
    assert json.loads((output / "pose_keypoints_00002_.json").read_text()) == FRAMES[:1]


def test_a_prefix_may_name_a_subfolder_but_not_leave_the_output_folder(pack, folders):
    _, output = folders
    assert save(pack, "poses/dancer", pose_keypoint=FRAMES) == {"ui": {"text": ["poses/dancer_00001_.json"]}}
    assert (output / "poses" / "dancer_00001_.json").is_file()
    with pytest.raises(Exception, match="Saving image outside the output folder is not allowed"):
        save(pack, "../escaped", pose_keypoint=FRAMES)
    assert not list(output.parent.glob("escaped*"))


def test_what_is_loaded_draws_the_map_of_what_was_saved(pack, folders):
    save(pack, "poses/dancer", pose_keypoint=FRAMES)
    files = node(pack, "CNS_LoadPoseKeypoints").INPUT_TYPES()["required"]["file"][0]
    assert files == ["poses/dancer_00001_.json [output]"]
    frames, text = load(pack, files[0])
    assert frames == FRAMES and json.loads(text) == FRAMES
    maps = draw(pack, frames)
    assert maps.shape == (2, 48, 64, 3) and maps.amax() > 0
    assert torch.equal(maps, draw(pack, FRAMES))


def test_input_files_are_listed_first_and_one_frame_is_a_list_of_one(pack, folders):
    inputs, output = folders
    (inputs / "b.json").write_text(json.dumps(FRAMES[1]))
    (inputs / "sub").mkdir()
    (inputs / "sub" / "a.json").write_text(json.dumps(FRAMES))
    (inputs / "photo.png").write_bytes(b"")
    (output / "c.json").write_text(json.dumps(FRAMES))
    cls = node(pack, "CNS_LoadPoseKeypoints")
    assert cls.INPUT_TYPES()["required"]["file"][0] == ["b.json", "sub/a.json", "c.json [output]"]
    frames, _ = load(pack, "b.json")
    assert frames == [FRAMES[1]]


def test_a_name_outside_the_listing_is_refused_before_anything_is_opened(pack, folders):
    inputs, _ = folders
    (inputs.parent / "secret.json").write_text(json.dumps(FRAMES))
    cls = node(pack, "CNS_LoadPoseKeypoints")
    message = (f"no pose keypoints file '../secret.json' in ComfyUI's input or output folder: put the .json file in "
               f"{inputs} and pick it from the list")
    assert cls.VALIDATE_INPUTS("../secret.json") == message
    with pytest.raises(ValueError) as refused:
        load(pack, "../secret.json")
    assert str(refused.value) == message
    assert cls.VALIDATE_INPUTS("../secret.json [output]") == message.replace("'../secret.json'", "'../secret.json [output]'")


def test_unreadable_keypoints_are_refused_with_the_file_named(pack, folders):
    inputs, _ = folders
    (inputs / "broken.json").write_text('{"people": [')
    with pytest.raises(ValueError) as refused:
        load(pack, "broken.json")
    try:
        json.loads('{"people": [')
    except json.JSONDecodeError as error:
        expected = f"broken.json: the keypoints JSON is not valid JSON: {error}"
    assert str(refused.value) == expected

    bad = frame()
    bad["people"][0]["pose_keypoints_2d"][3] = math.nan  # point 1's x
    (inputs / "nan.json").write_text(json.dumps([frame(), bad]))
    with pytest.raises(ValueError, match=r"^nan\.json: keypoints frame 1, person 0: pose_keypoints_2d, point 1: "):
        load(pack, "nan.json")


def test_saving_refuses_what_could_not_be_drawn_and_writes_nothing(pack, folders):
    _, output = folders
    with pytest.raises(ValueError) as refused:
        save(pack, pose_keypoint=[frame(), {"canvas_width": 64}])
    assert str(refused.value) == "keypoints frame 1 is not an OpenPose frame: expected an object with a 'people' list"
    with pytest.raises(ValueError, match="^no keypoints: connect a pose_keypoint output"):
        save(pack)
    assert not os.listdir(output)


def test_editing_the_file_makes_comfyui_run_the_node_again(pack, folders):
    inputs, _ = folders
    path = Path(inputs / "pose.json")
    path.write_text(json.dumps(FRAMES))
    cls = node(pack, "CNS_LoadPoseKeypoints")
    before = cls.IS_CHANGED("pose.json")
    assert cls.IS_CHANGED("pose.json") == before
    path.write_text(json.dumps(FRAMES[:1]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert cls.IS_CHANGED("pose.json") != before
