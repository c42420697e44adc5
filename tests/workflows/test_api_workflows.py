"""Every API workflow passes ComfyUI's own prompt validation as committed, and executes end to
end through ComfyUI's executor with random-weight models under the file names it names.

Executed at a small size to keep the suite fast on a CPU: the only values changed are the latent
size, the step count and the annotators' detection resolution (`shrink`); the graph, the files
and every other setting are the committed ones.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from workflows import build
from workflows.example_image import example_photo, inpaint_box_pixels

from .conftest import PHOTO_SIDE, WORKFLOW_NAMES, load_json

SHRUNK_SIDE = 64  # latent 8x8: the tiny U-Net's cost per step stays well under a second
SHRUNK_STEPS = 1
SHRUNK_RESOLUTION = PHOTO_SIDE
CONTROL_NODES = ("CNS_ApplyControlNet", "CNS_ControlStackEntry", "CNS_ApplyControlNetUnion")
# With random weights a pose detector legitimately finds nobody, so its map is all black; DWPose's
# random detector finds nobody by construction (random_models.NOBODY_OBJECTNESS_LOGIT).
MAY_BE_EMPTY = {"CNS_OpenPose", "CNS_DWPose"}


def shrink(prompt: dict) -> dict:
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyLatentImage":
            inputs["width"] = inputs["height"] = SHRUNK_SIDE
        elif node["class_type"] == "KSampler":
            inputs["steps"] = SHRUNK_STEPS
        elif node["class_type"].startswith("CNS_") and isinstance(inputs.get("resolution"), int):
            inputs["resolution"] = SHRUNK_RESOLUTION
    return prompt


def without_control(prompt: dict) -> dict:
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] in CONTROL_NODES:
            node["inputs"]["strength"] = 0.0
    return prompt


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def saved_images(env, ui: dict, node_id: str) -> list[np.ndarray]:
    entries = ui[node_id]["images"]
    assert all(entry["type"] == "output" for entry in entries)
    return [np.asarray(Image.open(env.output_dir / entry["subfolder"] / entry["filename"])) for entry in entries]


def result_save_node(prompt: dict) -> str:
    (node_id,) = [n for n in nodes_of(prompt, "SaveImage") if prompt[n]["_meta"]["title"] == build.RESULT_TITLE]
    return node_id


def sampled(comfy, prompt: dict) -> torch.Tensor:
    """The KSampler's latent batch when `prompt` runs."""
    (sampler,) = nodes_of(prompt, "KSampler")
    return comfy.comfy.run(prompt).outputs[sampler][0][0]["samples"]


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_both_formats_are_committed(name):
    ui_path, api_path = build.paths(name)
    assert ui_path.is_file(), f"{ui_path} is missing: run python -m workflows.build"
    assert api_path.is_file(), f"{api_path} is missing: run python -m workflows.build"


def test_committed_files_are_what_the_generator_makes(comfy):
    """The files equal the generator's output from the node classes ComfyUI has registered now:
    widget order and defaults cannot drift from the nodes, and UI and API forms agree."""
    specs = build.comfy_specs()
    for workflow in build.WORKFLOWS:
        assert build.missing_node_types(workflow, specs) == [], f"{workflow.name}: node types not registered"
        ui_text, api_text = build.render(workflow, specs)
        ui_path, api_path = build.paths(workflow.name)
        assert ui_path.read_text(encoding="utf-8") == ui_text, f"{ui_path} is stale: run python -m workflows.build"
        assert api_path.read_text(encoding="utf-8") == api_text, f"{api_path} is stale: run python -m workflows.build"


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_names_the_standard_files_and_says_what_to_download(name):
    workflow = next(w for w in build.WORKFLOWS if w.name == name)
    ui_path, api_path = build.paths(name)
    prompt, ui = load_json(api_path), load_json(ui_path)
    (checkpoint,) = nodes_of(prompt, "CheckpointLoaderSimple")
    assert prompt[checkpoint]["inputs"]["ckpt_name"] == workflow.base.checkpoint
    controlnets = {prompt[n]["inputs"]["control_net_name"] for n in nodes_of(prompt, "CNS_ControlNetLoader")}
    assert controlnets == set(workflow.controlnet_files)
    (note,) = [node for node in ui["nodes"] if node["type"] == "MarkdownNote"]
    for file_name in {workflow.base.checkpoint, *controlnets}:
        assert f"[{file_name}]({build.MODEL_URLS[file_name]})" in note["widgets_values"][0]


