"""Depth Anything V2 relative depth (comfyui_controlnet_aux's "Depth Anything V2 - Relative"),
with the network of `depth_anything_network`.

Pipeline (DepthAnything/Depth-Anything-V2 dpt.py `infer_image(raw_image, input_size=518)`, which
comfyui_controlnet_aux's DepthAnythingV2Detector runs, then that detector's normalisation):
  1. RGB / 255 (float64), resized with cv2.INTER_CUBIC keeping the aspect ratio so that the short
     side is 518 and both sides are multiples of 14 (util/transform.py Resize: "lower_bound",
     each side rounded half to even to a multiple of 14, rounded up instead where that falls
     below 518), normalised with the ImageNet mean and std, then float32;
  2. the network's relative inverse depth d (near is large);
  3. d bilinearly resized (align_corners=True) back to the image's size;
  4. depth map: (d - min) / (max - min) x 255, truncated to uint8 (near = white).

The detect resolution works as for every annotator of this pack: the image is first resized to
it (short side, multiples of 64), steps 1-4 run on that, and the map comes back bilinearly to the
image's size; None runs steps 1-4 on the image as it is (exactly the original's infer_image).
The network sees a 518-pixel short side either way.

Only the relative-depth files load meaningfully: the metric ones (depth_anything_v2_metric_*)
have the same keys but end in a sigmoid scaled by a maximum depth, and Depth Anything V1 files
read other blocks; neither can be told from the shapes, so the node offers the three relative
files by name.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .depth_anything_network import ENCODERS, PATCH_SIZE, DepthAnythingV2Network, encoder_for_width
from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import load_network_from_weights, to_numpy
from .weights import BadWeightsError

# Published by the authors (huggingface.co/depth-anything/Depth-Anything-V2-<Size>/blob/main/<file>),
# not by lllyasviel/Annotators; comfyui_controlnet_aux keeps them as ckpts/<repo>/<file>.
DEPTH_ANYTHING_V2_SMALL = "depth_anything_v2_vits.pth"
DEPTH_ANYTHING_V2_BASE = "depth_anything_v2_vitb.pth"
DEPTH_ANYTHING_V2_LARGE = "depth_anything_v2_vitl.pth"
WEIGHTS_REPOS = {
    DEPTH_ANYTHING_V2_SMALL: "depth-anything/Depth-Anything-V2-Small",
    DEPTH_ANYTHING_V2_BASE: "depth-anything/Depth-Anything-V2-Base",
    DEPTH_ANYTHING_V2_LARGE: "depth-anything/Depth-Anything-V2-Large",
}
# The node's model choice -> file. "large" is comfyui_controlnet_aux's default
# (ckpt_name default depth_anything_v2_vitl.pth).
MODEL_FILES = {"small": DEPTH_ANYTHING_V2_SMALL, "base": DEPTH_ANYTHING_V2_BASE, "large": DEPTH_ANYTHING_V2_LARGE}
DEFAULT_MODEL = "large"

# dpt.py infer_image(input_size=518); read at call time (input_size=None), so tests can shrink it.
INPUT_SIZE = 518
# dpt.py image2tensor: NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEPTH_TO_PIXEL = 255.0
CLASS_TOKEN_KEY = "pretrained.cls_token"


def encoder_from_weights(state_dict: dict[str, torch.Tensor], name: str) -> str:
    """The encoder size ("vits", "vitb", "vitl", "vitg") of a Depth Anything V2 state dict, from
    the width of its class token; the strict load then checks every other shape."""
    token = state_dict.get(CLASS_TOKEN_KEY)
    if token is None:
        raise BadWeightsError(
            f"'{name}' is not a Depth Anything V2 checkpoint (it has no '{CLASS_TOKEN_KEY}'); download "
            f"{name} again from https://huggingface.co/{WEIGHTS_REPOS.get(name, 'depth-anything')}")
    size = encoder_for_width(token.shape[-1])
    if size is None:
        known = ", ".join(f"{s.name} ({s.embed_dim})" for s in ENCODERS.values())
        raise BadWeightsError(
            f"'{name}' has a {token.shape[-1]}-wide encoder, which is none of Depth Anything V2's: {known}")
    return size.name


def load_depth_anything(
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: str = DEFAULT_MODEL,
) -> DepthAnythingV2Network:
    """DepthAnythingV2Network with the published weights of `size` ("small", "base", "large") from
    the annotators models folders (directly or as ckpts/<repo>/<file>). The encoder is the one the
    weights' shapes say; the load is strict: every key of the file must match."""
    if size not in MODEL_FILES:
        raise ValueError(f"Depth Anything V2 model must be one of {', '.join(MODEL_FILES)}, got '{size}'")
    file_name = MODEL_FILES[size]
    return load_network_from_weights(  # the large one has 335 M parameters
        lambda state_dict: DepthAnythingV2Network(encoder_from_weights(state_dict, file_name)),
        file_name, folders, device, dtype, repo=WEIGHTS_REPOS[file_name])


