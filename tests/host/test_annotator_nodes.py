"""The preprocessor (annotator) nodes inside ComfyUI.

Every node, run on a small IMAGE batch, must return exactly what its annotator function returns
image by image (uint8 maps as float / 255). Learned nodes read random weights saved under the
published file names in a temporary annotators folder; their network is cached between runs,
managed by ComfyUI's model management (unloading it empties the cache) and a missing file
raises the annotators' own message unchanged.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from annotators import batch as batch_cli  # the names only: the runs use the pack's own copy
from tests.annotators.random_learned import (  # the annotator tests' recipe
    AP10K_TEST_CROP, RTMPOSE_TEST_CROP, RTMPOSE_TEST_WIDTHS, YOLOX_TEST_FACTORS, ZOE_TEST_WIDTHS, adjust,
    random_state_dict)
from workflows.random_models import save_detector_onnx, save_pose_onnx

CATEGORY = "ControlNet Suite/preprocessors"
WEIGHT_FREE = ["CNS_Canny", "CNS_PyraCanny", "CNS_HoughLines", "CNS_Scribble", "CNS_ScribbleXDoG", "CNS_LineartStandard", "CNS_Binary",
               "CNS_ColorGrid", "CNS_ContentShuffle", "CNS_Tile", "CNS_InpaintHint", "CNS_NormalFromDepth",
               "CNS_ColorizeSegmentation", "CNS_ImageLuminance", "CNS_ImageIntensity", "CNS_TTPlanetTileGuidedFilter",
               "CNS_TTPlanetTileSimple"]
LEARNED = ["CNS_HED", "CNS_PiDiNet", "CNS_TEED", "CNS_MLSD", "CNS_OpenPose", "CNS_DWPose", "CNS_AnimalPose", "CNS_Lineart", "CNS_LineartAnime",
           "CNS_AnyLine", "CNS_DepthAnything", "CNS_DepthAnythingV2", "CNS_LeReSDepth", "CNS_ZoeDepth",
           "CNS_OneFormerSegmentation", "CNS_DSINENormal", "CNS_AnimeFaceSegmentation"]
LEARNED_PENDING = ["CNS_MiDaSDepth", "CNS_MiDaSNormal", "CNS_NormalBAE", "CNS_MangaLine", "CNS_UniFormerSegmentation"]
RESOLUTION = ["CNS_ResizeForControl", "CNS_PixelPerfectResolution"]
KEYPOINTS = ["CNS_DrawPoseKeypoints", "CNS_SavePoseKeypoints", "CNS_LoadPoseKeypoints"]  # keypoints, no image input
AFTER_SAMPLING = ["CNS_RestoreBrightness"]  # a generated image and a recolor map in (tests/host/test_recolor_nodes.py)
BY_NAME = ["CNS_AnyPreprocessor", "CNS_AllPreprocessors"]  # runs the nodes above by name
NODE_IDS = WEIGHT_FREE + LEARNED + LEARNED_PENDING + RESOLUTION + KEYPOINTS + AFTER_SAMPLING + BY_NAME

HEIGHT, WIDTH = 64, 96  # a small batch, not square, so height and width cannot be swapped unnoticed
# Learned nodes: smaller images, detected at twice their size (so an ignored resolution shows).
LEARNED_HEIGHT, LEARNED_WIDTH = 32, 48
LEARNED_RESOLUTION = 64


# --- the pack's modules and nodes ---------------------------------------------------------------

class Pack:
    def __init__(self, host):
        self.host = host
        self.name = host.pack.__name__
        self.preprocessors = self.module("nodes.preprocessors")
        self.models = self.module("nodes.preprocessors_models")

    def module(self, name: str):
        return importlib.import_module(f"{self.name}.{name}")

    def has(self, name: str) -> bool:
        return importlib.util.find_spec(f"{self.name}.{name}") is not None

    def node_class(self, node_id: str):
        # ComfyUI's registry when nodes/__init__.py registers the preprocessors, else the module's own
        return self.host.nodes.NODE_CLASS_MAPPINGS.get(node_id) or self.preprocessors.NODE_CLASS_MAPPINGS[node_id]

    def run(self, node_id: str, **inputs):
        cls = self.node_class(node_id)
        return getattr(cls(), cls.FUNCTION)(**inputs)

    def defaults(self, node_id: str) -> dict:
        """Every input's default (a combo's default or first choice), as the frontend fills them."""
        values = {}
        for name, (kind, options) in self.node_class(node_id).INPUT_TYPES()["required"].items():
            if isinstance(kind, list):
                values[name] = options.get("default", kind[0])
            elif "default" in options:
                values[name] = options["default"]
        return values


@pytest.fixture(scope="module")
def pack(host) -> Pack:
    return Pack(host)


def photo_batch(height: int, width: int) -> torch.Tensor:
    """Two different photos (scikit-image's) as a ComfyUI IMAGE batch."""
    photos = [data.astronaut(), data.coffee()]
    resized = [cv2.resize(p, (width, height), interpolation=cv2.INTER_AREA) for p in photos]
    return torch.from_numpy(np.stack(resized)).float() / 255.0


PHOTOS = photo_batch(HEIGHT, WIDTH)
SMALL_PHOTOS = photo_batch(LEARNED_HEIGHT, LEARNED_WIDTH)


def as_batch(maps) -> torch.Tensor:
    """Maps (or masks) as a node's batch: uint8 as float / 255, floats as they are."""
    return torch.stack([torch.from_numpy(m).float() / (255.0 if m.dtype == np.uint8 else 1.0) for m in maps])


def expected_batch(annotate, frames=PHOTOS) -> torch.Tensor:
    """The annotator called directly on each image, as a batch (`as_batch`)."""
    return as_batch([annotate(frame.numpy()) for frame in frames])


def assert_same_maps(result: torch.Tensor, expected: torch.Tensor) -> None:
    assert result.dtype == torch.float32
    assert result.shape == expected.shape
    assert torch.equal(result.cpu(), expected)
    # a blank map would match any blank reference: require real content in every image
    for index, image in enumerate(expected):
        assert len(torch.unique(image)) > 1, f"image {index}: the map is a single colour, which proves nothing"


# --- declarations ------------------------------------------------------------------------------

def test_mappings_list_exactly_the_preprocessor_nodes(pack):
    assert set(pack.preprocessors.NODE_CLASS_MAPPINGS) == set(NODE_IDS)
    assert set(pack.preprocessors.NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_IDS)
    assert all(name.endswith(" (ControlNet Suite)") for name in pack.preprocessors.NODE_DISPLAY_NAME_MAPPINGS.values())


def test_comfyui_registers_the_preprocessor_nodes(pack):
    for node_id in NODE_IDS:
        assert pack.host.nodes.NODE_CLASS_MAPPINGS.get(node_id) is pack.preprocessors.NODE_CLASS_MAPPINGS[node_id], (
            f"{node_id} is not registered: nodes/__init__.py must merge nodes.preprocessors' mappings")
        assert pack.host.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == pack.preprocessors.NODE_DISPLAY_NAME_MAPPINGS[node_id]


def test_every_suite_node_declares_tooltips_description_and_category(pack):
    suite_nodes = {node_id: cls for node_id, cls in pack.host.nodes.NODE_CLASS_MAPPINGS.items() if node_id.startswith("CNS_")}
    suite_nodes.update(pack.preprocessors.NODE_CLASS_MAPPINGS)
    for node_id, cls in suite_nodes.items():
        assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION.strip(), f"{node_id} has no DESCRIPTION"
        assert cls.CATEGORY.startswith("ControlNet Suite/")
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        inputs = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in inputs.get(section, {}).items():
                assert len(spec) == 2 and spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    for node_id in NODE_IDS:
        assert suite_nodes[node_id].CATEGORY == CATEGORY


def test_annotator_nodes_take_an_image_batch_and_return_an_image_first(pack):
    for node_id in WEIGHT_FREE + LEARNED + LEARNED_PENDING:
        cls = pack.node_class(node_id)
        required = cls.INPUT_TYPES()["required"]
        assert required["image"][0] == "IMAGE"
        assert cls.RETURN_TYPES[0] == "IMAGE"
    assert pack.node_class("CNS_OpenPose").RETURN_TYPES == ("IMAGE", "POSE_KEYPOINT", "STRING")
    assert pack.node_class("CNS_DWPose").RETURN_TYPES == ("IMAGE", "POSE_KEYPOINT", "STRING")
    assert pack.node_class("CNS_PixelPerfectResolution").RETURN_TYPES == ("INT",)


# AnyLine detects at 1280 by default, as comfyui_controlnet_aux's AnyLine node.
RESOLUTION_DEFAULTS = {"CNS_AnyLine": 1280}


def test_resolution_inputs_default_to_512_in_steps_of_64(pack):
    with_resolution = [n for n in WEIGHT_FREE + LEARNED + LEARNED_PENDING
                       if "resolution" in pack.node_class(n).INPUT_TYPES()["required"]]
    # every annotator with a detect resolution has the input; tile, inpaint, normal-from-depth and
    # segmentation colouring work at the image's own size
    assert set(WEIGHT_FREE + LEARNED + LEARNED_PENDING) - set(with_resolution) == {
        "CNS_Tile", "CNS_InpaintHint", "CNS_NormalFromDepth", "CNS_ColorizeSegmentation", "CNS_TTPlanetTileGuidedFilter",
        "CNS_TTPlanetTileSimple"}
    for node_id in with_resolution:
        kind, options = pack.node_class(node_id).INPUT_TYPES()["required"]["resolution"]
        assert (kind, options["default"], options["step"], options["min"]) == (
            "INT", RESOLUTION_DEFAULTS.get(node_id, 512), 64, 0)


# Imports the pack outside ComfyUI with some annotator modules, scipy and scikit-image made
# unimportable (a None entry in sys.modules makes `import` fail), then lists its preprocessor nodes.
IMPORT_WITHOUT_MODULES = """
import importlib.util, json, sys
for name in sys.argv[2:]:
    sys.modules[name] = None
spec = importlib.util.spec_from_file_location("pack", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
pack = importlib.util.module_from_spec(spec)
sys.modules["pack"] = pack
spec.loader.exec_module(pack)
import pack.nodes.preprocessors as preprocessors
print(json.dumps(sorted(preprocessors.NODE_CLASS_MAPPINGS)))
"""
LEARNED_MODULES = ("midas", "normalbae", "manga_line", "uniformer", "openpose", "depth_anything", "zoe")


def test_nodes_import_without_the_learned_annotator_modules():
    """Learned annotator modules the annotators package does not import itself (always OpenPose,
    whose scipy is slow to import) are imported only when a node runs, so every node registers
    even when one of them is missing."""
    from .conftest import REPO_ROOT

    package_imports = (REPO_ROOT / "annotators" / "__init__.py").read_text()
    lazy = [m for m in LEARNED_MODULES if not re.search(rf"^from \.{m}\b", package_imports, re.M)]
    assert "openpose" in lazy, "annotators/__init__.py imports OpenPose (scipy) eagerly"
    blocked = [f"pack.annotators.{m}" for m in lazy] + ["scipy", "skimage"]
    result = subprocess.run([sys.executable, "-c", IMPORT_WITHOUT_MODULES, str(REPO_ROOT), *blocked],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == sorted(NODE_IDS)


def test_a_missing_annotator_module_is_named(pack, monkeypatch):
    model = pack.models.LearnedModel("no_such_annotator", ("X_WEIGHTS",), "load_x")
    with pytest.raises(ModuleNotFoundError) as error:
        model.import_module()
    assert str(error.value) == ("this ControlNet Suite install has no annotators/no_such_annotator.py; "
                                "update ControlNet Suite to use this node")


# --- weight-free nodes equal their annotators ----------------------------------------------------

def depth_batch() -> torch.Tensor:
    """Two smooth gray depth maps (a tilted plane with a bump; its mirror), channels equal."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    bump = np.exp(-((x - WIDTH / 3) ** 2 + (y - HEIGHT / 2) ** 2) / (2 * 10.0 ** 2))
    depth = 0.6 * x / WIDTH + 0.4 * bump
    depths = np.stack([depth, depth[:, ::-1]])
    return torch.from_numpy(np.repeat(depths[..., None], 3, axis=3).copy())


def label_batch() -> torch.Tensor:
    """Two 8-bit label images (blocks of class ids 0..179, values id / 255), channels equal."""
    rng = np.random.default_rng(3)
    blocks = rng.integers(0, 180, size=(2, HEIGHT // 8, WIDTH // 8))
    labels = np.kron(blocks, np.ones((8, 8), dtype=np.int64))
    return torch.from_numpy(np.repeat(labels[..., None], 3, axis=3) / 255.0).float()


def drawing_batch() -> torch.Tensor:
    """Two line drawings: dark strokes on white and light strokes on black."""
    page = np.full((HEIGHT, WIDTH, 3), 255, np.uint8)
    cv2.line(page, (5, 5), (90, 60), (0, 0, 0), 2)
    cv2.circle(page, (40, 30), 15, (20, 20, 20), 1)
    return torch.from_numpy(np.stack([page, 255 - page])).float() / 255.0


def weight_free_cases(annotators):
    """(node id, node inputs besides the image, the annotator on one frame, input batch), with
    non-default values so a swapped or ignored argument shows."""
    a = annotators
    return [
        ("CNS_Canny", dict(low_threshold=40, high_threshold=120, auto_thresholds=False, resolution=128),
         lambda f: a.canny(f, 40, 120, False, 128), PHOTOS),
        ("CNS_Canny", dict(low_threshold=1, high_threshold=2, auto_thresholds=True, resolution=0),
         lambda f: a.canny(f, 1, 2, True, None), PHOTOS),
        ("CNS_HoughLines", dict(canny_low_threshold=50, canny_high_threshold=150, rho_px=1.0, theta_degrees=0.5, votes=20,
                                min_line_length_px=10.0, max_line_gap_px=4.0, line_thickness_px=2, resolution=256),
         lambda f: a.hough_lines(f, 50, 150, 1.0, 0.5, 20, 10.0, 4.0, 2, 256), PHOTOS),
        ("CNS_Scribble", dict(threshold=100, stroke_growth_px=1, drawing="auto", resolution=128),
         lambda f: a.scribble(f, 100, 1, None, 128), drawing_batch()),
        ("CNS_Scribble", dict(threshold=128, stroke_growth_px=0, drawing="light strokes on dark", resolution=0),
         lambda f: a.scribble(f, 128, 0, False, None), drawing_batch()),
        ("CNS_ScribbleXDoG", dict(threshold=20, resolution=128), lambda f: a.xdog_scribble(f, 20, 128), PHOTOS),
        ("CNS_LineartStandard", dict(gaussian_sigma=3.5, intensity_threshold=5, resolution=128),
         lambda f: a.lineart_standard(f, 3.5, 5, 128), PHOTOS),
        ("CNS_Binary", dict(threshold=100, resolution=128), lambda f: a.binary(f, 100, 128), PHOTOS),
        ("CNS_ColorGrid", dict(resolution=128), lambda f: a.color_grid(f, 128), PHOTOS),
        ("CNS_ContentShuffle", dict(seed=5, cell_px=64, resolution=128), lambda f: a.content_shuffle(f, 5, 64, 128), PHOTOS),
        ("CNS_Tile", dict(downsample_factor=2.5, blur_sigma=1.5), lambda f: a.tile(f, 2.5, 1.5), PHOTOS),
        ("CNS_NormalFromDepth", dict(z_component=3.0, background_threshold=0.2, zyx_order=False),
         lambda f: a.normal_from_depth(f, 3.0, 0.2, False), depth_batch()),
        ("CNS_ColorizeSegmentation", dict(palette="coco_stuff", reduce_zero_label=False),
         lambda f: a.colorize_labels(np.round(f[..., 0] * 255).astype(np.int64), "coco_stuff"), label_batch()),
        ("CNS_ColorizeSegmentation", dict(palette="ade20k", reduce_zero_label=True),
         lambda f: a.colorize_labels(np.round(f[..., 0] * 255).astype(np.int64) - 1, "ade20k"), label_batch()),
        ("CNS_ImageLuminance", dict(gamma_correction=1.4, lab_order="rgb", resolution=128),
         lambda f: a.recolor_luminance(f, 1.4, 128, "rgb"), PHOTOS),
        ("CNS_ImageIntensity", dict(gamma_correction=0.6, resolution=0),
         lambda f: a.recolor_intensity(f, 0.6, None), PHOTOS),
        ("CNS_PyraCanny", dict(low_threshold=30, high_threshold=90, resolution=128),
         lambda f: a.pyracanny(f, 30, 90, 128), PHOTOS),
        ("CNS_TTPlanetTileGuidedFilter", dict(scale_factor=1.5, blur_strength=3.0, radius=4, eps=0.02),
         lambda f: a.ttplanet_tile_guided_filter(f, 1.5, 3.0, 4, 0.02), PHOTOS),
        ("CNS_TTPlanetTileSimple", dict(scale_factor=2.5, blur_strength=4.0),
         lambda f: a.ttplanet_tile_simple(f, 2.5, 4.0), PHOTOS),
    ]


CASE_COUNT = 19


@pytest.mark.parametrize("case", range(CASE_COUNT))
def test_weight_free_node_equals_its_annotator_image_by_image(pack, case):
    cases = weight_free_cases(pack.module("annotators"))
    assert len(cases) == CASE_COUNT
    node_id, inputs, annotate, batch = cases[case]
    (result,) = pack.run(node_id, image=batch, **inputs)
    assert_same_maps(result, expected_batch(annotate, batch))


# The annotator call with its own defaults, for the node run with its declared defaults.
DEFAULT_CALLS = {
    "CNS_Canny": ("canny", PHOTOS), "CNS_HoughLines": ("hough_lines", PHOTOS),
    "CNS_Scribble": ("scribble", drawing_batch()), "CNS_ScribbleXDoG": ("xdog_scribble", PHOTOS),
    "CNS_LineartStandard": ("lineart_standard", PHOTOS),
    "CNS_Binary": ("binary", PHOTOS), "CNS_ColorGrid": ("color_grid", PHOTOS),
    "CNS_ContentShuffle": ("content_shuffle", PHOTOS), "CNS_Tile": ("tile", PHOTOS),
    "CNS_NormalFromDepth": ("normal_from_depth", depth_batch()),
    "CNS_ImageLuminance": ("recolor_luminance", PHOTOS), "CNS_ImageIntensity": ("recolor_intensity", PHOTOS),
    "CNS_PyraCanny": ("pyracanny", PHOTOS), "CNS_TTPlanetTileGuidedFilter": ("ttplanet_tile_guided_filter", PHOTOS),
    "CNS_TTPlanetTileSimple": ("ttplanet_tile_simple", PHOTOS),
}


@pytest.mark.parametrize("node_id", sorted(DEFAULT_CALLS))
def test_node_defaults_are_the_annotator_defaults(pack, node_id):
    function_name, batch = DEFAULT_CALLS[node_id]
    annotate = getattr(pack.module("annotators"), function_name)
    (result,) = pack.run(node_id, image=batch, **{k: v for k, v in pack.defaults(node_id).items() if k != "image"})
    assert_same_maps(result, expected_batch(annotate, batch))


def test_the_node_clamps_overshoot_that_the_annotator_would_refuse(pack):
    """Resampling nodes overshoot 0..1 a little; the node clamps where the annotator refuses."""
    overshoot = PHOTOS * 1.1 - 0.05
    (result,) = pack.run("CNS_Canny", image=overshoot, low_threshold=100, high_threshold=200, auto_thresholds=False, resolution=128)
    assert_same_maps(result, expected_batch(lambda f: pack.module("annotators").canny(f, resolution=128), overshoot.clamp(0, 1)))


def test_inpaint_hint_with_one_mask_per_image(pack):
    masks = torch.zeros(2, HEIGHT, WIDTH)
    masks[0, 10:30, 20:70] = 1.0
    masks[1, 40:, :50] = 0.7
    (result,) = pack.run("CNS_InpaintHint", image=PHOTOS, mask=masks)
    inpaint_hint = pack.module("annotators").inpaint_hint
    expected = torch.stack([torch.from_numpy(inpaint_hint(PHOTOS[i].numpy(), masks[i].numpy())) for i in range(2)])
    assert torch.equal(result, expected)
    assert (result == -1).sum() == 3 * (20 * 50 + 24 * 50)


def test_inpaint_hint_for_a_union_repaint_sets_masked_pixels_black(pack):
    """masked_pixels 'black' (a ControlNet Union ProMax's repaint): the photo with the masked
    pixels 0; without the input (a prompt saved before it existed) the hint is v1.1's -1."""
    masks = torch.zeros(1, HEIGHT, WIDTH)
    masks[0, 10:30, 20:70] = 1.0
    (black,) = pack.run("CNS_InpaintHint", image=PHOTOS, mask=masks, masked_pixels="black (ControlNet Union ProMax repaint)")
    expected = PHOTOS.clone()
    expected[:, 10:30, 20:70, :] = 0.0
    assert torch.allclose(black, expected, rtol=0, atol=1e-6)  # the annotator goes through uint8: photos are 8-bit
    (default,) = pack.run("CNS_InpaintHint", image=PHOTOS, mask=masks)
    assert torch.equal(default[:, 10:30, 20:70], torch.full_like(default[:, 10:30, 20:70], -1.0))
    assert torch.equal(default[black != 0], black[black != 0])


def test_inpaint_hint_resizes_a_smaller_mask_of_the_same_aspect_ratio(pack):
    small = torch.zeros(1, HEIGHT // 2, WIDTH // 2)
    small[0, 5:20, 10:30] = 1.0
    (result,) = pack.run("CNS_InpaintHint", image=PHOTOS, mask=small)
    # one mask serves the whole batch; resized bilinearly (half-pixel centres, as cv2.INTER_LINEAR)
    full = cv2.resize(small[0].numpy(), (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    inpaint_hint = pack.module("annotators").inpaint_hint
    expected = torch.stack([torch.from_numpy(inpaint_hint(PHOTOS[i].numpy(), full)) for i in range(2)])
    assert torch.equal(result, expected)


def test_inpaint_hint_refuses_masks_that_do_not_fit(pack):
    errors = pack.module("controlnet_core.errors")
    with pytest.raises(errors.ControlNetError, match=re.escape(
            f"the mask is 50×50 px and the image {WIDTH}×{HEIGHT} px: their aspect ratios differ")):
        pack.run("CNS_InpaintHint", image=PHOTOS, mask=torch.ones(1, 50, 50))
    with pytest.raises(ValueError) as error:
        pack.run("CNS_InpaintHint", image=PHOTOS, mask=torch.ones(3, HEIGHT, WIDTH))
    assert str(error.value) == "3 masks for 2 images; pass one mask for the whole batch or one per image"


def test_inpaint_hint_refuses_a_mask_that_marks_nothing(pack):
    """Load Image gives a 64x64 mask of zeros for a photo without transparency: refused by what it
    is (not by its aspect ratio), as is a mask at the threshold, while a batch's one empty frame is
    not (that frame's hint is the bare photo)."""
    message = pack.module("nodes.preprocessors_weight_free").EMPTY_INPAINT_MASK
    assert message.startswith("the mask is empty (no value above 0.5), so there is nothing to inpaint")
    for empty in (torch.zeros(1, 64, 64), torch.full((2, HEIGHT, WIDTH), 0.5)):
        with pytest.raises(ValueError) as error:
            pack.run("CNS_InpaintHint", image=PHOTOS, mask=empty)
        assert str(error.value) == message
    masks = torch.zeros(2, HEIGHT, WIDTH)
    masks[0, 10:30, 20:70] = 0.51
    (result,) = pack.run("CNS_InpaintHint", image=PHOTOS, mask=masks)
    assert (result[0] == -1).sum() == 3 * 20 * 50
    assert torch.allclose(result[1], PHOTOS[1], rtol=0, atol=1e-6)  # through uint8: the photos are 8-bit


def test_colorize_refuses_a_coloured_image(pack):
    with pytest.raises(ValueError, match="the label map has differing colour channels"):
        pack.run("CNS_ColorizeSegmentation", image=PHOTOS, palette="ade20k", reduce_zero_label=False)


def test_a_batch_reports_progress_image_by_image(pack, monkeypatch):
    utils = pack.host.comfy.utils
    updates = []
    monkeypatch.setattr(utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: updates.append((value, total)))
    pack.run("CNS_Binary", image=PHOTOS, threshold=0, resolution=512)
    assert updates == [(1, 2), (2, 2)]


def test_a_cancelled_run_stops_before_the_next_image(pack, monkeypatch):
    mm = pack.host.comfy.model_management
    calls = []
    binary = pack.module("annotators.binary")
    original = binary.binary

    def counting_binary(*args, **kwargs):
        calls.append(1)
        mm.interrupt_current_processing(True)  # the user presses cancel during the first image
        return original(*args, **kwargs)

    monkeypatch.setattr(pack.module("nodes.preprocessors_weight_free"), "binary", counting_binary)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            pack.run("CNS_Binary", image=PHOTOS, threshold=0, resolution=512)
    finally:
        mm.interrupt_current_processing(False)
    assert len(calls) == 1


def test_an_empty_batch_is_refused(pack):
    with pytest.raises(ValueError) as error:
        pack.run("CNS_Binary", image=torch.zeros(0, HEIGHT, WIDTH, 3), threshold=0, resolution=512)
    assert str(error.value) == "image is an empty batch; pass at least one image"


# --- resolution nodes ----------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["Just Resize", "Crop and Resize", "Resize and Fill"])
def test_resize_for_control_equals_resize_to_target(pack, mode):
    annotators = pack.module("annotators")
    (maps,) = pack.run("CNS_Canny", image=PHOTOS, low_threshold=100, high_threshold=200, auto_thresholds=False, resolution=0)
    (result,) = pack.run("CNS_ResizeForControl", image=maps, width=80, height=120, resize_mode=mode)
    expected = expected_batch(lambda f: annotators.resize_to_target(annotators.to_rgb_uint8(f), (120, 80), mode), maps)
    assert result.shape == (2, 120, 80, 3)
    assert_same_maps(result, expected)


def test_resize_for_control_refuses_an_inpaint_hint(pack):
    (hint,) = pack.run("CNS_InpaintHint", image=PHOTOS, mask=torch.ones(1, HEIGHT, WIDTH))
    with pytest.raises(ValueError, match=r"negative values \(an inpaint hint\?\)"):
        pack.run("CNS_ResizeForControl", image=hint, width=64, height=64, resize_mode="Just Resize")


@pytest.mark.parametrize("mode", ["Just Resize", "Crop and Resize", "Resize and Fill"])
def test_pixel_perfect_resolution(pack, mode):
    annotators = pack.module("annotators")
    (value,) = pack.run("CNS_PixelPerfectResolution", image=PHOTOS, width=768, height=512, resize_mode=mode)
    assert value == annotators.pixel_perfect_resolution((HEIGHT, WIDTH), (512, 768), mode)
    # by hand: the 64x96 image scales by 8 either way (512/64 = 768/96), so 8 * 64
    assert value == 512
    (value,) = pack.run("CNS_PixelPerfectResolution", image=PHOTOS, width=512, height=512, resize_mode=mode)
    # k = 512/64 = 8 (height) or 512/96 (width): the larger to cover, the smaller to fit
    assert value == (round(512 / 96 * 64) if mode == "Resize and Fill" else 512)


# --- learned nodes -------------------------------------------------------------------------------

def random_weights(template: dict[str, torch.Tensor], seed: int, module_name: str = "") -> dict[str, torch.Tensor]:
    """random_state_dict's He-scaled random weights (activations neither vanish nor explode), with
    the annotator tests' per-network adjustments (TEED's input scale and read-outs), stored as
    float16 to keep the files small."""
    return {key: value.half() if value.is_floating_point() else value
            for key, value in adjust(module_name, random_state_dict(template, seed)).items()}


# (annotators module, weight-file constant, network class[, its arguments, or functions of the module
# that give them]) of every learned network.
NETWORKS = [
    ("hed", "HED_WEIGHTS", "HEDNetwork"),
    ("pidinet", "PIDINET_WEIGHTS", "PiDiNetNetwork"),
    ("teed", "TEED_WEIGHTS", "TEEDNetwork"),
    ("teed", "MTEED_WEIGHTS", "TEEDNetwork"),
    ("mlsd", "MLSD_WEIGHTS", "MLSDNetwork"),
    ("lineart", "LINEART_WEIGHTS", "LineartNetwork"),
    ("lineart", "LINEART_COARSE_WEIGHTS", "LineartNetwork"),
    ("lineart_anime", "LINEART_ANIME_WEIGHTS", "AnimeLineartNetwork"),
    ("openpose.networks", "BODY_WEIGHTS", "BodyPoseNetwork"),
    ("manga_line", "MANGA_LINE_WEIGHTS", "MangaLineNetwork"),
    ("midas", "MIDAS_WEIGHTS", "MiDaSNetwork"),
    ("normalbae", "NORMALBAE_WEIGHTS", "NormalBaeNetwork"),
    ("uniformer", "UNIFORMER_WEIGHTS", "UniFormerSegmentationNetwork"),
    ("depth_anything", "DEPTH_ANYTHING_V2_SMALL", "DepthAnythingV2Network", "vits"),
    ("leres", "LERES_WEIGHTS", "LeReSNetwork"),
    # ZoeDepth's BEiT-L (345 M parameters) narrowed: the loader reads the widths from the file
    ("zoe", "ZOE_WEIGHTS", "ZoeDepthNetwork", lambda zoe: zoe.ZoeSize(**ZOE_TEST_WIDTHS)),
    # last, so the networks above keep their seeds; V2's layout, which the V1 loader reads
    ("depth_anything", "DEPTH_ANYTHING_V1_SMALL", "DepthAnythingV2Network", "vits"),
    # OneFormer's Swin-L (219 M parameters) narrowed, with each dataset's class count
    ("oneformer", "ONEFORMER_ADE20K_WEIGHTS", "OneFormerNetwork", lambda oneformer: oneformer_test_config(oneformer, 150)),
    ("oneformer", "ONEFORMER_COCO_WEIGHTS", "OneFormerNetwork", lambda oneformer: oneformer_test_config(oneformer, 133)),
    # DWPose's YOLOX-L (54 M parameters) and RTMPose-l (34 M) narrowed; the loader reads the widths
    ("dwpose", "DETECTOR_WEIGHTS", "Yolox", lambda dwpose: dwpose.YoloxConfig.scaled(*YOLOX_TEST_FACTORS)),
    ("dwpose", "POSE_WEIGHTS", "Rtmpose",
     lambda dwpose: dwpose.RtmposeConfig(**RTMPOSE_TEST_WIDTHS, input_size=RTMPOSE_TEST_CROP)),
    ("dsine", "DSINE_WEIGHTS", "DsineNetwork"),
    ("anime_face_segment", "ANIME_FACE_WEIGHTS", "AnimeFaceSegmentNetwork"),
    ("anime_face_segment", "ISNET_WEIGHTS", "ISNet"),
]


def oneformer_test_config(oneformer, classes: int):
    """A narrow OneFormer (annotators.oneformer_network.OneFormerConfig) with `classes` classes."""
    network = importlib.import_module(oneformer.__package__ + ".oneformer_network")
    swin = importlib.import_module(oneformer.__package__ + ".swin_backbone")
    return network.OneFormerConfig(
        swin=swin.SwinConfig(32, (2, 2, 2, 2), (1, 2, 4, 8), 3), classes=classes, queries=6, hidden=32,
        task_tokens=oneformer.TASK_SEQUENCE_LENGTH, encoder_layers=1, encoder_feedforward=32, query_layers=1,
        decoder_layers=3, decoder_feedforward=32)


@pytest.fixture(scope="module")
def weights_folder(pack, tmp_path_factory):
    """Random weights for every learned network whose module exists, under the published names."""
    folder = tmp_path_factory.mktemp("annotators")
    for seed, (module_name, constant, class_name, *arguments) in enumerate(NETWORKS):
        if not pack.has(f"annotators.{module_name}"):
            continue
        module = pack.module(f"annotators.{module_name}")
        with torch.device("meta"):  # shapes only: no time spent on a random initialisation
            template = getattr(module, class_name)(*[a(module) if callable(a) else a for a in arguments]).state_dict()
        torch.save(random_weights(template, seed, module_name), folder / getattr(module, constant))
    if pack.has("annotators.dwpose"):
        save_dwpose_onnx_files(pack.module("annotators.dwpose"), folder)
    if pack.has("annotators.animal_pose"):
        save_ap10k_onnx_file(pack, folder, seed=len(NETWORKS))
    return folder


def save_ap10k_onnx_file(pack, folder, seed: int) -> None:
    """Animal Pose's rtmpose-m_ap10k_256.onnx: a narrow RTMPose with AP-10K's 17 keypoints and
    random weights, exported as DWPose's is (its detector is DWPose's yolox_l.onnx)."""
    dwpose, animal_pose = pack.module("annotators.dwpose"), pack.module("annotators.animal_pose")
    config = dwpose.RtmposeConfig(**RTMPOSE_TEST_WIDTHS, keypoints=len(animal_pose.AP10K_KEYPOINTS),
                                  input_size=AP10K_TEST_CROP)
    with torch.device("meta"):
        template = dwpose.Rtmpose(config).state_dict()
    network = dwpose.Rtmpose(config)
    network.load_state_dict(random_weights(template, seed, "dwpose"))
    save_pose_onnx(network.eval(), folder / animal_pose.POSE_ONNX)


def save_dwpose_onnx_files(dwpose, folder) -> None:
    """DWPose's default files, yolox_l.onnx and dw-ll_ucoco_384.onnx: the random checkpoints above
    exported as the published ONNX files were (workflows.random_models.save_detector_onnx and save_pose_onnx)."""
    networks = dwpose.load_dwpose([str(folder)], detector_file=dwpose.DETECTOR_WEIGHTS, pose_file=dwpose.POSE_WEIGHTS)
    save_detector_onnx(networks.detector, folder / dwpose.DETECTOR_ONNX, dwpose.DETECTOR_INPUT_SIZE)
    save_pose_onnx(networks.pose, folder / dwpose.POSE_ONNX)


def skip_unless_written(pack, module_name: str) -> None:
    if not pack.has(f"annotators.{module_name}"):
        pytest.skip(f"annotators/{module_name}.py is not written yet (another helper's task)")


@pytest.fixture
def annotators_folder(pack, weights_folder, monkeypatch):
    """ComfyUI's `annotators` model folder is the random-weights folder for this test."""
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(weights_folder)], set()))
    return weights_folder


def direct_network(pack, module_name: str, loader: str, folder, **options):
    return getattr(pack.module(f"annotators.{module_name}"), loader)([str(folder)], **options)


# Not AnyLine's defaults, so a swapped or ignored input shows.
ANYLINE_OPTIONS = dict(lineart_lower_bound=0.05, lineart_upper_bound=0.95, object_min_size=7, object_connectivity=2)
# (node id, node inputs, annotators module, loader, loader options, annotator function, its options)
LEARNED_CASES = [
    ("CNS_HED", dict(safe=False, scribble=False), "hed", "load_hed", {}, "hed", dict(safe=False, scribble=False)),
    ("CNS_HED", dict(safe=True, scribble=True), "hed", "load_hed", {}, "hed", dict(safe=True, scribble=True)),
    ("CNS_PiDiNet", dict(safe=True, scribble=False), "pidinet", "load_pidinet", {}, "pidinet", dict(safe=True, scribble=False)),
    ("CNS_TEED", dict(safe_steps=1), "teed", "load_teed", {}, "teed", dict(safe_steps=1)),
    ("CNS_TEED", dict(safe_steps=0), "teed", "load_teed", {}, "teed", dict(safe_steps=0)),
    ("CNS_MLSD", dict(score_threshold=0.05, distance_threshold=0.5), "mlsd", "load_mlsd", {}, "mlsd", dict(thr_v=0.05, thr_d=0.5)),
    ("CNS_Lineart", dict(style="realistic"), "lineart", "load_lineart", {}, "lineart", {}),
    ("CNS_Lineart", dict(style="coarse"), "lineart", "load_lineart", dict(coarse=True), "lineart", {}),
    ("CNS_LineartAnime", {}, "lineart_anime", "load_lineart_anime", {}, "lineart_anime", {}),
    ("CNS_MangaLine", {}, "manga_line", "load_manga_line", {}, "manga_line", {}),
    *[("CNS_AnyLine", dict(merge_with_lineart=merge, **ANYLINE_OPTIONS), "anyline", "load_anyline",
       dict(merge_with_lineart=merge), "anyline", ANYLINE_OPTIONS)
      for merge in ("lineart_standard", "lineart_realistic", "lineart_anime", "manga_line")],
    ("CNS_MiDaSDepth", {}, "midas", "load_midas", {}, "midas_depth", {}),
    ("CNS_MiDaSNormal", dict(background_threshold=0.2, z_component=3.0), "midas", "load_midas", {}, "midas_normal",
     dict(background_threshold=0.2, z_component=3.0)),
    ("CNS_NormalBAE", {}, "normalbae", "load_normalbae", {}, "normalbae", {}),
    ("CNS_DSINENormal", dict(fov=75.0, iterations=2), "dsine", "load_dsine", {}, "dsine", dict(fov=75.0, iterations=2)),
    ("CNS_UniFormerSegmentation", {}, "uniformer", "load_uniformer", {}, "uniformer_segmentation", {}),
    *[("CNS_AnimeFaceSegmentation", dict(remove_background=remove), "anime_face_segment", "load_anime_face_segment",
       dict(remove_background=remove), "anime_face_segment", {}) for remove in (False, True)],
    *[("CNS_OneFormerSegmentation", dict(dataset=dataset), "oneformer", "load_oneformer", dict(dataset=dataset),
       "oneformer_segmentation", dict(dataset=dataset)) for dataset in ("ade20k", "coco")],
    ("CNS_DepthAnythingV2", dict(model="small"), "depth_anything", "load_depth_anything", dict(size="small"),
     "depth_anything", {}),
    ("CNS_DepthAnything", dict(model="small"), "depth_anything", "load_depth_anything_v1", dict(size="small"),
     "depth_anything_v1", {}),
    ("CNS_LeReSDepth", dict(rm_nearest=0.0, rm_background=0.0), "leres", "load_leres", {}, "leres", {}),
    ("CNS_LeReSDepth", dict(rm_nearest=20.0, rm_background=30.5), "leres", "load_leres", {}, "leres",
     dict(remove_nearest=20.0, remove_background=30.5)),
    ("CNS_ZoeDepth", {}, "zoe", "load_zoe", {}, "zoe_depth", {}),
]
# Depth Anything V2 runs every image at a 518-pixel short side whatever the detect resolution
# (seconds per image on a CPU runner); the node only forwards, so the tests shrink it.
DEPTH_ANYTHING_TEST_INPUT_SIZE = 70
# ZoeDepth likewise runs every image at about 384 x 512 (its NETWORK_INPUT_SIZE), twice (flipped).
ZOE_TEST_INPUT_SIZE = (64, 96)


def shrink_fixed_network_inputs(pack, module_name: str, monkeypatch) -> None:
    """Networks that see every image at a fixed size whatever the detect resolution (seconds to
    minutes per image on a CPU runner) see small images here; the nodes only forward."""
    if module_name == "uniformer":  # rescales every image to a 512-pixel short side
        monkeypatch.setattr(pack.module("annotators.uniformer"), "RESCALE_LIMITS", (4 * LEARNED_RESOLUTION, LEARNED_RESOLUTION))
    if module_name == "depth_anything":
        monkeypatch.setattr(pack.module("annotators.depth_anything"), "INPUT_SIZE", DEPTH_ANYTHING_TEST_INPUT_SIZE)
    if module_name == "zoe":
        monkeypatch.setattr(pack.module("annotators.zoe"), "NETWORK_INPUT_SIZE", ZOE_TEST_INPUT_SIZE)
    if module_name == "oneformer":  # a 640- or 800-pixel short side
        models = pack.module("annotators.oneformer").ONEFORMER_MODELS
        for dataset, model in list(models.items()):
            monkeypatch.setitem(models, dataset, dataclasses.replace(
                model, short_side=LEARNED_RESOLUTION, long_side_limit=4 * LEARNED_RESOLUTION))


@pytest.mark.parametrize("case", LEARNED_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LEARNED_CASES)])
def test_learned_node_equals_its_annotator_image_by_image(pack, annotators_folder, case, monkeypatch):
    node_id, inputs, module_name, loader, loader_options, function, options = case
    skip_unless_written(pack, module_name)
    shrink_fixed_network_inputs(pack, module_name, monkeypatch)
    result = pack.run(node_id, image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, **inputs)[0]  # the map
    network = direct_network(pack, module_name, loader, annotators_folder, **loader_options)
    annotate = getattr(pack.module(f"annotators.{module_name}"), function)
    assert_same_maps(result, expected_batch(lambda f: annotate(f, network, LEARNED_RESOLUTION, **options), SMALL_PHOTOS))


def test_openpose_node_equals_the_annotator_with_its_keypoints(pack, annotators_folder):
    # the body network always sees 184-pixel-high input (v1.1's box size 368 x scale 0.5): the
    # cost is per image, whatever its size
    photos = SMALL_PHOTOS[:, :, :LEARNED_HEIGHT]
    image, keypoints, keypoints_json = pack.run("CNS_OpenPose", image=photos, resolution=LEARNED_RESOLUTION,
                                                include_body=True, include_hand=False, include_face=False)
    openpose = pack.module("annotators.openpose")
    networks = openpose.load_openpose([str(annotators_folder)])
    direct = [openpose.openpose(frame.numpy(), networks, LEARNED_RESOLUTION) for frame in photos]
    assert_same_maps(image, as_batch([pose_map for pose_map, _ in direct]))
    assert keypoints == [people for _, people in direct]
    assert json.loads(keypoints_json) == keypoints
    assert [(k["canvas_width"], k["canvas_height"]) for k in keypoints] == [(LEARNED_HEIGHT, LEARNED_HEIGHT)] * 2
    # random weights still link some keypoints into people, so the keypoints are not trivially []
    assert sum(len(k["people"]) for k in keypoints) > 0


@pytest.mark.parametrize("files", ["onnx", "checkpoints"])
def test_dwpose_node_equals_the_annotator_with_its_keypoints(pack, annotators_folder, files):
    skip_unless_written(pack, "dwpose")
    dwpose = pack.module("annotators.dwpose")
    detector_file, pose_file = ((dwpose.DETECTOR_ONNX, dwpose.POSE_ONNX) if files == "onnx"
                                else (dwpose.DETECTOR_WEIGHTS, dwpose.POSE_WEIGHTS))
    flags = dict(include_body=True, include_hand=True, include_face=False)
    image, keypoints, keypoints_json = pack.run("CNS_DWPose", image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION,
                                                bbox_detector=detector_file, pose_estimator=pose_file, **flags)
    networks = dwpose.load_dwpose([str(annotators_folder)], detector_file=detector_file, pose_file=pose_file)
    direct = [dwpose.dwpose(frame.numpy(), networks, LEARNED_RESOLUTION, **flags) for frame in SMALL_PHOTOS]
    assert_same_maps(image, as_batch([pose_map for pose_map, _ in direct]))
    assert keypoints == [people for _, people in direct]
    assert json.loads(keypoints_json) == keypoints
    people = [person for frame in keypoints for person in frame["people"]]
    assert people and all(person["face_keypoints_2d"] == [] and person["hand_left_keypoints_2d"] for person in people)


def test_animal_pose_node_equals_the_annotator_with_its_keypoints(pack, annotators_folder):
    skip_unless_written(pack, "animal_pose")
    animal_pose = pack.module("annotators.animal_pose")
    photos = torch.cat([SMALL_PHOTOS, SMALL_PHOTOS.flip(2)])
    image, keypoints, keypoints_json = pack.run("CNS_AnimalPose", image=photos, resolution=LEARNED_RESOLUTION,
                                                bbox_detector=animal_pose.DETECTOR_ONNX, pose_estimator=animal_pose.POSE_ONNX)
    networks = animal_pose.load_animal_pose([str(annotators_folder)])
    direct = [animal_pose.animal_pose(frame.numpy(), networks, LEARNED_RESOLUTION) for frame in photos]
    assert_same_maps(image, as_batch([pose_map for pose_map, _ in direct]))
    assert keypoints == [animals for _, animals in direct]
    assert json.loads(keypoints_json) == keypoints
    assert [(k["canvas_width"], k["canvas_height"]) for k in keypoints] == [(LEARNED_WIDTH, LEARNED_HEIGHT)] * 4
    assert sum(len(k["animals"]) for k in keypoints) > 0  # the random detector finds some animals


def test_draw_pose_keypoints_redraws_the_animal_pose_nodes_map(pack, annotators_folder):
    # Photos at their detect size (64 x 64 at resolution 64): the node draws at the image's size, so
    # drawing its keypoints again gives its map exactly.
    skip_unless_written(pack, "animal_pose")
    animal_pose = pack.module("annotators.animal_pose")
    photos = torch.cat([PHOTOS[:, :, :LEARNED_RESOLUTION], PHOTOS[:, :, -LEARNED_RESOLUTION:]])
    image, keypoints, _ = pack.run("CNS_AnimalPose", image=photos, resolution=LEARNED_RESOLUTION,
                                   bbox_detector=animal_pose.DETECTOR_ONNX, pose_estimator=animal_pose.POSE_ONNX)
    assert sum(len(k["animals"]) for k in keypoints) > 0
    (drawn,) = pack.run("CNS_DrawPoseKeypoints", width=0, height=0, include_body=True, include_hand=True,
                        include_face=True, pose_keypoint=keypoints)
    assert torch.equal(drawn, image)


@pytest.mark.parametrize("remove_background", [True, False])
def test_anime_face_segmentation_mask_is_the_annotators(pack, annotators_folder, remove_background):
    skip_unless_written(pack, "anime_face_segment")
    module = pack.module("annotators.anime_face_segment")
    _, mask = pack.run("CNS_AnimeFaceSegmentation", image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION,
                       remove_background=remove_background)
    segmenter = module.load_anime_face_segment([str(annotators_folder)], remove_background=remove_background)
    expected = expected_batch(lambda f: module.anime_face_segment_with_mask(f, segmenter, LEARNED_RESOLUTION)[1],
                              SMALL_PHOTOS)
    assert mask.shape == SMALL_PHOTOS.shape[:3] and mask.dtype == torch.float32
    assert torch.equal(mask, expected)
    assert bool((mask == 1).all()) != remove_background  # ISNet's mask is not all ones


def test_animal_pose_node_defaults_and_file_choices(pack):
    learned = pack.module("nodes.preprocessors_learned")
    dwpose, animal_pose = pack.module("annotators.dwpose"), pack.module("annotators.animal_pose")
    assert pack.defaults("CNS_AnimalPose") == {"resolution": 512, "bbox_detector": dwpose.DETECTOR_ONNX,
                                               "pose_estimator": animal_pose.POSE_ONNX}
    assert tuple(learned.ANIMAL_POSE_POSE_FILES) == animal_pose.POSE_FILES
    assert all(getattr(animal_pose, constant) == name for name, constant in learned.ANIMAL_POSE_POSE_FILES.items())
    assert animal_pose.DETECTOR_FILES == dwpose.DETECTOR_FILES == tuple(learned.DWPOSE_DETECTOR_FILES)


def test_dwpose_node_defaults_draw_every_part(pack):
    dwpose = pack.module("annotators.dwpose")
    assert pack.defaults("CNS_DWPose") == {"resolution": 512, "include_body": True, "include_hand": True,
                                           "include_face": True, "bbox_detector": dwpose.DETECTOR_ONNX,
                                           "pose_estimator": dwpose.POSE_ONNX}


def test_dwpose_node_file_choices_are_the_modules(pack):
    """The node writes its file choices out (so it imports without the annotator): they are the
    module's, default first, each mapped to the constant that names it."""
    learned = pack.module("nodes.preprocessors_learned")
    dwpose = pack.module("annotators.dwpose")
    for choices, files in ((learned.DWPOSE_DETECTOR_FILES, dwpose.DETECTOR_FILES),
                           (learned.DWPOSE_POSE_FILES, dwpose.POSE_FILES)):
        assert tuple(choices) == files
        assert all(getattr(dwpose, constant) == name for name, constant in choices.items())


def test_drawing_the_openpose_nodes_keypoints_gives_back_its_map(pack, annotators_folder):
    """OpenPose's pose_keypoint into Draw Pose Keypoints redraws OpenPose's own maps (detected at
    the image's own size, resolution 0, so neither is resized): the JSON keeps every point it
    drew. From the JSON text too, and at twice the size."""
    photos = SMALL_PHOTOS[:, :, :LEARNED_HEIGHT]
    image, keypoints, keypoints_json = pack.run("CNS_OpenPose", image=photos, resolution=0,
                                                include_body=True, include_hand=False, include_face=False)
    defaults = pack.defaults("CNS_DrawPoseKeypoints")
    (drawn,) = pack.run("CNS_DrawPoseKeypoints", pose_keypoint=keypoints, **defaults)
    assert torch.equal(drawn, image)
    assert sum(len(k["people"]) for k in keypoints) > 0 and len(torch.unique(drawn)) > 1  # not blank maps
    (from_text,) = pack.run("CNS_DrawPoseKeypoints", keypoints_json=keypoints_json, **defaults)
    assert torch.equal(from_text, image)

    draw_poses = pack.module("annotators.openpose").draw_poses
    poses_from_json = pack.module("annotators.openpose.keypoints_json").poses_from_json
    side = 2 * LEARNED_HEIGHT
    (doubled,) = pack.run("CNS_DrawPoseKeypoints", pose_keypoint=keypoints, **{**defaults, "width": side, "height": side})
    expected = [draw_poses(poses_from_json(frame, (frame["canvas_width"], frame["canvas_height"])), side, side)
                for frame in keypoints]
    assert torch.equal(doubled, as_batch(expected))


def test_draw_pose_keypoints_refuses_keypoints_given_twice(pack):
    frame = {"people": [], "canvas_width": 64, "canvas_height": 64}
    with pytest.raises(ValueError, match="give the keypoints either as pose_keypoint or as keypoints_json text, not both"):
        pack.run("CNS_DrawPoseKeypoints", pose_keypoint=[frame], keypoints_json=json.dumps(frame),
                 **pack.defaults("CNS_DrawPoseKeypoints"))


def test_learned_node_declarations_match_their_annotator_modules(pack):
    """Each learned node's loader and function exist, and its description names the files its
    module loads (descriptions are written out so the node module imports without them)."""
    learned = pack.module("nodes.preprocessors_learned")
    checked = []
    for node_id, (cls, _) in learned.NODES.items():
        if node_id == "CNS_OpenPose":
            models = [learned.openpose_model(True, True)]
        elif node_id == "CNS_DWPose":
            models = [learned.dwpose_model(detector, pose)
                      for detector in learned.DWPOSE_DETECTOR_FILES for pose in learned.DWPOSE_POSE_FILES]
        elif node_id == "CNS_AnimalPose":
            models = [learned.animal_pose_model(detector, pose)
                      for detector in learned.DWPOSE_DETECTOR_FILES for pose in learned.ANIMAL_POSE_POSE_FILES]
        elif node_id == "CNS_AnyLine":  # MTEED and the line-art nodes' networks
            models = [model for choice in learned.ANYLINE_LINE_ART_MODELS for model in learned.anyline_models(choice)]
        else:
            models = list(cls.MODELS.values()) if hasattr(cls, "MODELS") else [cls.MODEL]
        if not pack.has(f"annotators.{models[0].module}"):
            continue
        if node_id not in ("CNS_OpenPose", "CNS_DWPose", "CNS_AnimalPose", "CNS_AnyLine"):  # they run a function of their own
            assert callable(getattr(pack.module(f"annotators.{models[0].module}"), cls.RUN))
        for model in models:
            module = pack.module(f"annotators.{model.module}")
            assert callable(getattr(module, model.loader))
            for constant in model.weight_constants:
                assert getattr(module, constant) in cls.DESCRIPTION, f"{node_id}'s description names another file"
        checked.append(node_id)
    assert set(LEARNED) <= set(checked)
    # Depth Anything V2's files come from other repositories than lllyasviel/Annotators (its module's
    # WEIGHTS_REPOS): the description names each file with its repository.
    depth_anything = pack.module("annotators.depth_anything")
    description = learned.CNS_DepthAnythingV2.DESCRIPTION
    for size, model in learned.CNS_DepthAnythingV2.MODELS.items():
        assert dict(model.options) == {"size": size}
        file_name = depth_anything.MODEL_FILES[size]
        assert f"{file_name} ({size}) from huggingface.co/{depth_anything.WEIGHTS_REPOS[file_name]}" in description
    assert "lllyasviel" not in description
    assert pack.defaults("CNS_DepthAnythingV2")["model"] == depth_anything.DEFAULT_MODEL == "large"
    # Depth Anything V1's files are in a folder of the authors' Space (WEIGHTS_REPOS: spaces/owner/name/folder).
    description = learned.CNS_DepthAnything.DESCRIPTION
    for size, model in learned.CNS_DepthAnything.MODELS.items():
        assert dict(model.options) == {"size": size} and model.loader == "load_depth_anything_v1"
        assert f"{depth_anything.V1_MODEL_FILES[size]} ({size})" in description
    space, folder = depth_anything.WEIGHTS_REPOS[depth_anything.DEPTH_ANYTHING_V1_LARGE].rsplit("/", 1)
    assert f"from huggingface.co/{space} (folder {folder})" in description and "lllyasviel" not in description
    assert pack.defaults("CNS_DepthAnything") == {"resolution": 512, "model": "large"}
    if pack.has("annotators.midas"):
        assert learned.MIDAS_NORMAL_BACKGROUND_THRESHOLD == pack.module("annotators.midas").DEFAULT_NORMAL_BACKGROUND_THRESHOLD
    # TEED's and MTEED's files are in folders of other repositories (teed.WEIGHTS_REPOS: owner/name/folder).
    teed = pack.module("annotators.teed")
    for node, file_name in ((learned.CNS_TEED, teed.TEED_WEIGHTS), (learned.CNS_AnyLine, teed.MTEED_WEIGHTS)):
        owner, name, folder = teed.WEIGHTS_REPOS[file_name].split("/")
        assert f"{file_name} from huggingface.co/{owner}/{name} (folder {folder})" in node.DESCRIPTION
    assert "lllyasviel" not in learned.CNS_TEED.DESCRIPTION
    # AnyLine: each choice loads MTEED plus exactly the line-art file its annotator module names.
    anyline = pack.module("annotators.anyline")
    assert list(learned.ANYLINE_LINE_ART_MODELS) == list(anyline.MERGE_CHOICES)
    assert (learned.MTEED.module, learned.MTEED.loader, dict(learned.MTEED.options)) == ("teed", "load_teed", {"mteed": True})
    for merge in anyline.MERGE_CHOICES:
        models = learned.anyline_models(merge)
        source = anyline.LEARNED_LINE_ART.get(merge)
        files = [getattr(model.import_module(), c) for model in models for c in model.weight_constants]
        assert files == [teed.MTEED_WEIGHTS] + ([source.weights] if source else [])
        assert models[0] is learned.MTEED and all(model.loader == source.loader.__name__ for model in models[1:])
    assert pack.defaults("CNS_AnyLine") == {"resolution": 1280, "merge_with_lineart": "lineart_standard",
                                            "lineart_lower_bound": 0.0, "lineart_upper_bound": 1.0,
                                            "object_min_size": 36, "object_connectivity": 1}
    assert pack.defaults("CNS_TEED") == {"resolution": 512, "safe_steps": 2}
    # ZoeDepth: as comfyui_controlnet_aux's Zoe node, the detect resolution is the only input.
    assert pack.defaults("CNS_ZoeDepth") == {"resolution": 512}
    # LeReS: comfyui_controlnet_aux's input names and defaults (0 = off), percentages up to the annotator's maximum.
    assert pack.defaults("CNS_LeReSDepth") == {"resolution": 512, "rm_nearest": 0.0, "rm_background": 0.0}
    leres_inputs = learned.CNS_LeReSDepth.INPUT_TYPES()["required"]
    assert leres_inputs["rm_nearest"][1]["max"] == leres_inputs["rm_background"][1]["max"] == pack.module(
        "annotators.leres").MAX_PERCENT == 100.0


# --- the cache and ComfyUI's model management ---------------------------------------------------

HED_INPUTS = dict(resolution=LEARNED_RESOLUTION, safe=False, scribble=False)


def hed_keys(pack) -> list:
    return [key for key in pack.models.cached_keys() if key[0] == "hed"]


def test_the_network_is_loaded_once_and_released_by_model_management(pack, annotators_folder, monkeypatch):
    mm = pack.host.comfy.model_management
    hed_module = pack.module("annotators.hed")
    loads = []
    original_loader = hed_module.load_hed
    monkeypatch.setattr(hed_module, "load_hed", lambda *args, **kwargs: loads.append(kwargs) or original_loader(*args, **kwargs))

    mm.unload_all_models()
    assert hed_keys(pack) == []
    (first,) = pack.run("CNS_HED", image=SMALL_PHOTOS, **HED_INPUTS)
    assert len(loads) == 1
    assert loads[0] == {"device": mm.unet_offload_device(), "dtype": torch.float32}
    (key,) = hed_keys(pack)
    assert key[3][0][0] == str(annotators_folder / hed_module.HED_WEIGHTS)
    patcher = pack.models._cache[key].patcher
    assert patcher.load_device == mm.get_torch_device()
    assert patcher.offload_device == mm.unet_offload_device()
    assert any(model is patcher for model in mm.loaded_models())

    (second,) = pack.run("CNS_HED", image=SMALL_PHOTOS[:1], **HED_INPUTS)
    assert len(loads) == 1, "the second run loaded the network again"
    assert torch.equal(second, first[:1])

    network = pack.models._cache[key].network
    mm.unload_all_models()  # ComfyUI's "unload models" / free memory
    assert not any(model is patcher for model in mm.loaded_models())
    assert all(p.device.type == "meta" for p in network.parameters()), "unloading kept the weights in memory"
    assert hed_keys(pack) == [], "the cache still holds a network ComfyUI unloaded"
    (third,) = pack.run("CNS_HED", image=SMALL_PHOTOS, **HED_INPUTS)
    assert len(loads) == 2
    assert torch.equal(third, first)


def test_a_replaced_weight_file_is_read_again(pack, annotators_folder, tmp_path, monkeypatch):
    hed_module = pack.module("annotators.hed")
    folder = tmp_path / "annotators"
    folder.mkdir()
    (folder / hed_module.HED_WEIGHTS).write_bytes((annotators_folder / hed_module.HED_WEIGHTS).read_bytes())
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(folder)], set()))
    (before,) = pack.run("CNS_HED", image=SMALL_PHOTOS, **HED_INPUTS)
    torch.save(random_weights(hed_module.HEDNetwork().state_dict(), seed=99), folder / hed_module.HED_WEIGHTS)
    (after,) = pack.run("CNS_HED", image=SMALL_PHOTOS, **HED_INPUTS)
    network = hed_module.load_hed([str(folder)])
    assert not torch.equal(before, after)
    assert_same_maps(after, expected_batch(lambda f: hed_module.hed(f, network, LEARNED_RESOLUTION), SMALL_PHOTOS))


