"""Any Preprocessor: one node that runs any photo preprocessor, chosen by name, with its defaults;
All Preprocessors: every one of them on the same photos, to compare their maps.

For workflows that switch preprocessors with one widget (comfyui_controlnet_aux's AIO
Preprocessor, A1111's preprocessor list). The names are the batch CLI's
(`python -m annotators.batch --annotator NAME`), so a name means the same in both; a name that
picks a variant sets the dedicated node's inputs it implies (hed_safe: HED with safe on). Every
other input takes the dedicated node's default, and `resolution` replaces the detect
resolution of those that have one. "none" passes the image through unchanged.

All Preprocessors (comfyui_controlnet_aux's Execute All ControlNet Preprocessors, without its
downloads) runs every name in that list; a learned one whose weight file is missing is skipped and
reported, by the same message its own node gives, in the third output.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ..annotators.weights import MissingWeightsError

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
NOT_FOR_PHOTOS = ("normal_from_depth",)  # takes a depth map; All Preprocessors runs on photos


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


def photo_preprocessors(learned: bool) -> list[str]:
    """The names All Preprocessors runs, in PREPROCESSORS' order: every photo preprocessor, or only
    the weight-free ones."""
    return [name for name, (node, _) in PREPROCESSORS.items()
            if name not in NOT_FOR_PHOTOS and (learned or node.__module__ == CNS_Canny.__module__)]


def run_all_preprocessors(
    image: torch.Tensor, resolution: int, learned: bool = True
) -> tuple[torch.Tensor, list[str], dict[str, list[str]]]:
    """Every photo preprocessor's maps of `image` (B images), one after the other: (the maps, B
    per name run; the names run; the names skipped for a missing weight file, by that message)."""
    maps, ran, skipped = [], [], {}
    for name in photo_preprocessors(learned):
        try:
            maps.append(run_preprocessor(name, image, resolution))
        except MissingWeightsError as missing:
            skipped.setdefault(str(missing), []).append(name)
            continue
        ran.append(name)
    return torch.cat(maps), ran, skipped  # the weight-free ones always run


def skipped_report(skipped: dict[str, list[str]]) -> str:
    """One line per missing file: the names it would have run, then its node's message."""
    return "\n".join(f"{', '.join(names)}: {message}" for message, names in skipped.items())


def any_resolution_input() -> tuple[str, dict[str, Any]]:
    """The detect resolution of the nodes that run preprocessors by name."""
    kind, options = resolution_input()
    return kind, {**options, "tooltip": options["tooltip"] + (
        " Used by every preprocessor that has a detect resolution; Tile, TTPlanet Tile and Normal from Depth work at "
        "the image's own size and ignore it.")}


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
        return {"required": {
            "image": IMAGE_INPUT,
            "preprocessor": (CHOICES, {"default": DEFAULT_PREPROCESSOR, "tooltip": (
                "Which preprocessor: the dedicated node's name in the batch CLI's words (hed_safe: HED Soft Edges "
                "with safe on; openpose_full: OpenPose with hands and face; depth_anything_v2_small: Depth Anything "
                "V2 with the small model). 'none' passes the image through (it is already a control map).")}),
            RESOLUTION: any_resolution_input(),
        }}

    def preprocess(self, image, preprocessor, resolution):
        return (run_preprocessor(preprocessor, image, resolution),)


class CNS_AllPreprocessors:
    DESCRIPTION = (
        "Every photo preprocessor on the same images, with its dedicated node's defaults, to compare their maps "
        "(as comfyui_controlnet_aux's Execute All ControlNet Preprocessors, without downloading anything): learned "
        "ones whose weight files are not in models/annotators are skipped and listed in 'skipped'.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("images", "names", "skipped")
    OUTPUT_TOOLTIPS = (
        "The control maps, preprocessor after preprocessor, one per input image each, at the input's size.",
        "The preprocessors' names, one per line, in the order of their maps (Any Preprocessor's names).",
        "The learned preprocessors skipped, one line per missing weight file: the names, then where to put the file.",
    )
    FUNCTION = "preprocess"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": IMAGE_INPUT,
            RESOLUTION: any_resolution_input(),
            "learned": ("BOOLEAN", {"default": True, "tooltip": (
                "Also run the learned preprocessors (each that finds its weight files; slow on a CPU). Off: the "
                "weight-free ones only.")}),
        }}

    def preprocess(self, image, resolution, learned):
        maps, names, skipped = run_all_preprocessors(image, resolution, learned)
        return (maps, "\n".join(names), skipped_report(skipped))


NODES = {
    "CNS_AnyPreprocessor": (CNS_AnyPreprocessor, "Any Preprocessor"),
    "CNS_AllPreprocessors": (CNS_AllPreprocessors, "All Preprocessors"),
}
