"""Annotator nodes with learned networks. Each node is a few declarations: its LearnedModel
(module, weight-file constants, loader: see preprocessors_models), the annotator function to run
and its inputs. Annotator modules are imported only when a node runs, except M-LSD's, TEED's and
LeReS's and DSINE's (for input defaults) and AnyLine's (its defaults and entry point), which
annotators/__init__.py imports anyway."""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np

from ..annotators.anyline import (DEFAULT_CONNECTIVITY, DEFAULT_LOWER_BOUND, DEFAULT_MIN_SIZE, DEFAULT_UPPER_BOUND,
                                  NEIGHBOURHOODS, STANDARD, AnyLineNetworks, anyline)
from ..annotators.anyline import DEFAULT_DETECT_RESOLUTION as ANYLINE_DETECT_RESOLUTION
from ..annotators.dsine import DEFAULT_FOV as DSINE_DEFAULT_FOV, DEFAULT_ITERATIONS as DSINE_DEFAULT_ITERATIONS
from ..annotators.dsine import MAX_FOV as DSINE_MAX_FOV, MAX_ITERATIONS as DSINE_MAX_ITERATIONS
from ..annotators.leres import MAX_PERCENT as LERES_MAX_PERCENT
from ..annotators.mlsd import DEFAULT_DISTANCE_THRESHOLD, DEFAULT_SCORE_THRESHOLD
from ..annotators.teed import DEFAULT_SAFE_STEPS, MAX_SAFE_STEPS
from .preprocessors_common import (annotate_batch, detect_resolution, image_frames, maps_to_image, per_image,
                                   resolution_input)
from .preprocessors_models import LearnedModel, learned_network, learned_networks
from .preprocessors_weight_free import Z_COMPONENT_INPUT, AnnotatorNode

MAX_MLSD_DISTANCE = 20.0  # thr_d is in half-resolution pixels; A1111's slider ends at 20
# annotators/midas.py DEFAULT_NORMAL_BACKGROUND_THRESHOLD: the v1.0 gradio app's and A1111's default
# (repeated here so this module imports without annotators/midas.py; a test checks they agree).
MIDAS_NORMAL_BACKGROUND_THRESHOLD = 0.4

NETWORK_NOTE = "The network is loaded once and kept; ComfyUI's model management moves it to the GPU and unloads it."
WEIGHTS_NOTE = "Needs {files} from huggingface.co/lllyasviel/Annotators in models/annotators (never downloaded). " + NETWORK_NOTE


def _safe_input() -> tuple[str, dict[str, Any]]:
    return ("BOOLEAN", {"default": False, "tooltip": "Quantise edge strength to three levels (v1.1 'safe' variant): fewer faint textures leak into the control."})


def _scribble_input() -> tuple[str, dict[str, Any]]:
    return ("BOOLEAN", {"default": False, "tooltip": "Turn the soft edges into thick binary strokes (v1.1 scribble variant), for scribble ControlNets."})


def learned_results(model: LearnedModel, image, run_frame: Callable[[np.ndarray, Any], Any]) -> list[Any]:
    """`run_frame(frame, networks)` on each image of an IMAGE batch, with `model`'s cached networks."""
    frames = image_frames(image)
    with learned_network(model) as networks:
        return per_image(frames, lambda frame: run_frame(frame, networks))


class LearnedAnnotatorNode(AnnotatorNode):
    """Runs `RUN` (a function of MODEL's module) on each image with the cached network:
    RUN(image, network, resolution=..., **options), options renamed by RUN_NAMES."""

    MODEL: LearnedModel
    RUN: str
    RUN_NAMES: dict[str, str] = {}  # node input name -> annotator parameter name
    OPTIONS = {"resolution": resolution_input()}

    def model_for(self, options: dict[str, Any]) -> LearnedModel:
        return self.MODEL

    def run_options(self, options: dict[str, Any]) -> dict[str, Any]:
        return {self.RUN_NAMES.get(name, name): value for name, value in options.items()}

    def annotate(self, image, resolution, **options):
        model = self.model_for(options)
        run = getattr(model.import_module(), self.RUN)
        run_options = self.run_options(options)
        return (maps_to_image(learned_results(model, image, lambda frame, network: run(
            frame, network, resolution=detect_resolution(resolution), **run_options))),)


class CNS_HED(LearnedAnnotatorNode):
    DESCRIPTION = "HED soft edges (v1.1 softedge_hed), optionally 'safe' or as scribble strokes. " + WEIGHTS_NOTE.format(files="ControlNetHED.pth")
    MODEL = LearnedModel("hed", ("HED_WEIGHTS",), "load_hed")
    RUN = "hed"
    OPTIONS = {"resolution": resolution_input(), "safe": _safe_input(), "scribble": _scribble_input()}