def test_lineart_styles_are_separate_networks(pack, annotators_folder):
    pack.run("CNS_Lineart", image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION, style="realistic")
    pack.run("CNS_Lineart", image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION, style="coarse")
    files = {key[3][0][0].rsplit("/", 1)[-1] for key in pack.models.cached_keys() if key[0] == "lineart"}
    lineart = pack.module("annotators.lineart")
    assert {lineart.LINEART_WEIGHTS, lineart.LINEART_COARSE_WEIGHTS} <= files


@pytest.mark.parametrize("merge, node_id, inputs, module_name, constant", [
    ("lineart_realistic", "CNS_Lineart", dict(style="realistic"), "lineart", "LINEART_WEIGHTS"),
    ("lineart_anime", "CNS_LineartAnime", {}, "lineart_anime", "LINEART_ANIME_WEIGHTS"),
    ("manga_line", "CNS_MangaLine", {}, "manga_line", "MANGA_LINE_WEIGHTS"),
])
def test_anyline_and_the_line_art_node_share_one_network(pack, annotators_folder, merge, node_id, inputs, module_name,
                                                         constant):
    line_art_file = str(annotators_folder / getattr(pack.module(f"annotators.{module_name}"), constant))

    def entries_reading_the_line_art_file():
        return [key for key in pack.models.cached_keys() if any(path == line_art_file for path, _, _ in key[3])]

    pack.host.comfy.model_management.unload_all_models()  # released networks leave the cache
    assert entries_reading_the_line_art_file() == []
    pack.run("CNS_AnyLine", image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION, merge_with_lineart=merge,
             **ANYLINE_OPTIONS)
    pack.run(node_id, image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION, **inputs)
    assert len(entries_reading_the_line_art_file()) == 1


