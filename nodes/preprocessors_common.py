"""What every annotator node shares: the category, the `image` and `resolution` inputs, and
running an annotator over an IMAGE batch one image at a time.

ComfyUI's IMAGE is a float tensor B x H x W x C in 0..1. Each image goes to the annotator as a
float32 H x W x C numpy array, so the annotators' own conversion rules (annotators/image.py)
apply; values are clamped to 0..1 first, because resampling nodes (Lanczos, bicubic) overshoot
a little and an annotator refuses floats outside 0..1. Maps come back as uint8 and are returned
as float32 / 255 (the inpaint hint, already float in -1..1, is returned as it is).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..annotators.image import DEFAULT_DETECT_RESOLUTION, DETECT_MULTIPLE, MAX_IMAGE_SIDE

CATEGORY = "ControlNet Suite/preprocessors"
# ComfyUI's MAX_RESOLUTION (nodes.py), also the annotators' largest image side.
MAX_SIZE = MAX_IMAGE_SIDE
# Generation sizes are multiples of the VAE's 8-pixel latent cell.
LATENT_CELL_PX = 8
# A resolution of 0 means "detect at the image's own size" (annotator resolution=None).
OWN_SIZE = 0
UINT8_MAX = 255.0

IMAGE_INPUT = ("IMAGE", {"tooltip": "The image(s) to annotate. A batch is processed image by image; the output has the same batch size."})


def resolution_input(default: int = DEFAULT_DETECT_RESOLUTION) -> tuple[str, dict[str, Any]]:
    """The detect-resolution input of every annotator that resizes before detecting."""
    return ("INT", {
        "default": default, "min": OWN_SIZE, "max": MAX_SIZE, "step": DETECT_MULTIPLE,
        "tooltip": (
            f"Detect resolution: the image's short side is scaled to this and both sides are rounded to a multiple of "
            f"{DETECT_MULTIPLE} before detection, as ControlNet v1.1 does; the map comes back at the image's own size. "
            f"{OWN_SIZE} detects at the image's own size. Feed it from 'Pixel Perfect Resolution' to match the generation size."
        ),
    })


def detect_resolution(resolution: int) -> int | None:
    """The node's resolution value as the annotators take it (None = the image's own size)."""
    return None if resolution == OWN_SIZE else int(resolution)


def image_frames(image: torch.Tensor, what: str = "image") -> np.ndarray:
    """A ComfyUI IMAGE batch as float32 numpy B x H x W x C in 0..1, refusing what is not one."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{what} must be an IMAGE batch (batch x height x width x channels), got {shape}")
    if image.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch; pass at least one image")
    return image.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0).numpy()


def per_image(frames: Sequence[np.ndarray], annotate: Callable[[np.ndarray], Any]) -> list[Any]:
    """`annotate` on every frame in order, with ComfyUI's progress bar and cancel checks."""
    import comfy.model_management
    import comfy.utils

    progress = comfy.utils.ProgressBar(len(frames))
    results = []
    for frame in frames:
        comfy.model_management.throw_exception_if_processing_interrupted()
        results.append(annotate(frame))
        progress.update(1)
    return results


def fit_frames(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    """Frames (B x H x W x C) at width x height, fitted as the ControlNets fit a hint to the latent:
    centre crop to that shape, then resize (bilinear: brightness and colour, not labels)."""
    import comfy.utils

    if frames.shape[1:3] == (height, width):
        return frames
    fitted = comfy.utils.common_upscale(torch.from_numpy(frames).movedim(-1, 1), width, height, "bilinear", "center")
    return fitted.movedim(1, -1).clamp(0.0, 1.0).numpy()


def maps_to_image(maps: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 H x W x 3 maps (or float arrays: hints, H x W masks) -> an IMAGE (or MASK) batch on
    ComfyUI's intermediate device; uint8 is divided by 255, floats are kept."""
    import comfy.model_management

    tensors = [torch.from_numpy(np.ascontiguousarray(m)).float() / (UINT8_MAX if m.dtype == np.uint8 else 1.0)
               for m in maps]
    return torch.stack(tensors).to(comfy.model_management.intermediate_device())


def annotate_batch(image: torch.Tensor, annotate: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """The IMAGE batch of `annotate`'s maps, one per image of `image`."""
    return maps_to_image(per_image(image_frames(image), annotate))