class CNS_PiDiNet(LearnedAnnotatorNode):
    DESCRIPTION = "PiDiNet soft edges (v1.1 softedge_pidinet), optionally 'safe' or as scribble strokes. " + WEIGHTS_NOTE.format(files="table5_pidinet.pth")
    MODEL = LearnedModel("pidinet", ("PIDINET_WEIGHTS",), "load_pidinet")
    RUN = "pidinet"
    OPTIONS = {"resolution": resolution_input(), "safe": _safe_input(), "scribble": _scribble_input()}


class CNS_TEED(LearnedAnnotatorNode):
    DESCRIPTION = (
        "TEED soft edges (Soria et al. 2023, a 58.9k-parameter edge detector; as comfyui_controlnet_aux's 'TEED "
        "Preprocessor'), for softedge ControlNets. Needs 7_model.pth from "
        "huggingface.co/bdsqlsz/qinglong_controlnet-lllite (folder Annotators) in models/annotators (never "
        "downloaded). " + NETWORK_NOTE)
    MODEL = LearnedModel("teed", ("TEED_WEIGHTS",), "load_teed")
    RUN = "teed"
    OPTIONS = {
        "resolution": resolution_input(),
        "safe_steps": ("INT", {"default": DEFAULT_SAFE_STEPS, "min": 0, "max": MAX_SAFE_STEPS, "step": 1, "tooltip": (
            "Quantise the edge strength to this many steps above black (v1.1's 'safe' rule; 2: black, gray, "
            "white): fewer faint textures leak into the control. 0 keeps every level.")}),
    }


class CNS_MLSD(LearnedAnnotatorNode):
    DESCRIPTION = "M-LSD straight line segments, white on black, for mlsd ControlNets. " + WEIGHTS_NOTE.format(files="mlsd_large_512_fp32.pth")
    MODEL = LearnedModel("mlsd", ("MLSD_WEIGHTS",), "load_mlsd")
    RUN = "mlsd"
    RUN_NAMES = {"score_threshold": "thr_v", "distance_threshold": "thr_d"}
    OPTIONS = {
        "resolution": resolution_input(),
        "score_threshold": ("FLOAT", {"default": DEFAULT_SCORE_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
            "Minimum line-centre score (M-LSD thr_v): higher keeps fewer, surer segments.")}),
        "distance_threshold": ("FLOAT", {"default": DEFAULT_DISTANCE_THRESHOLD, "min": 0.0, "max": MAX_MLSD_DISTANCE, "step": 0.01, "tooltip": (
            "Minimum segment length in half-detect-resolution pixels (M-LSD thr_d): higher drops short segments.")}),
    }


class CNS_Lineart(LearnedAnnotatorNode):
    DESCRIPTION = "Line art from a photo (v1.1 lineart_realistic / lineart_coarse), white lines on black. " + WEIGHTS_NOTE.format(files="sk_model.pth (realistic) or sk_model2.pth (coarse)")
    MODELS = {
        "realistic": LearnedModel("lineart", ("LINEART_WEIGHTS",), "load_lineart"),
        "coarse": LearnedModel("lineart", ("LINEART_COARSE_WEIGHTS",), "load_lineart", (("coarse", True),)),
    }
    RUN = "lineart"
    OPTIONS = {
        "resolution": resolution_input(),
        "style": (list(MODELS), {"default": "realistic", "tooltip": "realistic: fine lines (sk_model.pth). coarse: bolder, simpler lines (sk_model2.pth)."}),
    }

    def model_for(self, options):
        return self.MODELS[options["style"]]

    def run_options(self, options):
        return {}


class CNS_LineartAnime(LearnedAnnotatorNode):
    DESCRIPTION = "Anime line art (v1.1 lineart_anime), white lines on black. " + WEIGHTS_NOTE.format(files="netG.pth")
    MODEL = LearnedModel("lineart_anime", ("LINEART_ANIME_WEIGHTS",), "load_lineart_anime")
    RUN = "lineart_anime"


class CNS_MangaLine(LearnedAnnotatorNode):
    DESCRIPTION = "Manga line extraction (A1111 lineart_anime_denoise / MangaLineExtraction), white lines on black. " + WEIGHTS_NOTE.format(files="erika.pth")
    MODEL = LearnedModel("manga_line", ("MANGA_LINE_WEIGHTS",), "load_manga_line")
    RUN = "manga_line"


# MiDaS depth and normal share one network (and so one cache entry).
MIDAS = LearnedModel("midas", ("MIDAS_WEIGHTS",), "load_midas")


class CNS_MiDaSDepth(LearnedAnnotatorNode):
    DESCRIPTION = "MiDaS depth (v1.1 depth_midas): near is bright. " + WEIGHTS_NOTE.format(files="dpt_hybrid-midas-501f0c75.pt")
    MODEL = MIDAS
    RUN = "midas_depth"


