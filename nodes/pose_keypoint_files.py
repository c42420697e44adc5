"""Pose keypoints as files: Save Pose Keypoints writes OpenPose-format JSON (a list of frames, as
the OpenPose node's keypoints_json output) into ComfyUI's output folder; Load Pose Keypoints reads
such a file from the input or output folder. So a detected pose can be kept, edited in a pose
editor and drawn again with Draw Pose Keypoints, without the networks.

Files are picked from ComfyUI's folder listings, never from typed paths: a name that is not in
the listing is refused before anything is opened.
"""

from __future__ import annotations

import json
import os

from .preprocessors_common import CATEGORY

POSE_FILE_EXTENSION = ".json"
OUTPUT_ANNOTATION = " [output]"  # ComfyUI's annotated-file-name suffix for the output folder
DEFAULT_PREFIX = "pose_keypoints"


def _json_files(folder: str) -> list[str]:
    """The .json files under `folder`, as paths relative to it with '/' separators, sorted."""
    found = []
    for root, _, files in os.walk(folder):
        for name in files:
            if name.lower().endswith(POSE_FILE_EXTENSION):
                found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
    return sorted(found)


def pose_files() -> list[str]:
    """The names Load Pose Keypoints offers: the input folder's .json files as they are named
    there, then the output folder's with ' [output]' (where Save Pose Keypoints writes)."""
    import folder_paths

    return (_json_files(folder_paths.get_input_directory())
            + [name + OUTPUT_ANNOTATION for name in _json_files(folder_paths.get_output_directory())])


def pose_file_path(name: str) -> str:
    """The path of a name from `pose_files()`; any other name is refused."""
    import folder_paths

    if name not in pose_files():
        raise ValueError(f"no pose keypoints file '{name}' in ComfyUI's input or output folder: put the .json file in "
                         f"{folder_paths.get_input_directory()} and pick it from the list")
    if name.endswith(OUTPUT_ANNOTATION):
        return os.path.join(folder_paths.get_output_directory(), name[:-len(OUTPUT_ANNOTATION)])
    return os.path.join(folder_paths.get_input_directory(), name)


def save_pose_file(frames: list, filename_prefix: str) -> str:
    """Write the frames as `<prefix>_<counter>_.json` in the output folder (ComfyUI's numbering,
    as for images); returns the name relative to the output folder."""
    import folder_paths

    output = folder_paths.get_output_directory()
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output)
    name = f"{filename}_{counter:05}_{POSE_FILE_EXTENSION}"
    with open(os.path.join(folder, name), "w", encoding="utf-8") as file:
        json.dump(frames, file)
    return os.path.join(subfolder, name).replace(os.sep, "/")


class CNS_SavePoseKeypoints:
    DESCRIPTION = (
        "Saves pose keypoints (the OpenPose node's pose_keypoint output, another pack's POSE_KEYPOINT, or JSON text) "
        "as an OpenPose-format .json file in ComfyUI's output folder, numbered like saved images (Animal Pose's "
        "keypoints in their AP-10K format). Load Pose Keypoints lists it; pose editors read the format.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    RETURN_NAMES = ()
    OUTPUT_TOOLTIPS = ()
    FUNCTION = "save"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "filename_prefix": ("STRING", {"default": DEFAULT_PREFIX, "tooltip": (
                    "File name start, in the output folder; may name a subfolder (poses/dancer). A counter is added, "
                    "as for saved images.")}),
            },
            "optional": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "Keypoints, one frame per image (the OpenPose node's output)."}),
                "keypoints_json": ("STRING", {"default": "", "multiline": True, "forceInput": True, "tooltip": (
                    "Or OpenPose-format JSON text (the OpenPose node's keypoints_json output).")}),
            },
        }

    def save(self, filename_prefix, pose_keypoint=None, keypoints_json=""):
        from ..annotators.openpose.keypoints_json import check_frames, keypoint_frames

        frames = keypoint_frames(pose_keypoint, keypoints_json)
        check_frames(frames)
        return {"ui": {"text": [save_pose_file(frames, filename_prefix)]}}


class CNS_LoadPoseKeypoints:
    DESCRIPTION = (
        "Loads an OpenPose-format (or AP-10K) .json file (one frame or a list) from ComfyUI's input folder, or one Save Pose "
        "Keypoints wrote to the output folder, as pose keypoints for Draw Pose Keypoints.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("POSE_KEYPOINT", "STRING")
    RETURN_NAMES = ("pose_keypoint", "keypoints_json")
    OUTPUT_TOOLTIPS = ("The frames, one per image.", "The file's JSON text.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"file": (pose_files(), {"tooltip": (
            "A .json file in the input folder, or one in the output folder (marked [output]). Refresh the page to see "
            "new files.")})}}

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        try:
            pose_file_path(file)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def IS_CHANGED(cls, file):
        status = os.stat(pose_file_path(file))
        return f"{status.st_mtime_ns}:{status.st_size}"  # run again when the file is edited

    def load(self, file):
        from ..annotators.openpose.keypoints_json import check_frames, frames_from_text

        with open(pose_file_path(file), encoding="utf-8") as handle:
            text = handle.read()
        try:
            frames = frames_from_text(text)
            check_frames(frames)
        except ValueError as error:
            raise ValueError(f"{file}: {error}") from None
        return (frames, text)


NODES = {
    "CNS_SavePoseKeypoints": (CNS_SavePoseKeypoints, "Save Pose Keypoints"),
    "CNS_LoadPoseKeypoints": (CNS_LoadPoseKeypoints, "Load Pose Keypoints"),
}