# --- missing weights -----------------------------------------------------------------------------

def missing_message(pack, file_name: str, folder) -> str:
    """The annotators' own MissingWeightsError message for `file_name` in `folder`."""
    weights = pack.module("annotators.weights")
    with pytest.raises(weights.MissingWeightsError) as error:
        weights.find_weights(file_name, [str(folder)])
    return str(error.value)


@pytest.mark.parametrize("node_id, inputs, module_name, constant", [
    ("CNS_HED", dict(safe=False, scribble=False), "hed", "HED_WEIGHTS"),
    ("CNS_Lineart", dict(style="coarse"), "lineart", "LINEART_COARSE_WEIGHTS"),
    ("CNS_OpenPose", dict(include_body=True, include_hand=False, include_face=False), "openpose.networks", "BODY_WEIGHTS"),
])
def test_missing_weights_raise_the_annotators_message_unchanged(pack, tmp_path, monkeypatch, node_id, inputs, module_name, constant):
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    file_name = getattr(pack.module(f"annotators.{module_name}"), constant)
    with pytest.raises(pack.module("annotators.weights").MissingWeightsError) as error:
        pack.run(node_id, image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, **inputs)
    assert str(error.value) == missing_message(pack, file_name, tmp_path)
    assert f"'{file_name}' not found" in str(error.value)
    assert f"https://huggingface.co/lllyasviel/Annotators and put it in {tmp_path}" in str(error.value)