class CNS_MiDaSNormal(LearnedAnnotatorNode):
    DESCRIPTION = "Normal map from MiDaS depth (ControlNet 1.0 normal). " + WEIGHTS_NOTE.format(files="dpt_hybrid-midas-501f0c75.pt")
    MODEL = MIDAS
    RUN = "midas_normal"
    OPTIONS = {
        "resolution": resolution_input(),
        "background_threshold": ("FLOAT", {"default": MIDAS_NORMAL_BACKGROUND_THRESHOLD, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
            "Pixels whose depth, scaled to 0..1 over the image, is below this face the camera (flat background). "
            "0.4: the v1.0 app's and A1111's default; 0.1: controlnet-aux's.")}),
        "z_component": Z_COMPONENT_INPUT,
    }


def depth_anything_models(loader: str, weights_prefix: str) -> dict[str, LearnedModel]:
    """The networks of the model choices small, base and large (constants `<prefix>_SMALL` and so
    on); the files come from the authors' repositories or Space (annotators/depth_anything.py
    WEIGHTS_REPOS, which the cache reads)."""
    return {size: LearnedModel("depth_anything", (f"{weights_prefix}_{size.upper()}",), loader, (("size", size),))
            for size in ("small", "base", "large")}


class DepthAnythingNode(LearnedAnnotatorNode):
    """Depth Anything V1 or V2: the model choice picks the network; no other option."""

    MODELS: dict[str, LearnedModel] = {}

    def model_for(self, options):
        return self.MODELS[options["model"]]

    def run_options(self, options):
        return {}


class CNS_DepthAnythingV2(DepthAnythingNode):
    DESCRIPTION = (
        "Depth Anything V2 relative depth (as comfyui_controlnet_aux's 'Depth Anything V2 - Relative'), near is "
        "bright, for depth ControlNets. Needs depth_anything_v2_vits.pth (small) from "
        "huggingface.co/depth-anything/Depth-Anything-V2-Small, depth_anything_v2_vitb.pth (base) from "
        "huggingface.co/depth-anything/Depth-Anything-V2-Base or depth_anything_v2_vitl.pth (large) from "
        "huggingface.co/depth-anything/Depth-Anything-V2-Large in models/annotators (never downloaded). " + NETWORK_NOTE)
    MODELS = depth_anything_models("load_depth_anything", "DEPTH_ANYTHING_V2")
    RUN = "depth_anything"
    OPTIONS = {
        "resolution": resolution_input(),
        "model": (list(MODELS), {"default": "large", "tooltip": (
            "small: depth_anything_v2_vits.pth (24.8 M parameters, fastest); base: depth_anything_v2_vitb.pth "
            "(97.5 M); large: depth_anything_v2_vitl.pth (335.3 M, finest; comfyui_controlnet_aux's default). "
            "Whatever the detect resolution, the network sees the image at a 518-pixel short side.")}),
    }


class CNS_DepthAnything(DepthAnythingNode):
    DESCRIPTION = (
        "Depth Anything (V1) relative depth (A1111's depth_anything, comfyui_controlnet_aux's 'Depth Anything'), "
        "near is bright, for depth ControlNets. Needs depth_anything_vits14.pth (small), depth_anything_vitb14.pth "
        "(base) or depth_anything_vitl14.pth (large) from huggingface.co/spaces/LiheYoung/Depth-Anything (folder "
        "checkpoints) in models/annotators (never downloaded). " + NETWORK_NOTE)
    MODELS = depth_anything_models("load_depth_anything_v1", "DEPTH_ANYTHING_V1")
    RUN = "depth_anything_v1"
    OPTIONS = {
        "resolution": resolution_input(),
        "model": (list(MODELS), {"default": "large", "tooltip": (
            "small: depth_anything_vits14.pth (24.8 M parameters, fastest); base: depth_anything_vitb14.pth "
            "(97.5 M); large: depth_anything_vitl14.pth (335.3 M, finest; A1111's and comfyui_controlnet_aux's "
            "default). Whatever the detect resolution, the network sees the image at a 518-pixel short side.")}),
    }


class CNS_ZoeDepth(LearnedAnnotatorNode):
    DESCRIPTION = (
        "ZoeDepth depth (v1.1 and A1111's depth_zoe; comfyui_controlnet_aux's 'Zoe Depth Map' until it moved to "
        "transformers' Intel/zoedepth-nyu-kitti in 2025): metric depth from ZoeDepth's BEiT-L network, mapped so "
        "that near is bright and the farthest 15% of the image is black, for depth ControlNets. The network sees "
        "the image at about 384 x 512 pixels whatever the detect resolution. "
        + WEIGHTS_NOTE.format(files="ZoeD_M12_N.pt"))
    MODEL = LearnedModel("zoe", ("ZOE_WEIGHTS",), "load_zoe")
    RUN = "zoe_depth"