# The front end's missing-models dialog (comfyui_frontend_package, MissingModelsWarning) offers a
# download only for these sources and name endings; anything else is listed with an error.
FRONT_END_DOWNLOAD_SOURCES = ("https://civitai.com/", "https://huggingface.co/")
FRONT_END_DOWNLOAD_SUFFIXES = (".safetensors", ".sft")


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_the_front_end_can_download_every_model_the_workflow_names(name):
    workflow = next(w for w in build.WORKFLOWS if w.name == name)
    models = [model for node in load_json(build.paths(name)[0])["nodes"]
              for model in node.get("properties", {}).get("models", [])]
    assert sorted(model["name"] for model in models) == sorted([workflow.base.checkpoint, *workflow.controlnet_files])
    for model in models:
        assert model["url"].startswith(FRONT_END_DOWNLOAD_SOURCES), model
        assert model["name"].endswith(FRONT_END_DOWNLOAD_SUFFIXES), model


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_the_graph_is_laid_out_without_overlaps_and_reads_left_to_right(name):
    """In the editor no node (the note included) covers another, and every wire runs from a node
    to one further right, or down to one below it in the same column (a chain stacked at the end)."""
    ui = load_json(build.paths(name)[0])
    boxes = {node["id"]: (*node["pos"], node["pos"][0] + node["size"][0], node["pos"][1] + node["size"][1]) for node in ui["nodes"]}
    for a, (left_a, top_a, right_a, bottom_a) in boxes.items():
        for b, (left_b, top_b, right_b, bottom_b) in boxes.items():
            if a < b:
                assert right_a <= left_b or right_b <= left_a or bottom_a <= top_b or bottom_b <= top_a, (
                    f"{name}: nodes {a} and {b} overlap"
                )
    for _, source, _, target, _, _ in ui["links"]:
        source_box, target_box = boxes[source], boxes[target]
        rightwards = source_box[2] <= target_box[0]
        downwards = source_box[0] == target_box[0] and source_box[3] <= target_box[1]
        assert rightwards or downwards, f"{name}: the wire from node {source} to node {target} runs backwards"


def test_the_union_workflow_fuses_its_maps_in_one_controlnet():
    """The SDXL Union workflow: one Union loader, each annotator's map a Union Condition of its
    type, all of them into one Apply ControlNet Union."""
    prompt = load_json(build.paths("sdxl_union_depth_canny")[1])
    (loader,) = nodes_of(prompt, "CNS_ControlNetLoader")
    (apply,) = nodes_of(prompt, "CNS_ApplyControlNetUnion")
    assert prompt[apply]["inputs"]["control_net"] == [loader, 0]
    types, condition = {}, prompt[apply]["inputs"]["union_conditions"][0]
    while condition is not None:
        inputs = prompt[condition]["inputs"]
        types[prompt[inputs["image"][0]]["class_type"]] = inputs["control_type"]
        condition = inputs.get("union_conditions", [None])[0]
    assert types == {"CNS_MiDaSDepth": "depth", "CNS_Canny": "canny/lineart/anime_lineart/mlsd"}


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_api_workflow_validates_and_runs_end_to_end(comfy, name):
    _, api_path = build.paths(name)
    prompt = load_json(api_path)
    comfy.comfy.validate(copy.deepcopy(prompt))  # as committed: raises with ComfyUI's reasons

    small = shrink(prompt)
    result = comfy.comfy.run(small)
    save_nodes = nodes_of(small, "SaveImage")
    result_node = result_save_node(small)
    workflow = next(w for w in build.WORKFLOWS if w.name == name)
    # img2img: maps and result at the (enlarged) photo's size; otherwise maps at the photo's, the result the latent's
    map_side = round(PHOTO_SIDE * (workflow.upscale or 1))
    result_side = map_side if workflow.img2img else SHRUNK_SIDE
    for node_id in save_nodes:
        images = saved_images(comfy, result.ui, node_id)
        side = result_side if node_id == result_node else map_side
        count = workflow.batch_size if node_id == result_node else 1
        assert [image.shape for image in images] == [(side, side, 3)] * count, f"node {node_id} saved {images}"
    for node_id in save_nodes:
        annotator = small[small[node_id]["inputs"]["images"][0]]["class_type"]
        if node_id != result_node and annotator not in MAY_BE_EMPTY:
            (image,) = saved_images(comfy, result.ui, node_id)
            assert image.std() > 0, f"{annotator}'s map is flat: it found nothing"

    # The control reaches the sampler: with every ControlNet at strength 0 the latent changes.
    (sampler,) = nodes_of(small, "KSampler")
    controlled = result.outputs[sampler][0][0]["samples"]
    plain = sampled(comfy, without_control(small))
    assert torch.isfinite(controlled).all()
    assert (controlled - plain).abs().max() > 0