@pytest.mark.parametrize("case", LEARNED_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(LEARNED_CASES)])
def test_learned_node_missing_weights_message_is_its_loaders(pack, tmp_path, monkeypatch, case):
    """Whatever repository a file is published in, the node looks for it and names it as the
    annotator's own loader does (the model cache reads the module's WEIGHTS_REPOS)."""
    node_id, inputs, module_name, loader, loader_options, _, _ = case
    skip_unless_written(pack, module_name)
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    weights = pack.module("annotators.weights")
    with pytest.raises(weights.MissingWeightsError) as expected:
        direct_network(pack, module_name, loader, tmp_path, **loader_options)
    with pytest.raises(weights.MissingWeightsError) as error:
        pack.run(node_id, image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, **inputs)
    assert str(error.value) == str(expected.value)


@pytest.mark.parametrize("model", ["small", "base", "large"])
def test_depth_anything_missing_weights_name_their_repository(pack, tmp_path, monkeypatch, model):
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    depth_anything = pack.module("annotators.depth_anything")
    file_name = depth_anything.MODEL_FILES[model]
    repo = depth_anything.WEIGHTS_REPOS[file_name]
    with pytest.raises(pack.module("annotators.weights").MissingWeightsError) as error:
        pack.run("CNS_DepthAnythingV2", image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, model=model)
    weights = pack.module("annotators.weights")
    with pytest.raises(weights.MissingWeightsError) as expected:
        weights.find_weights(file_name, [str(tmp_path)], repo=repo)
    assert str(error.value) == str(expected.value)
    assert f"'{file_name}' not found" in str(error.value)
    assert f"https://huggingface.co/{repo} and put it in {tmp_path}" in str(error.value)