def _leres_threshold_input(tooltip: str) -> tuple[str, dict[str, Any]]:
    """comfyui_controlnet_aux's rm_nearest / rm_background: FLOAT, default 0 (off), steps of 0.01."""
    return ("FLOAT", {"default": 0.0, "min": 0.0, "max": LERES_MAX_PERCENT, "step": 0.01, "tooltip": tooltip})


class CNS_LeReSDepth(LearnedAnnotatorNode):
    DESCRIPTION = (
        "LeReS depth (A1111 depth_leres; as comfyui_controlnet_aux's 'LeReS Depth Map' with boost off): near is bright, "
        "for depth ControlNets; optionally flattens the nearest parts to white or drops the background to black. "
        + WEIGHTS_NOTE.format(files="res101.pth"))
    MODEL = LearnedModel("leres", ("LERES_WEIGHTS",), "load_leres")
    RUN = "leres"
    RUN_NAMES = {"rm_nearest": "remove_nearest", "rm_background": "remove_background"}
    OPTIONS = {
        "resolution": resolution_input(),
        "rm_nearest": _leres_threshold_input(
            "Remove nearest: the nearest depth levels, up to this percentage of the range, turn white (one flat "
            "foreground). 0 keeps them."),
        "rm_background": _leres_threshold_input(
            "Remove background: the farthest depth levels, up to this percentage of the range, turn black. 0 keeps "
            "them."),
    }


class CNS_NormalBAE(LearnedAnnotatorNode):
    DESCRIPTION = "Surface normals by NormalBAE (v1.1 normal_bae), for control_v11p_sd15_normalbae. " + WEIGHTS_NOTE.format(files="scannet.pt")
    MODEL = LearnedModel("normalbae", ("NORMALBAE_WEIGHTS",), "load_normalbae")
    RUN = "normalbae"


class CNS_DSINENormal(LearnedAnnotatorNode):
    DESCRIPTION = (
        "Surface normals by DSINE (Bae & Davison, CVPR 2024; as comfyui_controlnet_aux's 'DSINE Normal Map'), "
        "mapped as NormalBAE's, for normalbae ControlNets. A newer estimator than NormalBAE (same first author) "
        "that also reads the camera's field of view. Needs dsine.pt from huggingface.co/hr16/Diffusion-Edge in "
        "models/annotators (never downloaded). " + NETWORK_NOTE)
    MODEL = LearnedModel("dsine", ("DSINE_WEIGHTS",), "load_dsine")
    RUN = "dsine"
    OPTIONS = {
        "resolution": resolution_input(),
        "fov": ("FLOAT", {"default": DSINE_DEFAULT_FOV, "min": 1.0, "max": DSINE_MAX_FOV, "step": 0.5, "tooltip": (
            "The camera's field of view across the image's longer side, in degrees (60: a normal lens; "
            "larger for a wide-angle photo). DSINE turns it into a viewing ray per pixel.")}),
        "iterations": ("INT", {"default": DSINE_DEFAULT_ITERATIONS, "min": 1, "max": DSINE_MAX_ITERATIONS, "tooltip": (
            "How many times the normals are refined from their neighbours (the model was trained with 5).")}),
    }


class CNS_AnimeFaceSegmentation(LearnedAnnotatorNode):
    DESCRIPTION = (
        "Anime face segmentation (A1111's anime_face_segment, comfyui_controlnet_aux's 'Anime Face Segmentor'): "
        "background, hair, eyes, mouth, face, skin and clothes in A1111's colours, for anime-face segmentation "
        "ControlNets (bdsqlsz's ControlNet-LLLite segment_animeface). Trained at 512. Needs UNet.pth from "
        "huggingface.co/bdsqlsz/qinglong_controlnet-lllite (folder Annotators), and for remove_background "
        "isnetis.ckpt from huggingface.co/skytnt/anime-seg, in models/annotators (never downloaded). " + NETWORK_NOTE)
    MODELS = {
        True: LearnedModel("anime_face_segment", ("ANIME_FACE_WEIGHTS", "ISNET_WEIGHTS"), "load_anime_face_segment",
                           (("remove_background", True),)),
        False: LearnedModel("anime_face_segment", ("ANIME_FACE_WEIGHTS",), "load_anime_face_segment"),
    }
    RUN = "anime_face_segment_with_mask"
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "character_mask")
    OUTPUT_TOOLTIPS = (
        "The segmentation map, one per input image, at the input's size.",
        "The character's mask from the background removal (1 on the character), at the input's size; all ones "
        "when remove_background is off.")
    OPTIONS = {
        "resolution": resolution_input(),
        "remove_background": ("BOOLEAN", {"default": True, "tooltip": (
            "First find the character (SkyTNT's anime-segmentation ISNet, isnetis.ckpt) and turn the rest white, as "
            "comfyui_controlnet_aux does by default; off: the U-Net labels the background itself, as A1111 does.")}),
    }

    def annotate(self, image, resolution, remove_background):
        model = self.MODELS[remove_background]
        run = getattr(model.import_module(), self.RUN)
        results = learned_results(model, image, lambda frame, segmenter: run(
            frame, segmenter, detect_resolution(resolution)))
        return (maps_to_image([segmentation for segmentation, _ in results]),
                maps_to_image([mask for _, mask in results]))