def test_the_strength_sweep_gives_each_latent_of_the_batch_its_strength(comfy):
    """canny_strength_sweep ("0=1, 1=0.6, 2=0.3, 3=0" on a batch of four): latent 0 samples
    exactly as with no Latent Strengths node, latent 3 exactly as with no control, and latents 1
    and 2 as neither."""
    small = shrink(load_json(build.paths("canny_strength_sweep")[1]))
    (apply,) = nodes_of(small, "CNS_ApplyControlNet")
    (strengths,) = nodes_of(small, "CNS_LatentStrengths")
    assert small[apply]["inputs"]["latent_strengths"] == [strengths, 0]
    every_latent_full = copy.deepcopy(small)
    del every_latent_full[apply]["inputs"]["latent_strengths"]
    del every_latent_full[strengths]

    swept = sampled(comfy, small)
    full = sampled(comfy, every_latent_full)
    plain = sampled(comfy, without_control(small))
    assert swept.shape[0] == 4
    assert torch.equal(swept[0], full[0])
    assert torch.equal(swept[3], plain[3])
    for index in (1, 2):
        assert not torch.equal(swept[index], full[index]) and not torch.equal(swept[index], plain[index])
    assert not torch.equal(full[3], plain[3])  # the control does reach latent 3 without the node


def test_the_inpaint_workflow_repaints_the_softened_mask_and_keeps_the_rest_of_the_photo(comfy):
    """inpaint, on the photo whose INPAINT_BOX is transparent: the hint is masked exactly where the
    softened mask (a Gaussian blur of sigma INPAINT_MASK_SIGMA px, recomputed here with OpenCV)
    exceeds 0.5; the saved result is the photo wherever that mask is zero (farther from the box
    than the blur's radius) and new pixels inside the box."""
    small = shrink(load_json(build.paths("inpaint")[1]))
    (blur,) = nodes_of(small, "ImageBlur")
    radius = small[blur]["inputs"]["blur_radius"]
    (hint,) = nodes_of(small, "CNS_InpaintHint")
    (hint_save,) = [n for n in nodes_of(small, "SaveImage") if small[n]["inputs"]["images"][0] == hint]
    result = comfy.comfy.run(small)
    (image,) = saved_images(comfy, result.ui, result_save_node(small))
    (hint_map,) = saved_images(comfy, result.ui, hint_save)
    photo = example_photo(PHOTO_SIDE)
    left, top, right, bottom = inpaint_box_pixels(PHOTO_SIDE)
    box = np.zeros(photo.shape[:2], np.float32)
    box[top:bottom, left:right] = 1.0
    side = 2 * radius + 1
    softened = cv2.GaussianBlur(box, (side, side), build.INPAINT_MASK_SIGMA, borderType=cv2.BORDER_REFLECT_101)
    clear = np.abs(softened - 0.5) > 1e-4  # away from the threshold, where float rounding cannot tip it
    masked = softened > 0.5
    assert np.all(hint_map[masked & clear] == 0)  # -1, saved as black
    assert np.array_equal(hint_map[~masked & clear], photo[~masked & clear])
    assert (masked != (box > 0)).any()  # the softening rounds the box's corners off: the test can tell

    outside = np.ones(photo.shape[:2], bool)
    outside[max(0, top - radius):bottom + radius, max(0, left - radius):right + radius] = False
    assert outside.sum() > PHOTO_SIDE ** 2 / 4  # the box and its blur leave most of the photo out
    # Load Image's v / 255 and Save Image's 255 * x round-trip every 8-bit value exactly
    assert np.array_equal(image[outside], photo[outside])
    assert np.abs(image[top:bottom, left:right].astype(int) - photo[top:bottom, left:right]).mean() > 1