def test_depth_anything_reads_controlnet_aux_layout(pack, weights_folder, tmp_path, monkeypatch):
    """comfyui_controlnet_aux's ckpts/<repo>/<file> below an annotators folder is found too."""
    depth_anything = pack.module("annotators.depth_anything")
    file_name = depth_anything.DEPTH_ANYTHING_V2_SMALL
    repo_folder = tmp_path / "ckpts" / depth_anything.WEIGHTS_REPOS[file_name]
    repo_folder.mkdir(parents=True)
    (repo_folder / file_name).symlink_to(weights_folder / file_name)
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    monkeypatch.setattr(depth_anything, "INPUT_SIZE", DEPTH_ANYTHING_TEST_INPUT_SIZE)
    pack.host.comfy.model_management.unload_all_models()  # so the node loads from this folder
    loads = []
    original_loader = depth_anything.load_depth_anything
    monkeypatch.setattr(depth_anything, "load_depth_anything",
                        lambda folders, **options: loads.append(folders) or original_loader(folders, **options))
    (result,) = pack.run("CNS_DepthAnythingV2", image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, model="small")
    assert loads == [[str(tmp_path)]]
    network = depth_anything.load_depth_anything([str(weights_folder)], size="small")
    assert_same_maps(result, expected_batch(
        lambda f: depth_anything.depth_anything(f, network, LEARNED_RESOLUTION), SMALL_PHOTOS))