class CNS_UniFormerSegmentation(LearnedAnnotatorNode):
    DESCRIPTION = "Semantic segmentation by UniFormer, coloured with the ADE20K palette (v1.1 seg_ufade20k). " + WEIGHTS_NOTE.format(files="upernet_global_small.pth")
    MODEL = LearnedModel("uniformer", ("UNIFORMER_WEIGHTS",), "load_uniformer")
    RUN = "uniformer_segmentation"


def _oneformer_model(dataset: str) -> LearnedModel:
    return LearnedModel("oneformer", (f"ONEFORMER_{dataset.upper()}_WEIGHTS",), "load_oneformer", (("dataset", dataset),))


class CNS_OneFormerSegmentation(LearnedAnnotatorNode):
    DESCRIPTION = (
        "Semantic segmentation by OneFormer (Swin-L), v1.1's seg_ofade20k / seg_ofcoco and comfyui_controlnet_aux's "
        "'OneFormer ADE20K / COCO Segmentor', coloured with the dataset's palette (ADE20K's 150 classes, as the "
        "UniFormer node; COCO panoptic's 133), for seg ControlNets. The network sees the image at a 640-pixel "
        "(ADE20K) or 800-pixel (COCO) short side whatever the detect resolution. "
        + WEIGHTS_NOTE.format(files="250_16_swin_l_oneformer_ade20k_160k.pth (ADE20K) or "
                                    "150_16_swin_l_oneformer_coco_100ep.pth (COCO)"))
    MODELS = {dataset: _oneformer_model(dataset) for dataset in ("ade20k", "coco")}
    RUN = "oneformer_segmentation"
    OPTIONS = {
        "resolution": resolution_input(),
        "dataset": (list(MODELS), {"default": "ade20k", "tooltip": (
            "ade20k: 150 classes of indoor and outdoor scenes, ADE20K colours (v1.1's default seg preprocessor). "
            "coco: COCO panoptic's 80 things and 53 stuff classes, detectron2's COCO colours.")}),
    }

    def model_for(self, options):
        return self.MODELS[options["dataset"]]


# MistoLine's MTEED: the TEED network with MTEED.pth.
MTEED = LearnedModel("teed", ("MTEED_WEIGHTS",), "load_teed", (("mteed", True),))
# AnyLine's line-art choices -> the line-art node's own model, so both use one cached network
# (None: Standard line art is weight-free).
ANYLINE_LINE_ART_MODELS = {
    "lineart_standard": None, "lineart_realistic": CNS_Lineart.MODELS["realistic"],
    "lineart_anime": CNS_LineartAnime.MODEL, "manga_line": CNS_MangaLine.MODEL,
}
MAX_OBJECT_MIN_SIZE = 16384  # comfyui_controlnet_aux's INPUT.INT maximum (ComfyUI's MAX_RESOLUTION)


def anyline_models(merge_with_lineart: str) -> list[LearnedModel]:
    """MTEED and, unless the line art is weight-free, the line-art network."""
    line_art = ANYLINE_LINE_ART_MODELS[merge_with_lineart]
    return [MTEED] + ([line_art] if line_art else [])


