"""Fitting control maps to the generation size: A1111's three resize modes and its
pixel-perfect detect resolution (annotators/resolution.py)."""

from __future__ import annotations

from ..annotators.image import to_rgb_uint8
from ..annotators.resolution import ResizeMode, pixel_perfect_resolution, resize_to_target
from .preprocessors_common import CATEGORY, IMAGE_INPUT, LATENT_CELL_PX, MAX_SIZE, annotate_batch

DEFAULT_TARGET_SIDE = 512  # SD1.5's native size

RESIZE_MODE_INPUT = ([mode.value for mode in ResizeMode], {"default": ResizeMode.CROP_AND_RESIZE.value, "tooltip": (
    "Just Resize: stretch to the target (aspect ratio ignored). Crop and Resize: cover the target and crop the overflow, "
    "centred. Resize and Fill: fit inside the target and pad, centred, with the border's median colour.")})


def target_input(what: str) -> tuple[str, dict]:
    return ("INT", {"default": DEFAULT_TARGET_SIDE, "min": LATENT_CELL_PX, "max": MAX_SIZE, "step": LATENT_CELL_PX,
                    "tooltip": f"Target {what} in pixels: the generation's {what}."})


class CNS_ResizeForControl:
    DESCRIPTION = (
        "Fits control maps to the generation size with A1111's resize modes and its map-aware resampling: label-like "
        "maps (segmentation, colour grid) keep their colours, binary line maps stay binary and one pixel wide.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The maps at width x height.",)
    FUNCTION = "resize"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Control maps (0..1, e.g. an annotator's output). A batch is resized image by image."}),
            "width": target_input("width"),
            "height": target_input("height"),
            "resize_mode": RESIZE_MODE_INPUT,
        }}

    def resize(self, image, width, height, resize_mode):
        if image.numel() and float(image.min()) < 0.0:
            raise ValueError(
                "the image has negative values (an inpaint hint?), which resizing would lose; resize the image and "
                "mask before 'Inpaint Hint' instead")
        return (annotate_batch(image, lambda frame: resize_to_target(to_rgb_uint8(frame), (height, width), resize_mode)),)


class CNS_PixelPerfectResolution:
    DESCRIPTION = (
        "A1111's pixel-perfect detect resolution: the resolution at which an annotator's map lands on the target size "
        "without resampling. Connect it to an annotator's resolution input.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("resolution",)
    OUTPUT_TOOLTIPS = ("round(k x short side) with k = target/image scale (the larger for Just Resize and Crop and Resize, the smaller for Resize and Fill).",)
    FUNCTION = "resolution"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": (IMAGE_INPUT[0], {"tooltip": "The image the annotator will read (only its size matters)."}),
            "width": target_input("width"),
            "height": target_input("height"),
            "resize_mode": RESIZE_MODE_INPUT,
        }}

    def resolution(self, image, width, height, resize_mode):
        if image.ndim != 4:
            raise ValueError(f"image must be an IMAGE batch (batch x height x width x channels), got {tuple(image.shape)}")
        image_height, image_width = int(image.shape[1]), int(image.shape[2])
        return (pixel_perfect_resolution((image_height, image_width), (height, width), resize_mode),)


NODES = {
    "CNS_ResizeForControl": (CNS_ResizeForControl, "Resize for Control"),
    "CNS_PixelPerfectResolution": (CNS_PixelPerfectResolution, "Pixel Perfect Resolution"),
}