def test_depth_anything_cached_network_does_not_hide_a_missing_file(pack, annotators_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(pack.module("annotators.depth_anything"), "INPUT_SIZE", DEPTH_ANYTHING_TEST_INPUT_SIZE)
    pack.run("CNS_DepthAnythingV2", image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION, model="small")
    assert any(key[0] == "depth_anything" for key in pack.models.cached_keys())
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    with pytest.raises(pack.module("annotators.weights").MissingWeightsError) as error:
        pack.run("CNS_DepthAnythingV2", image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION, model="small")
    assert "https://huggingface.co/depth-anything/Depth-Anything-V2-Small and put it in" in str(error.value)


@pytest.mark.parametrize("node_id, inputs, file_name, url", [
    ("CNS_TEED", dict(safe_steps=2), "7_model.pth",
     "https://huggingface.co/bdsqlsz/qinglong_controlnet-lllite/tree/main/Annotators"),
    ("CNS_AnyLine", dict(merge_with_lineart="lineart_standard", **ANYLINE_OPTIONS), "MTEED.pth",
     "https://huggingface.co/TheMistoAI/MistoLine/tree/main/Anyline"),
])
def test_teed_and_anyline_missing_weights_name_their_repository_folder(pack, tmp_path, monkeypatch, node_id, inputs,
                                                                        file_name, url):
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    with pytest.raises(pack.module("annotators.weights").MissingWeightsError) as error:
        pack.run(node_id, image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, **inputs)
    assert str(error.value) == (
        f"annotator weights '{file_name}' not found. Download {file_name} from {url} and put it in {tmp_path} "
        f"(looked in: {tmp_path}). Nothing is downloaded automatically.")


def test_anyline_needs_the_line_art_file_only_when_merging_it(pack, annotators_folder, tmp_path, monkeypatch):
    teed = pack.module("annotators.teed")
    (tmp_path / teed.MTEED_WEIGHTS).symlink_to(annotators_folder / teed.MTEED_WEIGHTS)
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    (result,) = pack.run("CNS_AnyLine", image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION,
                         merge_with_lineart="lineart_standard", **ANYLINE_OPTIONS)
    assert result.shape == SMALL_PHOTOS[:1].shape
    with pytest.raises(pack.module("annotators.weights").MissingWeightsError) as error:
        pack.run("CNS_AnyLine", image=SMALL_PHOTOS[:1], resolution=LEARNED_RESOLUTION,
                 merge_with_lineart="lineart_anime", **ANYLINE_OPTIONS)
    assert str(error.value) == missing_message(pack, pack.module("annotators.lineart_anime").LINEART_ANIME_WEIGHTS, tmp_path)


def test_teed_reads_comfyui_controlnet_aux_layout(pack, weights_folder, tmp_path, monkeypatch):
    """comfyui_controlnet_aux keeps 7_model.pth as ckpts/bdsqlsz/qinglong_controlnet-lllite/Annotators/."""
    teed = pack.module("annotators.teed")
    repo_folder = tmp_path.joinpath("ckpts", *teed.WEIGHTS_REPOS[teed.TEED_WEIGHTS].split("/"))
    repo_folder.mkdir(parents=True)
    (repo_folder / teed.TEED_WEIGHTS).symlink_to(weights_folder / teed.TEED_WEIGHTS)
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    (result,) = pack.run("CNS_TEED", image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, safe_steps=2)
    (key,) = [key for key in pack.models.cached_keys() if key[0] == "teed" and key[3][0][0].startswith(str(tmp_path))]
    assert key[3][0][0] == str(repo_folder / teed.TEED_WEIGHTS)
    network = teed.load_teed([str(weights_folder)])
    assert_same_maps(result, expected_batch(lambda f: teed.teed(f, network, LEARNED_RESOLUTION), SMALL_PHOTOS))


def test_openpose_hands_need_their_own_file(pack, annotators_folder, tmp_path, monkeypatch):
    networks = pack.module("annotators.openpose.networks")
    (tmp_path / networks.BODY_WEIGHTS).symlink_to(annotators_folder / networks.BODY_WEIGHTS)
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    with pytest.raises(pack.module("annotators.weights").MissingWeightsError) as error:
        pack.run("CNS_OpenPose", image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, include_body=True, include_hand=True, include_face=False)
    assert str(error.value) == missing_message(pack, networks.HAND_WEIGHTS, tmp_path)


class LoaderCalled(Exception):
    pass


@pytest.mark.parametrize("include_hand, include_face", [(True, False), (False, True), (True, True)])
def test_openpose_loads_hand_and_face_networks_only_when_asked(pack, tmp_path, monkeypatch, include_hand, include_face):
    """The files each choice needs are looked up and the loader is asked for those networks
    (a stub loader stops the run: random hand and face networks are slow on a CPU)."""
    networks = pack.module("annotators.openpose.networks")
    for file_name in (networks.BODY_WEIGHTS, networks.HAND_WEIGHTS, networks.FACE_WEIGHTS):
        (tmp_path / file_name).write_bytes(b"")  # found by name; the stub never reads them
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))

    def stub_loader(folders, **options):
        raise LoaderCalled(options)

    monkeypatch.setattr(networks, "load_openpose", stub_loader)
    with pytest.raises(LoaderCalled) as called:
        pack.run("CNS_OpenPose", image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, include_body=True,
                 include_hand=include_hand, include_face=include_face)
    (options,) = called.value.args
    assert options == {"device": pack.host.comfy.model_management.unet_offload_device(), "dtype": torch.float32,
                       "hands": include_hand, "face": include_face}