class CNS_AnyLine(AnnotatorNode):
    """Two networks (MTEED and, unless weight-free, the line art), loaded together."""

    DESCRIPTION = (
        "AnyLine line art for MistoLine (as comfyui_controlnet_aux's 'AnyLine Lineart'): MTEED soft edges with a "
        "line-art map screened over them, faint and tiny line-art pieces dropped. Returns float maps (the blend "
        "makes levels between the 8-bit ones). Needs MTEED.pth from huggingface.co/TheMistoAI/MistoLine (folder "
        "Anyline), and for the learned line art sk_model.pth (lineart_realistic), netG.pth (lineart_anime) or "
        "erika.pth (manga_line) from huggingface.co/lllyasviel/Annotators, in models/annotators (never "
        "downloaded). " + NETWORK_NOTE)
    OPTIONS = {
        "resolution": resolution_input(ANYLINE_DETECT_RESOLUTION),
        "merge_with_lineart": (list(ANYLINE_LINE_ART_MODELS), {"default": STANDARD, "tooltip": (
            "The line art screened over the edges: lineart_standard (weight-free, blur sigma 2, threshold 3), "
            "lineart_realistic (sk_model.pth), lineart_anime (netG.pth) or manga_line (erika.pth).")}),
        "lineart_lower_bound": ("FLOAT", {"default": DEFAULT_LOWER_BOUND, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
            "Line-art values (0..1) below this are dropped before blending: raise it to keep only the stronger lines.")}),
        "lineart_upper_bound": ("FLOAT", {"default": DEFAULT_UPPER_BOUND, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": (
            "Line-art values (0..1) above this are dropped before blending.")}),
        "object_min_size": ("INT", {"default": DEFAULT_MIN_SIZE, "min": 1, "max": MAX_OBJECT_MIN_SIZE, "step": 1, "tooltip": (
            "Connected line-art pieces smaller than this are dropped, counted as comfyui_controlnet_aux counts them: "
            "a piece of n pixels (at the detect resolution) counts 3n, so 36 drops pieces under 12 pixels.")}),
        "object_connectivity": ("INT", {"default": DEFAULT_CONNECTIVITY, "min": 1, "max": len(NEIGHBOURHOODS), "step": 1, "tooltip": (
            "Which pixels join one piece: 1 = the 4 edge neighbours, 2 = the 8 neighbours (diagonals too).")}),
    }

    def annotate(self, image, resolution, merge_with_lineart, **options):
        with learned_networks(*anyline_models(merge_with_lineart)) as (mteed, *line_art):
            networks = AnyLineNetworks(mteed, merge_with_lineart, line_art[0] if line_art else None)
            return (annotate_batch(image, lambda frame: anyline(
                frame, networks, resolution=detect_resolution(resolution), **options)),)


def openpose_model(include_hand: bool, include_face: bool) -> LearnedModel:
    """Body network always (hand and face boxes come from bodies), hand and face when asked."""
    weights = ("BODY_WEIGHTS",) + (("HAND_WEIGHTS",) if include_hand else ()) + (("FACE_WEIGHTS",) if include_face else ())
    return LearnedModel("openpose.networks", weights, "load_openpose", (("hands", include_hand), ("face", include_face)))


class PoseAnnotatorNode(AnnotatorNode):
    """A pose node: per image a pose map, the keypoints in OpenPose's format, and those as JSON.
    `run_function()` gives the annotator, called as run(frame, networks, resolution,
    include_body, include_hand, include_face)."""
    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT", "STRING")
    RETURN_NAMES = ("image", "pose_keypoint", "keypoints_json")
    OUTPUT_TOOLTIPS = (
        "The pose map, one per input image, at the input's size.",
        "One OpenPose-format dict per image ({people: [{pose_keypoints_2d, face_keypoints_2d, hand_left_keypoints_2d, "
        "hand_right_keypoints_2d}], canvas_width, canvas_height}; x, y in pixels), as comfyui_controlnet_aux's POSE_KEYPOINT.",
        "The same list as JSON text, one entry per image.",
    )

    def model_for(self, include_hand: bool, include_face: bool, **files: str) -> LearnedModel:
        """The networks to load; `files` are the node's file choices, if it has any."""
        raise NotImplementedError

    def run_function(self):
        raise NotImplementedError

    def annotate(self, image, resolution, include_body, include_hand, include_face, **files):
        model = self.model_for(include_hand, include_face, **files)
        model.import_module()  # the annotator's modules are imported only here
        run = self.run_function()
        return pose_outputs(learned_results(model, image, lambda frame, networks: run(
            frame, networks, detect_resolution(resolution), include_body, include_hand, include_face)))


def pose_outputs(results: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, list[dict[str, Any]], str]:
    """A pose node's outputs from (map, keypoints dict) per image: the maps, the dicts, their JSON."""
    keypoints = [frame_keypoints for _, frame_keypoints in results]
    return maps_to_image([pose_map for pose_map, _ in results]), keypoints, json.dumps(keypoints)


