"""Annotator nodes that need no weights: each declares its inputs and calls one annotator."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..annotators.binary import DEFAULT_THRESHOLD as BINARY_DEFAULT_THRESHOLD
from ..annotators.binary import binary
from ..annotators.canny import DEFAULT_HIGH_THRESHOLD, DEFAULT_LOW_THRESHOLD, MEDIAN_RULE_SIGMA, canny
from ..annotators.color_grid import color_grid
from ..annotators.hough import (DEFAULT_LINE_THICKNESS_PX, DEFAULT_MAX_LINE_GAP_PX, DEFAULT_MIN_LINE_LENGTH_PX,
                                DEFAULT_RHO_PX, DEFAULT_THETA_DEGREES, DEFAULT_VOTES, hough_lines)
from ..annotators.inpaint import MASK_THRESHOLD, MASKED_VALUE, UNION_REPAINT_MASKED_VALUE, inpaint_hint
from ..annotators.lineart_standard import DEFAULT_GAUSSIAN_SIGMA, DEFAULT_INTENSITY_THRESHOLD, lineart_standard
from ..annotators.normal_from_depth import DEFAULT_BACKGROUND_THRESHOLD, DEFAULT_Z_COMPONENT, normal_from_depth
from ..annotators.pyracanny import DEFAULT_HIGH_THRESHOLD as PYRACANNY_DEFAULT_HIGH
from ..annotators.pyracanny import DEFAULT_LOW_THRESHOLD as PYRACANNY_DEFAULT_LOW
from ..annotators.pyracanny import pyracanny
from ..annotators.recolor import (DEFAULT_GAMMA, INTENSITY, LAB_ORDER_A1111, LAB_ORDER_RGB, LAB_ORDERS, LUMINANCE,
                                  MAX_GAMMA, MIN_GAMMA, recolor_intensity, recolor_luminance, restore_brightness)
from ..annotators.scribble import DEFAULT_STROKE_GROWTH_PX, DEFAULT_STROKE_THRESHOLD, scribble
from ..annotators.segmentation import PALETTES, colorize_labels
from ..annotators.shuffle import DEFAULT_CELL_PX, DEFAULT_SEED, content_shuffle
from ..annotators.tile import (NO_BLUR, NO_DOWNSAMPLING, TTPLANET_DEFAULT_BLUR_STRENGTH, TTPLANET_DEFAULT_EPS,
                               TTPLANET_DEFAULT_RADIUS, TTPLANET_DEFAULT_SCALE_FACTOR, tile, ttplanet_tile_guided_filter,
                               ttplanet_tile_simple)
from ..annotators.xdog import DEFAULT_THRESHOLD as XDOG_DEFAULT_THRESHOLD
from ..annotators.xdog import xdog_scribble
from .preprocessors_common import (CATEGORY, IMAGE_INPUT, MAX_SIZE, annotate_batch, detect_resolution, fit_frames,
                                   image_frames, maps_to_image, per_image, resolution_input)

UINT8_LEVELS = 255            # a label map stored in an 8-bit image: class index = value * 255
XDOG_MAX_RESPONSE = 2 * 255   # xdog.py: response = 2 * (255 - dog), dog in 0..255
MAX_SEED = 2 ** 32 - 1        # numpy RandomState seeds are 32-bit
# Widget ranges (ours): wide enough for any sensible use, bounded so a slider stays usable.
MAX_STROKE_GROWTH_PX = 64
MAX_LINE_THICKNESS_PX = 32
MAX_HOUGH_VOTES = 10000
MAX_TILE_FACTOR = 64.0
MAX_BLUR_SIGMA = 64.0
MAX_Z_COMPONENT = 100.0
# TTPlanet tile: comfyui_controlnet_aux's ranges
MAX_TTPLANET_SCALE_FACTOR = 8.0
MIN_TTPLANET_BLUR_STRENGTH = 1.0
MAX_TTPLANET_BLUR_STRENGTH = 10.0
MAX_TTPLANET_RADIUS = 20
MIN_TTPLANET_EPS = 0.001
MAX_TTPLANET_EPS = 0.1
# Standard Lineart: comfyui_controlnet_aux's ranges (sigma up to 100, threshold up to 16). OpenCV
# derives the blur's kernel from sigma, which must then be positive.
MIN_LINEART_SIGMA = 0.01
MAX_LINEART_SIGMA = 100.0
MAX_LINEART_INTENSITY_THRESHOLD = 16

SCRIBBLE_AUTO = "auto"
SCRIBBLE_DARK_ON_LIGHT = "dark strokes on light"
SCRIBBLE_LIGHT_ON_DARK = "light strokes on dark"
SCRIBBLE_INVERT = {SCRIBBLE_AUTO: None, SCRIBBLE_DARK_ON_LIGHT: True, SCRIBBLE_LIGHT_ON_DARK: False}


def _int(default: int, low: int, high: int, tooltip: str, step: int = 1) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip})


def _float(default: float, low: float, high: float, step: float, tooltip: str) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": low, "max": high, "step": step, "tooltip": tooltip})


def _bool(default: bool, tooltip: str) -> tuple[str, dict[str, Any]]:
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def canny_threshold(default: float, which: str, default_from: str = "v1.1") -> tuple[str, dict[str, Any]]:
    return _int(int(default), 0, 255, (
        f"Canny {which} threshold on the gradient magnitude ({default_from} default {int(default)}). Gradients above "
        "the high threshold start an edge; edges continue through gradients above the low one."))


# round=False: ComfyUI's frontend would otherwise round the 2 pi default to the step (6.28).
Z_COMPONENT_INPUT = ("FLOAT", {"default": float(DEFAULT_Z_COMPONENT), "min": 0.01, "max": MAX_Z_COMPONENT, "step": 0.01, "round": False, "tooltip": (
    "The normal's z before normalising (v1.0: 2 pi). Larger makes the same depth gradient look flatter.")})


class AnnotatorNode:
    """Declarations every annotator node shares; subclasses set DESCRIPTION, OPTIONS, annotate."""

    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The control map, one per input image, at the input's size.",)
    FUNCTION = "annotate"
    OPTIONS: dict[str, tuple] = {}  # inputs after `image`
    # Inputs added after a node shipped: optional, so saved API prompts without them still validate.
    LATER_OPTIONS: dict[str, tuple] = {}

    @classmethod
    def INPUT_TYPES(cls):
        inputs = {"required": {"image": IMAGE_INPUT, **cls.OPTIONS}}
        return {**inputs, "optional": cls.LATER_OPTIONS} if cls.LATER_OPTIONS else inputs


class CNS_Canny(AnnotatorNode):
    DESCRIPTION = "Canny edges: white one-pixel edges on black, for canny ControlNets."
    OPTIONS = {
        "low_threshold": canny_threshold(DEFAULT_LOW_THRESHOLD, "low"),
        "high_threshold": canny_threshold(DEFAULT_HIGH_THRESHOLD, "high"),
        "auto_thresholds": _bool(False, (
            "Ignore the thresholds and derive them from each image's median gray level m: "
            f"(1 - {MEDIAN_RULE_SIGMA}) m and (1 + {MEDIAN_RULE_SIGMA}) m, so dark and bright "
            "photos get a similar amount of edges.")),
        "resolution": resolution_input(),
    }

    def annotate(self, image, low_threshold, high_threshold, auto_thresholds, resolution):
        return (annotate_batch(image, lambda frame: canny(
            frame, low_threshold, high_threshold, auto_thresholds, detect_resolution(resolution))),)


class CNS_PyraCanny(AnnotatorNode):
    DESCRIPTION = (
        "PyraCanny (Fooocus): Canny edges of each colour channel at nine scales of the image, blended into one soft "
        "gray edge map, for canny Control-LoRAs and canny ControlNets that miss structure at a single scale.")
    OPTIONS = {
        "low_threshold": canny_threshold(PYRACANNY_DEFAULT_LOW, "low", "Fooocus"),
        "high_threshold": canny_threshold(PYRACANNY_DEFAULT_HIGH, "high", "Fooocus"),
        "resolution": resolution_input(),
    }

    def annotate(self, image, low_threshold, high_threshold, resolution):
        return (annotate_batch(image, lambda frame: pyracanny(
            frame, low_threshold, high_threshold, detect_resolution(resolution))),)


class CNS_HoughLines(AnnotatorNode):
    DESCRIPTION = (
        "Straight lines (Canny edges, then OpenCV's probabilistic Hough transform) drawn white on black: a "
        "weight-free stand-in for M-LSD, for mlsd ControlNets. Lengths are in pixels of the detect resolution.")
    OPTIONS = {
        "canny_low_threshold": canny_threshold(DEFAULT_LOW_THRESHOLD, "low"),
        "canny_high_threshold": canny_threshold(DEFAULT_HIGH_THRESHOLD, "high"),
        "rho_px": _float(DEFAULT_RHO_PX, 0.1, 16.0, 0.1, "Distance step of the Hough accumulator, in pixels."),
        "theta_degrees": _float(DEFAULT_THETA_DEGREES, 0.1, 90.0, 0.1, "Angle step of the Hough accumulator, in degrees."),
        "votes": _int(DEFAULT_VOTES, 1, MAX_HOUGH_VOTES, "Edge pixels a line needs to be kept: higher keeps fewer, surer lines."),
        "min_line_length_px": _float(DEFAULT_MIN_LINE_LENGTH_PX, 0.0, MAX_SIZE, 1.0, "Shorter segments are dropped."),
        "max_line_gap_px": _float(DEFAULT_MAX_LINE_GAP_PX, 0.0, MAX_SIZE, 1.0, "Collinear edge runs closer than this are joined into one segment."),
        "line_thickness_px": _int(DEFAULT_LINE_THICKNESS_PX, 1, MAX_LINE_THICKNESS_PX, "Width of the drawn lines (M-LSD maps use 1)."),
        "resolution": resolution_input(),
    }

    def annotate(self, image, canny_low_threshold, canny_high_threshold, rho_px, theta_degrees, votes,
                 min_line_length_px, max_line_gap_px, line_thickness_px, resolution):
        return (annotate_batch(image, lambda frame: hough_lines(
            frame, canny_low_threshold, canny_high_threshold, rho_px, theta_degrees, votes, min_line_length_px,
            max_line_gap_px, line_thickness_px, detect_resolution(resolution))),)


class CNS_Scribble(AnnotatorNode):
    DESCRIPTION = (
        "Scribble from a drawing: strokes become white on black and are thickened, for scribble ControlNets. "
        "Dark-on-light pages are inverted.")
    OPTIONS = {
        "threshold": _int(DEFAULT_STROKE_THRESHOLD, 0, 255, (
            "A pixel is a stroke when its brightest channel, on the light-on-dark drawing, is above this.")),
        "stroke_growth_px": _int(DEFAULT_STROKE_GROWTH_PX, 0, MAX_STROKE_GROWTH_PX, (
            "Strokes grow by this many pixels on every side (scribble models were trained on thick strokes); 0 keeps them.")),
        "drawing": ([SCRIBBLE_AUTO, SCRIBBLE_DARK_ON_LIGHT, SCRIBBLE_LIGHT_ON_DARK], {"default": SCRIBBLE_AUTO, "tooltip": (
            "How the drawing is made. auto: dark strokes on light when the median pixel is light.")}),
        "resolution": resolution_input(),
    }

    def annotate(self, image, threshold, stroke_growth_px, drawing, resolution):
        return (annotate_batch(image, lambda frame: scribble(
            frame, threshold, stroke_growth_px, SCRIBBLE_INVERT[drawing], detect_resolution(resolution))),)


class CNS_ScribbleXDoG(AnnotatorNode):
    DESCRIPTION = "Synthesized scribble from a photo by difference of Gaussians (A1111 scribble_xdog), for scribble ControlNets."
    OPTIONS = {
        "threshold": _int(XDOG_DEFAULT_THRESHOLD, 0, XDOG_MAX_RESPONSE, (
            "A pixel becomes a stroke where twice the (wide blur - narrow blur) difference exceeds this: lower draws more strokes.")),
        "resolution": resolution_input(),
    }

    def annotate(self, image, threshold, resolution):
        return (annotate_batch(image, lambda frame: xdog_scribble(
            frame, threshold, detect_resolution(resolution))),)


class CNS_LineartStandard(AnnotatorNode):
    DESCRIPTION = (
        "Standard line art (A1111 lineart_standard, comfyui_controlnet_aux's 'Standard Lineart'): white where a pixel "
        "is darker than its blurred surroundings, for lineart ControlNets. Suits drawings (dark lines on a light page) "
        "best; no weights.")
    OPTIONS = {
        "gaussian_sigma": _float(DEFAULT_GAUSSIAN_SIGMA, MIN_LINEART_SIGMA, MAX_LINEART_SIGMA, 0.01, (
            "Width of the blur the image is compared with, in detect-resolution pixels: wider finds thicker lines "
            "and broader shading.")),
        "intensity_threshold": _int(DEFAULT_INTENSITY_THRESHOLD, 0, MAX_LINEART_INTENSITY_THRESHOLD, (
            "Darkenings (0..255) above this set the map's scale: their median is drawn mid-gray (at least 16 is "
            "assumed, so faint pages stay faint).")),
        "resolution": resolution_input(),
    }

    def annotate(self, image, gaussian_sigma, intensity_threshold, resolution):
        return (annotate_batch(image, lambda frame: lineart_standard(
            frame, gaussian_sigma, intensity_threshold, detect_resolution(resolution))),)


class CNS_Binary(AnnotatorNode):
    DESCRIPTION = "Binary map (A1111 binary): white where the image is dark, black elsewhere."
    OPTIONS = {
        "threshold": _int(BINARY_DEFAULT_THRESHOLD, 0, 255, (
            "Pixels with gray level <= threshold become white. 0 or 255: chosen per image by Otsu's method.")),
        "resolution": resolution_input(),
    }

    def annotate(self, image, threshold, resolution):
        return (annotate_batch(image, lambda frame: binary(frame, threshold, detect_resolution(resolution))),)


def gamma_input() -> tuple[str, dict[str, Any]]:
    return _float(DEFAULT_GAMMA, MIN_GAMMA, MAX_GAMMA, 0.01, (
        "The brightness (0..1) is raised to this power: above 1 darkens the mid-tones, below 1 lightens them "
        "(A1111's and comfyui_controlnet_aux's gamma correction)."))


RECOLOR_NOTE = (" For recolor ControlNets (Stability's sai_xl_recolor Control-LoRAs), which colour a gray image; "
                "'Restore Brightness' after VAE Decode puts this brightness back into the result, as A1111 does.")


class CNS_ImageLuminance(AnnotatorNode):
    DESCRIPTION = "Luminance (A1111 recolor_luminance): the image's CIELAB lightness L* as a gray map." + RECOLOR_NOTE
    OPTIONS = {
        "gamma_correction": gamma_input(),
        "lab_order": (list(LAB_ORDERS), {"default": LAB_ORDER_A1111, "tooltip": (
            f"{LAB_ORDER_A1111}: as A1111 and comfyui_controlnet_aux, which read the RGB image as BGR, so red weighs as "
            f"blue does in L* and blue as red (identical maps to theirs; the same for gray photos). {LAB_ORDER_RGB}: "
            "the true L*.")}),
        "resolution": resolution_input(),
    }

    def annotate(self, image, gamma_correction, lab_order, resolution):
        return (annotate_batch(image, lambda frame: recolor_luminance(
            frame, gamma_correction, detect_resolution(resolution), lab_order)),)


class CNS_ImageIntensity(AnnotatorNode):
    DESCRIPTION = "Intensity (A1111 recolor_intensity): the image's HSV value, max(R, G, B), as a gray map." + RECOLOR_NOTE
    OPTIONS = {"gamma_correction": gamma_input(), "resolution": resolution_input()}

    def annotate(self, image, gamma_correction, resolution):
        return (annotate_batch(image, lambda frame: recolor_intensity(
            frame, gamma_correction, detect_resolution(resolution))),)


class CNS_RestoreBrightness:
    DESCRIPTION = (
        "After sampling with a recolor ControlNet: replaces the generated image's brightness (CIELAB L* or HSV value) "
        "by the recolor map's, keeping the generated colours, so the result keeps the original photo's detail "
        "(A1111 does this for its recolor preprocessors).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The images with the map's brightness.",)
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The generated image(s), after VAE Decode."}),
            "brightness_map": ("IMAGE", {"tooltip": (
                "The map from Image Luminance or Image Intensity: one, or one per image. A map of another size is fitted "
                "as the ControlNet fits its hint to the latent (centre crop to the image's shape, then resize).")}),
            "brightness": ([LUMINANCE, INTENSITY], {"default": LUMINANCE, "tooltip": (
                f"{LUMINANCE}: for maps from Image Luminance (CIELAB L*); {INTENSITY}: for maps from Image Intensity "
                "(HSV value).")}),
        }}

    def restore(self, image, brightness_map, brightness):
        frames = image_frames(image)
        maps = image_frames(brightness_map, "brightness_map")
        if len(maps) not in (1, len(frames)):
            raise ValueError(f"brightness_map has {len(maps)} images for {len(frames)} generated images; "
                             "give one map, or one per image")
        maps = fit_frames(maps, frames.shape[2], frames.shape[1])
        return (maps_to_image(per_image(range(len(frames)), lambda i: restore_brightness(
            frames[i], maps[i if len(maps) > 1 else 0], brightness))),)


class CNS_ColorGrid(AnnotatorNode):
    DESCRIPTION = "Colour grid (A1111 color, for T2I-Adapter color): the image as flat 64x64-pixel cells at the detect resolution."
    OPTIONS = {"resolution": resolution_input()}

    def annotate(self, image, resolution):
        return (annotate_batch(image, lambda frame: color_grid(frame, detect_resolution(resolution))),)


class CNS_ContentShuffle(AnnotatorNode):
    DESCRIPTION = "Content shuffle (v1.1 shuffle): the image's pixels moved by a smooth random flow, keeping colours and textures but not layout."
    OPTIONS = {
        "seed": _int(DEFAULT_SEED, 0, MAX_SEED, (
            "Seed of the random flow (the same flow for every image of the batch). Equals v1.1 / controlnet-aux after np.random.seed(seed).")),
        "cell_px": _int(DEFAULT_CELL_PX, 1, MAX_SIZE, "Size of one noise cell of the flow, in pixels: larger moves bigger pieces."),
        "resolution": resolution_input(),
    }

    def annotate(self, image, seed, cell_px, resolution):
        return (annotate_batch(image, lambda frame: content_shuffle(
            frame, seed, cell_px, detect_resolution(resolution))),)


class CNS_Tile(AnnotatorNode):
    DESCRIPTION = "Tile condition: the image itself, optionally blurred and/or down- then up-sampled to drop detail, for tile ControlNets."
    OPTIONS = {
        "downsample_factor": _float(NO_DOWNSAMPLING, 1.0, MAX_TILE_FACTOR, 0.05, (
            "Shrink by this factor (area) and scale back up (cubic): larger loses more detail. 1 keeps the image.")),
        "blur_sigma": _float(NO_BLUR, 0.0, MAX_BLUR_SIGMA, 0.1, "Gaussian blur sigma in pixels, applied first. 0: no blur."),
    }

    def annotate(self, image, downsample_factor, blur_sigma):
        return (annotate_batch(image, lambda frame: tile(frame, downsample_factor, blur_sigma)),)


TTPLANET_SCALE_FACTOR_INPUT = _float(TTPLANET_DEFAULT_SCALE_FACTOR, NO_DOWNSAMPLING, MAX_TTPLANET_SCALE_FACTOR, 0.01, (
    "Shrink the image by this factor and scale it back up, dropping detail the tile ControlNet then re-creates. "
    "1 keeps the size."))
TTPLANET_BLUR_INPUT = _float(TTPLANET_DEFAULT_BLUR_STRENGTH, MIN_TTPLANET_BLUR_STRENGTH, MAX_TTPLANET_BLUR_STRENGTH, 0.1, (
    "Gaussian blur: a kernel of this many pixels (made odd) with sigma half of it. 1: no blur."))


class CNS_TTPlanetTileGuidedFilter(AnnotatorNode):
    DESCRIPTION = (
        "TTPlanet's tile preprocessor for his SDXL tile ControlNets: blur, then an edge-preserving guided filter that "
        "smooths texture but keeps edges, then shrink and scale back up. At the image's own size.")
    OPTIONS = {
        "scale_factor": TTPLANET_SCALE_FACTOR_INPUT,
        "blur_strength": TTPLANET_BLUR_INPUT,
        "radius": _int(TTPLANET_DEFAULT_RADIUS, 1, MAX_TTPLANET_RADIUS, (
            "Guided filter window radius, in pixels of the image: larger smooths bigger areas.")),
        "eps": _float(TTPLANET_DEFAULT_EPS, MIN_TTPLANET_EPS, MAX_TTPLANET_EPS, 0.001, (
            "Guided filter regularisation (on 0..1 values): larger smooths across weaker edges too.")),
    }

    def annotate(self, image, scale_factor, blur_strength, radius, eps):
        return (annotate_batch(image, lambda frame: ttplanet_tile_guided_filter(
            frame, scale_factor, blur_strength, radius, eps)),)


class CNS_TTPlanetTileSimple(AnnotatorNode):
    DESCRIPTION = "TTPlanet's simple tile preprocessor: shrink, scale back up (Lanczos), then blur. At the image's own size."
    OPTIONS = {"scale_factor": TTPLANET_SCALE_FACTOR_INPUT, "blur_strength": TTPLANET_BLUR_INPUT}

    def annotate(self, image, scale_factor, blur_strength):
        return (annotate_batch(image, lambda frame: ttplanet_tile_simple(frame, scale_factor, blur_strength)),)


def fit_masks(mask, batch_size: int, image_hw: tuple[int, int]) -> np.ndarray:
    """MASK (B x H x W or H x W) -> float32 numpy (batch_size, H, W) at the image's size.

    One mask serves the whole batch; otherwise there must be one per image. A mask of another
    size but the same aspect ratio (within a pixel) is resized bilinearly; any other size is
    refused, because how it should line up with the image would be a guess.
    """
    from ..controlnet_core.comfy_control import fit_mask

    masks = fit_mask(mask, image_hw)[:, 0]
    if masks.shape[0] not in (1, batch_size):
        raise ValueError(
            f"{masks.shape[0]} masks for {batch_size} images; pass one mask for the whole batch or one per image")
    return masks.expand(batch_size, -1, -1).detach().cpu().float().clamp(0.0, 1.0).numpy()


# Inpaint Hint's masked-pixel values, by the ControlNet that reads the hint.
V11_INPAINT = "-1 (ControlNet 1.1 inpaint)"
INPAINT_MASKED_VALUES = {V11_INPAINT: MASKED_VALUE, "black (ControlNet Union ProMax repaint)": UNION_REPAINT_MASKED_VALUE}


EMPTY_INPAINT_MASK = (
    "the mask is empty (no value above 0.5), so there is nothing to inpaint: paint the region in Load Image's mask "
    "editor (right-click the image, Open in MaskEditor) or load a PNG whose transparent pixels mark it. Load Image "
    "gives an empty mask for an image without transparency")


def check_mask_marks_a_region(mask) -> None:
    """Refuse a MASK that marks nothing: the hint would be the bare photo and the inpaint
    ControlNet would repaint nothing, the usual sign of a photo loaded without its mask."""
    if not bool((mask > MASK_THRESHOLD).any()):
        raise ValueError(EMPTY_INPAINT_MASK)


class CNS_InpaintHint(AnnotatorNode):
    DESCRIPTION = (
        "Inpaint hint: the image with every masked pixel (mask > 0.5) set to -1, which the v1.1 inpaint ControlNet "
        "reads as 'generate here' (connect it straight to the apply node: a preview shows -1 black, and resizing it "
        "with 'Resize for Control' is refused), or set to black for a ControlNet Union ProMax's repaint type.")
    OPTIONS = {"mask": ("MASK", {"tooltip": (
        "Where to inpaint (> 0.5). One mask for the batch or one per image; a mask of another size but the same "
        "aspect ratio is resized to the image, any other size is an error, and so is a mask that marks nothing.")})}
    LATER_OPTIONS = {"masked_pixels": (list(INPAINT_MASKED_VALUES), {"default": V11_INPAINT, "tooltip": (
        "What the masked pixels become: -1 for control_v11p_sd15_inpaint; black for xinsir's ControlNet Union ProMax "
        "with the repaint control type (what it was trained with).")})}

    def annotate(self, image, mask, masked_pixels=V11_INPAINT):
        frames = image_frames(image)
        check_mask_marks_a_region(mask)
        masks = fit_masks(mask, len(frames), frames.shape[1:3])
        value = INPAINT_MASKED_VALUES[masked_pixels]
        hints = per_image(range(len(frames)), lambda index: inpaint_hint(frames[index], masks[index], value))
        return (maps_to_image(hints),)


class CNS_NormalFromDepth(AnnotatorNode):
    DESCRIPTION = "Normal map from a depth map (near = bright), by ControlNet 1.0's MiDaS-normal rule, for normal ControlNets."
    OPTIONS = {
        "z_component": Z_COMPONENT_INPUT,
        "background_threshold": _float(DEFAULT_BACKGROUND_THRESHOLD, 0.0, 1.0, 0.01, (
            "Pixels whose depth, scaled to 0..1 over the image, is below this face the camera (flat background). "
            "0.1: the annotator's default; 0.4: A1111's.")),
        "zyx_order": ("BOOLEAN", {"default": True, "label_on": "z, y, x (ControlNet 1.0 normal)", "label_off": "x, y, z", "tooltip": (
            "Channel order: control_sd15_normal expects (z, y, x) as RGB (v1.0 flips the map); off gives the raw (x, y, z).")}),
    }

    def annotate(self, image, z_component, background_threshold, zyx_order):
        return (annotate_batch(image, lambda depth: normal_from_depth(
            depth, z_component, background_threshold, zyx_order)),)


def label_map(frame: np.ndarray, reduce_zero_label: bool) -> np.ndarray:
    """Class indices of an 8-bit label image (value * 255; gray, every channel equal)."""
    channels = frame[..., :3] if frame.shape[2] >= 3 else frame[..., :1]
    if not np.all(channels == channels[..., :1]):
        raise ValueError(
            "the label map has differing colour channels: it must be a gray image whose values are class indices "
            "(an 8-bit label PNG), not an already coloured segmentation")
    labels = np.round(channels[..., 0] * UINT8_LEVELS).astype(np.int64)
    # mmseg reduce_zero_label: 0 (unlabeled) -> off the palette, 1.. -> 0..
    return labels - 1 if reduce_zero_label else labels


class CNS_ColorizeSegmentation(AnnotatorNode):
    DESCRIPTION = "Colours a segmentation label map with the ADE20K, COCO-Stuff or COCO panoptic palette, as seg ControlNets were trained on."
    OPTIONS = {
        "palette": (list(PALETTES), {"default": "ade20k", "tooltip": (
            "ade20k: 150 classes (mmseg order, 0 = wall). coco_stuff: 171 classes by mmseg train id. "
            "coco_stuff_raw: COCO-Stuff's own label ids 0..181. coco_panoptic: the 133 classes of COCO panoptic "
            "(OneFormer COCO's ids, detectron2 order). Labels off the palette are drawn black.")}),
        "reduce_zero_label": _bool(False, (
            "The labels count from 1 with 0 = unlabeled (ADE20K annotation files): subtract 1, and draw 0 black.")),
    }

    def annotate(self, image, palette, reduce_zero_label):
        return (annotate_batch(image, lambda frame: colorize_labels(label_map(frame, reduce_zero_label), palette)),)


class CNS_DrawPoseKeypoints:
    DESCRIPTION = (
        "Draws OpenPose-format keypoints as the pose map ControlNet's OpenPose models read (the OpenPose node's "
        "drawing): from the OpenPose node's pose_keypoint output, another pack's POSE_KEYPOINT (DWPose, pose "
        "editors) or pasted JSON. Animal Pose's AP-10K keypoints are drawn as that node draws them. Reuse or edit a "
        "pose without detecting it again; no weights. Drawn at the map size directly (the detectors draw at their "
        "detect resolution, then resize)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("One pose map per keypoint frame.",)
    FUNCTION = "draw"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "width": _int(0, 0, MAX_SIZE, (
                    "Width of the maps; 0 = the canvas_width in the keypoints. Set with height to draw at another "
                    "size, or for CMU OpenPose files, which name no canvas (their pixels are then of this size)."), 8),
                "height": _int(0, 0, MAX_SIZE, "Height of the maps; 0 = the canvas_height in the keypoints.", 8),
                "include_body": _bool(True, "Draw the body skeletons (and the animals of AP-10K keypoints)."),
                "include_hand": _bool(True, "Draw the hands the keypoints have."),
                "include_face": _bool(True, "Draw the face landmarks the keypoints have."),
            },
            "optional": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "Keypoints, one frame per image (the OpenPose node's output)."}),
                "keypoints_json": ("STRING", {"default": "", "multiline": True, "tooltip": (
                    "Or OpenPose-format JSON: one frame {people: [...], canvas_width, canvas_height} or a list of them "
                    "(AP-10K frames {animals: [...], ...} too). "
                    "Leave empty when pose_keypoint is connected.")}),
            },
        }

    def draw(self, width, height, include_body, include_hand, include_face, pose_keypoint=None, keypoints_json=""):
        from ..annotators.openpose.keypoints_json import draw_keypoint_frames, keypoint_frames

        frames = keypoint_frames(pose_keypoint, keypoints_json)
        return (maps_to_image(draw_keypoint_frames(frames, width, height, include_body, include_hand, include_face)),)


NODES = {
    "CNS_Canny": (CNS_Canny, "Canny Edges"),
    "CNS_PyraCanny": (CNS_PyraCanny, "PyraCanny"),
    "CNS_HoughLines": (CNS_HoughLines, "Hough Lines"),
    "CNS_Scribble": (CNS_Scribble, "Scribble from Drawing"),
    "CNS_ScribbleXDoG": (CNS_ScribbleXDoG, "Scribble XDoG"),
    "CNS_LineartStandard": (CNS_LineartStandard, "Standard Line Art"),
    "CNS_Binary": (CNS_Binary, "Binary"),
    "CNS_ImageLuminance": (CNS_ImageLuminance, "Image Luminance"),
    "CNS_ImageIntensity": (CNS_ImageIntensity, "Image Intensity"),
    "CNS_RestoreBrightness": (CNS_RestoreBrightness, "Restore Brightness"),
    "CNS_ColorGrid": (CNS_ColorGrid, "Colour Grid"),
    "CNS_ContentShuffle": (CNS_ContentShuffle, "Content Shuffle"),
    "CNS_Tile": (CNS_Tile, "Tile"),
    "CNS_TTPlanetTileGuidedFilter": (CNS_TTPlanetTileGuidedFilter, "TTPlanet Tile Guided Filter"),
    "CNS_TTPlanetTileSimple": (CNS_TTPlanetTileSimple, "TTPlanet Tile Simple"),
    "CNS_InpaintHint": (CNS_InpaintHint, "Inpaint Hint"),
    "CNS_NormalFromDepth": (CNS_NormalFromDepth, "Normal Map from Depth"),
    "CNS_ColorizeSegmentation": (CNS_ColorizeSegmentation, "Colourize Segmentation"),
    "CNS_DrawPoseKeypoints": (CNS_DrawPoseKeypoints, "Draw Pose Keypoints"),
}