# --- Any Preprocessor ------------------------------------------------------------------------------

ANY = "CNS_AnyPreprocessor"
ANY_RESOLUTION = 128  # not the default 512, so an ignored resolution shows
# Learned names whose network is not in the random-weights folder: the large and base Depth Anything
# files would be hundreds of MB, and random hand and face networks are slow on a CPU. Their files
# are checked by test_any_preprocessor_loads_the_batch_clis_files.
ANY_NAMES_WITHOUT_TEST_NETWORKS = {"openpose_hand", "openpose_face", "openpose_full", "depth_anything_v1",
                                   "depth_anything_v1_base", "depth_anything_v2", "depth_anything_v2_base"}


def test_any_preprocessor_offers_none_and_the_batch_clis_names(pack):
    kind, options = pack.node_class(ANY).INPUT_TYPES()["required"]["preprocessor"]
    assert kind[0] == "none"
    assert sorted(kind[1:]) == sorted([*batch_cli.ANNOTATORS, *batch_cli.LEARNED])
    assert options["default"] == "canny"


def test_every_photo_preprocessor_node_has_a_name(pack):
    """Every annotator node whose only other inputs have defaults (not Inpaint Hint: a mask; not
    Colourize Segmentation: a label image) is reachable, and a name's settings are valid inputs."""
    any_module = pack.module("nodes.preprocessors_any")
    annotator_node = pack.module("nodes.preprocessors_weight_free").AnnotatorNode
    photo_nodes = {cls for node_id, cls in pack.preprocessors.NODE_CLASS_MAPPINGS.items()
                   if issubclass(cls, annotator_node) and node_id not in ("CNS_InpaintHint", "CNS_ColorizeSegmentation")}
    assert {node for node, _ in any_module.PREPROCESSORS.values()} == photo_nodes
    for name, (node, implied) in any_module.PREPROCESSORS.items():
        required = node.INPUT_TYPES()["required"]
        for input_name, value in implied.items():
            kind, _ = required[input_name]
            assert (value in kind) if isinstance(kind, list) else (kind == "BOOLEAN" and isinstance(value, bool)), (name, input_name)