class CNS_OpenPose(PoseAnnotatorNode):
    DESCRIPTION = (
        "OpenPose body, hand and face keypoints, drawn as v1.1 openpose / openpose_full maps; also returns the "
        "keypoints in OpenPose's JSON format. " + WEIGHTS_NOTE.format(
            files="body_pose_model.pth (and hand_pose_model.pth, facenet.pth for hands and faces)"))
    OPTIONS = {
        "resolution": resolution_input(),
        "include_body": ("BOOLEAN", {"default": True, "tooltip": "Draw the body skeletons (bodies are always detected: hand and face boxes come from them)."}),
        "include_hand": ("BOOLEAN", {"default": False, "tooltip": "Detect and draw hands (needs hand_pose_model.pth; slower)."}),
        "include_face": ("BOOLEAN", {"default": False, "tooltip": "Detect and draw face landmarks (needs facenet.pth; slower)."}),
    }

    def model_for(self, include_hand, include_face):
        return openpose_model(include_hand, include_face)

    def run_function(self):
        from ..annotators.openpose import openpose  # needs scipy, imported only when the node runs
        return openpose


# DWPose's two networks: YOLOX-L finds people, RTMPose-l places their keypoints. Each comes from
# DWPose's ONNX export (the default) or from a checkpoint: the choice -> its file-name constant.
DWPOSE_DETECTOR_FILES = {"yolox_l.onnx": "DETECTOR_ONNX",
                         "yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth": "DETECTOR_WEIGHTS"}
DWPOSE_POSE_FILES = {"dw-ll_ucoco_384.onnx": "POSE_ONNX", "dw-ll_ucoco_384.pth": "POSE_WEIGHTS"}


def detector_and_pose_model(module: str, pose_files: dict[str, str], bbox_detector: str, pose_estimator: str
                            ) -> LearnedModel:
    """A top-down pose annotator's two networks (DWPose, Animal Pose), from the files the node
    chose: YOLOX-L from one of DWPOSE_DETECTOR_FILES, the keypoint network from `pose_files`."""
    return LearnedModel(module, (DWPOSE_DETECTOR_FILES[bbox_detector], pose_files[pose_estimator]), f"load_{module}",
                        (("detector_file", bbox_detector), ("pose_file", pose_estimator)))


def dwpose_model(bbox_detector: str, pose_estimator: str) -> LearnedModel:
    return detector_and_pose_model("dwpose", DWPOSE_POSE_FILES, bbox_detector, pose_estimator)


def bbox_detector_input(finds: str) -> tuple[list[str], dict[str, Any]]:
    return (list(DWPOSE_DETECTOR_FILES), {
        "default": next(iter(DWPOSE_DETECTOR_FILES)),
        "tooltip": f"The file YOLOX-L, which finds the {finds}, is read from: DWPose's ONNX export "
                   "(huggingface.co/yzd-v/DWPose) or mmdet's checkpoint."})


class CNS_DWPose(PoseAnnotatorNode):
    DESCRIPTION = (
        "DWPose whole-body poses (body, hands, face), drawn as OpenPose maps for openpose ControlNets, as "
        "comfyui_controlnet_aux's 'DWPose Estimator'; also returns the keypoints in OpenPose's JSON format. "
        "YOLOX-L finds the people, DWPose's RTMPose-l places 133 keypoints on each: sharper hands and faces than "
        "OpenPose. Needs yolox_l.onnx and dw-ll_ucoco_384.onnx from huggingface.co/yzd-v/DWPose (the files "
        "comfyui_controlnet_aux and sd-webui-controlnet use; run here with torch, no onnxruntime) in "
        "models/annotators or its ckpts/yzd-v/DWPose folder, never downloaded. Checkpoints instead: "
        "dw-ll_ucoco_384.pth (same repository) and mmdet's yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth "
        "(download.openmmlab.com/mmdetection/v2.0/yolox/yolox_l_8x8_300e_coco/). TorchScript files "
        "(.torchscript.pt) are not read. " + NETWORK_NOTE)
    OPTIONS = {
        "resolution": resolution_input(),
        "include_body": ("BOOLEAN", {"default": True, "tooltip": "Draw the body skeletons."}),
        "include_hand": ("BOOLEAN", {"default": True, "tooltip": "Draw the hands (21 points each)."}),
        "include_face": ("BOOLEAN", {"default": True, "tooltip": "Draw the face landmarks (68 points)."}),
        "bbox_detector": bbox_detector_input("people"),
        "pose_estimator": (list(DWPOSE_POSE_FILES), {
            "default": next(iter(DWPOSE_POSE_FILES)),
            "tooltip": "The file DWPose's RTMPose-l, which places the keypoints, is read from: its ONNX export "
                       "or its checkpoint (both huggingface.co/yzd-v/DWPose)."}),
    }

    def model_for(self, include_hand, include_face, bbox_detector, pose_estimator):
        return dwpose_model(bbox_detector, pose_estimator)  # every part comes from the same two networks

    def run_function(self):
        from ..annotators.dwpose import dwpose
        return dwpose


# Animal Pose: DWPose's detector files, and the AP-10K RTMPose-m export comfyui_controlnet_aux uses.
ANIMAL_POSE_POSE_FILES = {"rtmpose-m_ap10k_256.onnx": "POSE_ONNX"}


