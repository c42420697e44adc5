"""Any Preprocessor: one node that runs any photo preprocessor, chosen by name, with its defaults.

For workflows that switch preprocessors with one widget (comfyui_controlnet_aux's AIO
Preprocessor, A1111's preprocessor list). The names are the batch CLI's
(`python -m annotators.batch --annotator NAME`), so a name means the same in both; a name that
picks a variant sets the dedicated node's inputs it implies (hed_safe: HED with safe on). Every
other input takes the dedicated node's default, and `resolution` replaces the detect
resolution of those that have one. "none" passes the image through unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .preprocessors_common import CATEGORY, IMAGE_INPUT, resolution_input
from .preprocessors_learned import (CNS_HED, CNS_MLSD, CNS_TEED, CNS_AnimalPose, CNS_AnimeFaceSegmentation, CNS_AnyLine, CNS_DepthAnything,
                                    CNS_DepthAnythingV2, CNS_DSINENormal, CNS_DWPose, CNS_LeReSDepth, CNS_Lineart, CNS_LineartAnime, CNS_MangaLine,
                                    CNS_MiDaSDepth, CNS_MiDaSNormal, CNS_NormalBAE, CNS_OneFormerSegmentation, CNS_OpenPose,
                                    CNS_PiDiNet, CNS_UniFormerSegmentation, CNS_ZoeDepth)
from .preprocessors_weight_free import (CNS_Binary, CNS_Canny, CNS_ColorGrid, CNS_ContentShuffle, CNS_HoughLines,
                                        CNS_ImageIntensity, CNS_ImageLuminance, CNS_LineartStandard,
                                        CNS_NormalFromDepth, CNS_PyraCanny, CNS_Scribble, CNS_ScribbleXDoG, CNS_Tile,
                                        CNS_TTPlanetTileGuidedFilter, CNS_TTPlanetTileSimple)

NO_PREPROCESSING = "none"
DEFAULT_PREPROCESSOR = "canny"
RESOLUTION = "resolution"

# name -> (the dedicated node, the inputs the name sets). Names and variants: annotators/batch.py.
PREPROCESSORS: dict[str, tuple[type, Mapping[str, Any]]] = {
    # weight-free
    "binary": (CNS_Binary, {}),
    "canny": (CNS_Canny, {}),
    "color_grid": (CNS_ColorGrid, {}),
    "hough": (CNS_HoughLines, {}),
    "lineart_standard": (CNS_LineartStandard, {}),
    "normal_from_depth": (CNS_NormalFromDepth, {}),
    "pyracanny": (CNS_PyraCanny, {}),
    "recolor_intensity": (CNS_ImageIntensity, {}),
    "recolor_luminance": (CNS_ImageLuminance, {}),
    "scribble": (CNS_Scribble, {}),
    "shuffle": (CNS_ContentShuffle, {}),
    "tile": (CNS_Tile, {}),
    "ttplanet_tile_guided_filter": (CNS_TTPlanetTileGuidedFilter, {}),
    "ttplanet_tile_simple": (CNS_TTPlanetTileSimple, {}),
    "xdog": (CNS_ScribbleXDoG, {}),
    # learned (weight files in models/annotators, never downloaded)
    "hed": (CNS_HED, {}),
    "hed_safe": (CNS_HED, {"safe": True}),
    "hed_scribble": (CNS_HED, {"scribble": True}),
    "pidinet": (CNS_PiDiNet, {}),
    "pidinet_safe": (CNS_PiDiNet, {"safe": True}),
    "pidinet_scribble": (CNS_PiDiNet, {"scribble": True}),
    "teed": (CNS_TEED, {}),
    "mlsd": (CNS_MLSD, {}),
    "lineart": (CNS_Lineart, {"style": "realistic"}),
    "lineart_coarse": (CNS_Lineart, {"style": "coarse"}),
    "lineart_anime": (CNS_LineartAnime, {}),
    "manga_line": (CNS_MangaLine, {}),
    "anyline": (CNS_AnyLine, {"merge_with_lineart": "lineart_standard"}),
    "anyline_lineart_realistic": (CNS_AnyLine, {"merge_with_lineart": "lineart_realistic"}),
    "anyline_lineart_anime": (CNS_AnyLine, {"merge_with_lineart": "lineart_anime"}),
    "anyline_manga_line": (CNS_AnyLine, {"merge_with_lineart": "manga_line"}),
    "openpose": (CNS_OpenPose, {"include_body": True, "include_hand": False, "include_face": False}),
    "openpose_hand": (CNS_OpenPose, {"include_body": True, "include_hand": True, "include_face": False}),
    "openpose_face": (CNS_OpenPose, {"include_body": True, "include_hand": False, "include_face": True}),
    "openpose_full": (CNS_OpenPose, {"include_body": True, "include_hand": True, "include_face": True}),
    "dwpose": (CNS_DWPose, {"include_body": True, "include_hand": True, "include_face": True}),
    "dwpose_body": (CNS_DWPose, {"include_body": True, "include_hand": False, "include_face": False}),
    "animal_pose": (CNS_AnimalPose, {}),
    "midas_depth": (CNS_MiDaSDepth, {}),
    "midas_normal": (CNS_MiDaSNormal, {}),
    "leres": (CNS_LeReSDepth, {}),
    "zoe_depth": (CNS_ZoeDepth, {}),
    "depth_anything_v1": (CNS_DepthAnything, {"model": "large"}),
    "depth_anything_v1_base": (CNS_DepthAnything, {"model": "base"}),
    "depth_anything_v1_small": (CNS_DepthAnything, {"model": "small"}),
    "depth_anything_v2": (CNS_DepthAnythingV2, {"model": "large"}),
    "depth_anything_v2_base": (CNS_DepthAnythingV2, {"model": "base"}),
    "depth_anything_v2_small": (CNS_DepthAnythingV2, {"model": "small"}),
    "normalbae": (CNS_NormalBAE, {}),
    "dsine": (CNS_DSINENormal, {}),
    "uniformer": (CNS_UniFormerSegmentation, {}),
    "oneformer_ade20k": (CNS_OneFormerSegmentation, {"dataset": "ade20k"}),
    "oneformer_coco": (CNS_OneFormerSegmentation, {"dataset": "coco"}),
    "anime_face_segment": (CNS_AnimeFaceSegmentation, {"remove_background": True}),
    "anime_face_segment_with_background": (CNS_AnimeFaceSegmentation, {"remove_background": False}),
}
CHOICES = [NO_PREPROCESSING, *PREPROCESSORS]


def input_defaults(node: type) -> dict[str, Any]:
    """Every input of `node` but the image at its default (a list's default or first choice), as
    ComfyUI's frontend fills a new node: required and optional ones alike."""
    declared = node.INPUT_TYPES()
    defaults = {}
    for name, (kind, options) in {**declared["required"], **declared.get("optional", {})}.items():
        if name == "image":
            continue
        if isinstance(kind, list):
            defaults[name] = options.get("default", kind[0])
        else:
            defaults[name] = options["default"]
    return defaults


def preprocessor_inputs(name: str, resolution: int) -> dict[str, Any]:
    """The dedicated node's inputs for `name`: its defaults, the name's own settings, and
    `resolution` as the detect resolution where the node has one."""
    node, implied = PREPROCESSORS[name]
    inputs = {**input_defaults(node), **implied}
    if RESOLUTION in inputs:
        inputs[RESOLUTION] = resolution
    return inputs


def run_preprocessor(name: str, image: torch.Tensor, resolution: int) -> torch.Tensor:
    """The control map batch of preprocessor `name` (the dedicated node's first output)."""
    if name == NO_PREPROCESSING:
        return image
    if name not in PREPROCESSORS:
        raise ValueError(f"unknown preprocessor {name!r}; choose one of: {', '.join(CHOICES)}")
    node = PREPROCESSORS[name][0]
    return getattr(node(), node.FUNCTION)(image=image, **preprocessor_inputs(name, resolution))[0]


class CNS_AnyPreprocessor:
    DESCRIPTION = (
        "Any preprocessor, chosen by name, with its dedicated node's defaults (as comfyui_controlnet_aux's AIO "
        "Preprocessor): for workflows that switch preprocessors with one widget. The names are the batch CLI's "
        "(python -m annotators.batch --annotator NAME); learned ones need their weight files in models/annotators, "
        "as their dedicated nodes say (never downloaded). Use the dedicated node to change any other setting.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The control map, one per input image, at the input's size (the image itself for 'none').",)
    FUNCTION = "preprocess"

    @classmethod
    def INPUT_TYPES(cls):
        _, resolution_options = resolution_input()
        return {"required": {
            "image": IMAGE_INPUT,
            "preprocessor": (CHOICES, {"default": DEFAULT_PREPROCESSOR, "tooltip": (
                "Which preprocessor: the dedicated node's name in the batch CLI's words (hed_safe: HED Soft Edges "
                "with safe on; openpose_full: OpenPose with hands and face; depth_anything_v2_small: Depth Anything "
                "V2 with the small model). 'none' passes the image through (it is already a control map).")}),
            RESOLUTION: ("INT", {**resolution_options, "tooltip": resolution_options["tooltip"] + (
                " Used by every preprocessor that has a detect resolution; Tile, TTPlanet Tile and Normal from "
                "Depth work at the image's own size and ignore it.")}),
        }}

    def preprocess(self, image, preprocessor, resolution):
        return (run_preprocessor(preprocessor, image, resolution),)


NODES = {"CNS_AnyPreprocessor": (CNS_AnyPreprocessor, "Any Preprocessor")}