def network_input_size(height: int, width: int, input_size: int) -> tuple[int, int]:
    """(height, width) the network sees (util/transform.py Resize.get_size, keep_aspect_ratio,
    "lower_bound", ensure_multiple_of=14): the image scaled by the larger of input_size / height
    and input_size / width, each side rounded (half to even) to a multiple of 14, rounded up
    instead where rounding would fall below input_size."""
    scale = max(input_size / height, input_size / width)

    def constrain(side: float) -> int:
        rounded = int(np.round(side / PATCH_SIZE) * PATCH_SIZE)
        return rounded if rounded >= input_size else int(np.ceil(side / PATCH_SIZE) * PATCH_SIZE)

    return constrain(scale * height), constrain(scale * width)


def network_input(rgb: np.ndarray, input_size: int) -> np.ndarray:
    """uint8 RGB -> float32 HxWx3 network input (step 1 of the module docstring; float64 until
    the end, as the original's numpy transforms)."""
    new_height, new_width = network_input_size(rgb.shape[0], rgb.shape[1], input_size)
    image = rgb / 255.0
    image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_CUBIC)
    image = (image - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return image.astype(np.float32)


def relative_depth(rgb: np.ndarray, network: torch.nn.Module, input_size: int | None = None) -> np.ndarray:
    """HxW float32 relative inverse depth of a uint8 RGB image, at its own size (steps 1-3)."""
    height, width = rgb.shape[:2]
    parameter = next(network.parameters())
    x = torch.from_numpy(network_input(rgb, INPUT_SIZE if input_size is None else input_size))
    x = x.permute(2, 0, 1)[None].to(device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        depth = network(x)
        depth = F.interpolate(depth[:, None].float(), (height, width), mode="bilinear", align_corners=True)
    return to_numpy(depth)[0, 0]


def depth_to_map(depth: np.ndarray) -> np.ndarray:
    """HxW uint8: (d - min) / (max - min) x 255, truncated, in float32 (the peer's arithmetic).
    A flat depth (where the peer divides by zero) gives a black map."""
    low = depth.min()
    spread = depth.max() - low
    if not spread > 0:
        return np.zeros(depth.shape, np.uint8)
    return ((depth - low) / spread * DEPTH_TO_PIXEL).clip(0, 255).astype(np.uint8)


def depth_anything(
    image: np.ndarray,
    network: DepthAnythingV2Network,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    input_size: int | None = None,
) -> np.ndarray:
    """Depth Anything V2 depth map (uint8 HxWx3 gray, near = white) at the image's size.

    `resolution` is the detect resolution (short side, rounded to multiples of 64; None: the
    image as it is); `input_size` the network's short side (None: 518, the original's)."""
    return run_at_resolution(
        image, resolution, lambda rgb: depth_to_map(relative_depth(rgb, network, input_size)))