def animal_pose_model(bbox_detector: str, pose_estimator: str) -> LearnedModel:
    return detector_and_pose_model("animal_pose", ANIMAL_POSE_POSE_FILES, bbox_detector, pose_estimator)


class CNS_AnimalPose(AnnotatorNode):
    DESCRIPTION = (
        "Animal poses (AP-10K's 17 keypoints: eyes, nose, neck, tail root, four legs) drawn as coloured skeletons "
        "for animal OpenPose ControlNets (e.g. control_sd15_animal_openpose), as comfyui_controlnet_aux's "
        "'AnimalPose Estimator'; also returns the keypoints in that pack's AP-10K format. YOLOX-L finds birds, "
        "cats, dogs, horses, sheep, cows, elephants, bears, zebras and giraffes; RTMPose-m places the keypoints. "
        "Needs yolox_l.onnx from huggingface.co/yzd-v/DWPose (as DWPose) and rtmpose-m_ap10k_256.onnx from "
        "huggingface.co/hr16/UnJIT-DWPose in models/annotators (or their ckpts/<repository> folders), never "
        "downloaded; run here with torch, no onnxruntime. mmdet's "
        "yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth may replace yolox_l.onnx. TorchScript files "
        "(.torchscript.pt) are not read. " + NETWORK_NOTE)
    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT", "STRING")
    RETURN_NAMES = ("image", "pose_keypoint", "keypoints_json")
    OUTPUT_TOOLTIPS = (
        "The animal pose map, one per input image, at the input's size.",
        "One dict per image ({version: 'ap10k', animals: [[[x, y, score] x 17] per animal], canvas_width, "
        "canvas_height}; x, y in the image's pixels), as comfyui_controlnet_aux's AnimalPose POSE_KEYPOINT.",
        "The same list as JSON text, one entry per image.",
    )
    OPTIONS = {
        "resolution": resolution_input(),
        "bbox_detector": bbox_detector_input("animals"),
        "pose_estimator": (list(ANIMAL_POSE_POSE_FILES), {
            "default": next(iter(ANIMAL_POSE_POSE_FILES)),
            "tooltip": "The file the AP-10K RTMPose-m, which places the keypoints, is read from (its ONNX export)."}),
    }

    def annotate(self, image, resolution, bbox_detector, pose_estimator):
        model = animal_pose_model(bbox_detector, pose_estimator)
        run = model.import_module().animal_pose
        return pose_outputs(learned_results(model, image, lambda frame, networks: run(
            frame, networks, detect_resolution(resolution))))


NODES = {
    "CNS_HED": (CNS_HED, "HED Soft Edges"),
    "CNS_PiDiNet": (CNS_PiDiNet, "PiDiNet Soft Edges"),
    "CNS_TEED": (CNS_TEED, "TEED Soft Edges"),
    "CNS_MLSD": (CNS_MLSD, "M-LSD Lines"),
    "CNS_OpenPose": (CNS_OpenPose, "OpenPose"),
    "CNS_DWPose": (CNS_DWPose, "DWPose"),
    "CNS_AnimalPose": (CNS_AnimalPose, "Animal Pose (AP-10K)"),
    "CNS_Lineart": (CNS_Lineart, "Line Art"),
    "CNS_LineartAnime": (CNS_LineartAnime, "Anime Line Art"),
    "CNS_MangaLine": (CNS_MangaLine, "Manga Line Art"),
    "CNS_AnyLine": (CNS_AnyLine, "AnyLine Line Art"),
    "CNS_MiDaSDepth": (CNS_MiDaSDepth, "MiDaS Depth"),
    "CNS_MiDaSNormal": (CNS_MiDaSNormal, "MiDaS Normal Map"),
    "CNS_DepthAnything": (CNS_DepthAnything, "Depth Anything V1 Depth"),
    "CNS_DepthAnythingV2": (CNS_DepthAnythingV2, "Depth Anything V2 Depth"),
    "CNS_ZoeDepth": (CNS_ZoeDepth, "Zoe Depth"),
    "CNS_LeReSDepth": (CNS_LeReSDepth, "LeReS Depth"),
    "CNS_NormalBAE": (CNS_NormalBAE, "NormalBAE Normal Map"),
    "CNS_DSINENormal": (CNS_DSINENormal, "DSINE Normal Map"),
    "CNS_UniFormerSegmentation": (CNS_UniFormerSegmentation, "UniFormer Segmentation"),
    "CNS_OneFormerSegmentation": (CNS_OneFormerSegmentation, "OneFormer Segmentation"),
    "CNS_AnimeFaceSegmentation": (CNS_AnimeFaceSegmentation, "Anime Face Segmentation"),
}