def test_any_preprocessor_resolution_is_ignored_only_by_the_own_size_nodes(pack):
    any_module = pack.module("nodes.preprocessors_any")
    without = {node.__name__ for node, _ in any_module.PREPROCESSORS.values()
               if "resolution" not in node.INPUT_TYPES()["required"]}
    assert without == {"CNS_Tile", "CNS_TTPlanetTileGuidedFilter", "CNS_TTPlanetTileSimple", "CNS_NormalFromDepth"}
    tooltip = pack.node_class(ANY).INPUT_TYPES()["required"]["resolution"][1]["tooltip"]
    assert "Tile, TTPlanet Tile and Normal from Depth work at the image's own size and ignore it" in tooltip


@pytest.mark.parametrize("name", sorted(batch_cli.ANNOTATORS))
def test_any_preprocessor_equals_the_batch_cli_weight_free(pack, name):
    """The node's defaults and the annotator functions' defaults, reached by two paths, agree."""
    batch = pack.module("annotators.batch")
    images = depth_batch() if name == "normal_from_depth" else PHOTOS
    (result,) = pack.run(ANY, image=images, preprocessor=name, resolution=ANY_RESOLUTION)
    takes_resolution = "resolution" in batch.accepted_parameters(batch.ANNOTATORS[name])
    annotate = batch.prepare(name, {"resolution": ANY_RESOLUTION} if takes_resolution else {})
    assert_same_maps(result, expected_batch(annotate, images))


@pytest.mark.parametrize("name", sorted(set(batch_cli.LEARNED) - ANY_NAMES_WITHOUT_TEST_NETWORKS))
def test_any_preprocessor_equals_the_batch_cli_learned(pack, annotators_folder, name, monkeypatch):
    batch = pack.module("annotators.batch")
    shrink_fixed_network_inputs(pack, batch.LEARNED[name].module, monkeypatch)
    (result,) = pack.run(ANY, image=SMALL_PHOTOS, preprocessor=name, resolution=LEARNED_RESOLUTION)
    annotate = batch.prepare(name, {"resolution": LEARNED_RESOLUTION}, [str(annotators_folder)])

    def condition_map(frame):
        result = annotate(frame)
        return result[0] if isinstance(result, tuple) else result  # OpenPose: (map, keypoints)

    assert_same_maps(result, expected_batch(condition_map, SMALL_PHOTOS))


# --- All Preprocessors ----------------------------------------------------------------------------

ALL = "CNS_AllPreprocessors"


def batch_cli_maps(pack, name: str, folders=()) -> torch.Tensor:
    """Preprocessor `name`'s maps of SMALL_PHOTOS at LEARNED_RESOLUTION, through the batch CLI."""
    batch = pack.module("annotators.batch")
    if name in batch.LEARNED:
        annotate = batch.prepare(name, {"resolution": LEARNED_RESOLUTION}, [str(f) for f in folders])
    else:
        takes_resolution = "resolution" in batch.accepted_parameters(batch.ANNOTATORS[name])
        annotate = batch.prepare(name, {"resolution": LEARNED_RESOLUTION} if takes_resolution else {})

    def condition_map(frame):
        result = annotate(frame)
        return result[0] if isinstance(result, tuple) else result  # OpenPose: (map, keypoints)

    return expected_batch(condition_map, SMALL_PHOTOS)


def test_all_preprocessors_weight_free_are_each_names_maps_in_turn(pack):
    weight_free = [name for name in pack.module("nodes.preprocessors_any").PREPROCESSORS
                   if name in batch_cli.ANNOTATORS and name != "normal_from_depth"]
    maps, names, skipped = pack.run(ALL, image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, learned=False)
    assert names.split("\n") == weight_free
    assert sorted(weight_free) == sorted(set(batch_cli.ANNOTATORS) - {"normal_from_depth"})
    assert skipped == ""
    expected = torch.cat([batch_cli_maps(pack, name) for name in weight_free])
    assert maps.shape == expected.shape
    assert torch.equal(maps, expected)


def test_all_preprocessors_skip_learned_ones_without_files_and_say_where_to_put_them(pack, weights_folder, tmp_path, monkeypatch):
    """Only TEED's file is there: TEED runs after the weight-free ones, every other learned name is
    skipped, grouped by the message its own Any Preprocessor run gives."""
    weights, teed = pack.module("annotators.weights"), pack.module("annotators.teed")
    found = weights.find_weights(teed.TEED_WEIGHTS, [str(weights_folder)], teed.WEIGHTS_REPOS[teed.TEED_WEIGHTS])
    os.link(found, tmp_path / teed.TEED_WEIGHTS)
    monkeypatch.setitem(pack.host.folder_paths.folder_names_and_paths, "annotators", ([str(tmp_path)], set()))
    any_module = pack.module("nodes.preprocessors_any")
    photo_names = [name for name in any_module.PREPROCESSORS if name != "normal_from_depth"]
    expected_skipped = {}
    for name in photo_names:
        if name in batch_cli.LEARNED and name != "teed":
            with pytest.raises(weights.MissingWeightsError) as missing:
                pack.run(ANY, image=SMALL_PHOTOS, preprocessor=name, resolution=LEARNED_RESOLUTION)
            expected_skipped.setdefault(str(missing.value), []).append(name)
    ran = [name for name in photo_names if name in batch_cli.ANNOTATORS or name == "teed"]

    maps, names, skipped = pack.run(ALL, image=SMALL_PHOTOS, resolution=LEARNED_RESOLUTION, learned=True)
    assert names.split("\n") == ran
    assert skipped.split("\n") == [f"{', '.join(group)}: {message}" for message, group in expected_skipped.items()]
    assert len(expected_skipped) < len(photo_names) - len(ran)  # names sharing a file share a line
    teed_at = ran.index("teed") * len(SMALL_PHOTOS)
    assert_same_maps(maps[teed_at:teed_at + len(SMALL_PHOTOS)], batch_cli_maps(pack, "teed", [tmp_path]))
    assert maps.shape[0] == len(ran) * len(SMALL_PHOTOS)


class NetworkAsked(Exception):
    pass


@pytest.mark.parametrize("name", sorted(batch_cli.LEARNED))
def test_any_preprocessor_loads_the_batch_clis_files(pack, monkeypatch, name):
    """The network the node asks model management for reads the files the batch CLI loads."""
    def stop(*models):
        raise NetworkAsked(models)

    for function in ("learned_network", "learned_networks"):
        monkeypatch.setattr(pack.module("nodes.preprocessors_learned"), function, stop)
    with pytest.raises(NetworkAsked) as asked:
        pack.run(ANY, image=SMALL_PHOTOS, preprocessor=name, resolution=LEARNED_RESOLUTION)
    (models,) = asked.value.args
    files = [getattr(model.import_module(), constant) for model in models for constant in model.weight_constants]
    batch = pack.module("annotators.batch")
    assert files == batch.weight_files(batch.LEARNED[name])


def test_any_preprocessor_none_passes_the_image_through(pack):
    (result,) = pack.run(ANY, image=PHOTOS, preprocessor="none", resolution=ANY_RESOLUTION)
    assert result is PHOTOS


def test_any_preprocessor_refuses_an_unknown_name(pack):
    with pytest.raises(ValueError) as error:
        pack.run(ANY, image=PHOTOS, preprocessor="cany", resolution=ANY_RESOLUTION)
    message = str(error.value)
    assert message.startswith("unknown preprocessor 'cany'; choose one of: none, binary, canny, ")
    assert message.endswith(", normalbae, dsine, uniformer, oneformer_ade20k, oneformer_coco, anime_face_segment, anime_face_segment_with_background")


# --- OneFormer --------------------------------------------------------------------------------------

def test_oneformer_task_tokens_are_clips_bpe_of_the_task(pack):
    """OneFormer feeds "The task is semantic" through CLIP's BPE tokenizer (its SimpleTokenizer,
    lower-cased). ComfyUI ships CLIP's vocabulary (comfy/sd1_tokenizer); transformers'
    CLIPTokenizer on it gives the ids the annotator hard-codes."""
    import os

    from transformers import CLIPTokenizer

    comfy = pack.host.comfy
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(os.path.dirname(comfy.model_management.__file__), "sd1_tokenizer"))
    oneformer = pack.module("annotators.oneformer")
    assert tokenizer("The task is semantic")["input_ids"] == list(oneformer.SEMANTIC_TASK_TOKEN_IDS)
    assert tokenizer(oneformer.SEMANTIC_TASK)["input_ids"] == list(oneformer.SEMANTIC_TASK_TOKEN_IDS)


def test_oneformer_node_defaults_to_the_annotators_dataset(pack):
    oneformer = pack.module("annotators.oneformer")
    assert pack.defaults("CNS_OneFormerSegmentation")["dataset"] == oneformer.DEFAULT_DATASET == "ade20k"
    assert list(pack.node_class("CNS_OneFormerSegmentation").MODELS) == list(oneformer.ONEFORMER_MODELS)
