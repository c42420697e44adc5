"""Depth Anything V2 relative depth (comfyui_controlnet_aux's "Depth Anything V2 - Relative"),
and Depth Anything V1's (A1111's "depth_anything", comfyui_controlnet_aux's "Depth Anything"),
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

Depth Anything V1 (`depth_anything_v1`, `load_depth_anything_v1`) runs the same pipeline, as its
run.py does, with one difference: step 3 resizes with align_corners=False. Its files have V2's keys
and shapes but the head reads the last four blocks (depth_anything_network.V1_ENCODERS), which the
shapes cannot tell: the file's name decides (a V1 file is one of V1_MODEL_FILES). A1111's V1 and
V2 preprocessors swap red and blue before the network (cv2.COLOR_BGR2RGB on an RGB image); this
module, like run.py and comfyui_controlnet_aux, gives the network RGB.

Only the relative-depth files load meaningfully: the metric ones (depth_anything_v2_metric_*)
have the same keys but end in a sigmoid scaled by a maximum depth, which the shapes cannot tell
either, so the nodes offer the relative files by name.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .depth_anything_network import ENCODERS, PATCH_SIZE, V1_ENCODERS, DepthAnythingV2Network, encoder_for_width
from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import load_network_from_weights, to_numpy
from .weights import BadWeightsError, published_url

# Published by the authors (huggingface.co/depth-anything/Depth-Anything-V2-<Size>/blob/main/<file>),
# not by lllyasviel/Annotators; comfyui_controlnet_aux keeps them as ckpts/<repo>/<file>.
DEPTH_ANYTHING_V2_SMALL = "depth_anything_v2_vits.pth"
DEPTH_ANYTHING_V2_BASE = "depth_anything_v2_vitb.pth"
DEPTH_ANYTHING_V2_LARGE = "depth_anything_v2_vitl.pth"
# Depth Anything V1's, in the folder `checkpoints` of the authors' Space (huggingface.co/spaces/
# LiheYoung/Depth-Anything), where their README, A1111 and comfyui_controlnet_aux (until it moved to
# transformers' LiheYoung/depth-anything-*-hf in 2025) get them; controlnet_aux kept them as
# ckpts/LiheYoung/Depth-Anything/checkpoints/<file>.
DEPTH_ANYTHING_V1_SMALL = "depth_anything_vits14.pth"
DEPTH_ANYTHING_V1_BASE = "depth_anything_vitb14.pth"
DEPTH_ANYTHING_V1_LARGE = "depth_anything_vitl14.pth"
V1_REPO = "spaces/LiheYoung/Depth-Anything/checkpoints"
WEIGHTS_REPOS = {
    DEPTH_ANYTHING_V2_SMALL: "depth-anything/Depth-Anything-V2-Small",
    DEPTH_ANYTHING_V2_BASE: "depth-anything/Depth-Anything-V2-Base",
    DEPTH_ANYTHING_V2_LARGE: "depth-anything/Depth-Anything-V2-Large",
    DEPTH_ANYTHING_V1_SMALL: V1_REPO,
    DEPTH_ANYTHING_V1_BASE: V1_REPO,
    DEPTH_ANYTHING_V1_LARGE: V1_REPO,
}
# The nodes' model choice -> file. "large" is comfyui_controlnet_aux's default for both (ckpt_name
# default depth_anything_v2_vitl.pth, depth_anything_vitl14.pth) and A1111's only V1 file.
MODEL_FILES = {"small": DEPTH_ANYTHING_V2_SMALL, "base": DEPTH_ANYTHING_V2_BASE, "large": DEPTH_ANYTHING_V2_LARGE}
V1_MODEL_FILES = {"small": DEPTH_ANYTHING_V1_SMALL, "base": DEPTH_ANYTHING_V1_BASE, "large": DEPTH_ANYTHING_V1_LARGE}
DEFAULT_MODEL = "large"

# dpt.py infer_image(input_size=518); read at call time (input_size=None), so tests can shrink it.
INPUT_SIZE = 518
# dpt.py image2tensor: NormalizeImage(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEPTH_TO_PIXEL = 255.0
CLASS_TOKEN_KEY = "pretrained.cls_token"
# The final resize back to the image's size (step 3): V2's infer_image F.interpolate(...,
# align_corners=True); V1's run.py (and A1111's and controlnet_aux's V1 detectors) align_corners=False.
V2_ALIGN_CORNERS = True
V1_ALIGN_CORNERS = False


def is_v1_file(name: str) -> bool:
    return name in V1_MODEL_FILES.values()


def encoder_from_weights(state_dict: dict[str, torch.Tensor], name: str) -> str:
    """The encoder size ("vits", "vitb", "vitl", "vitg"; V1 files: one of the first three) of a
    Depth Anything state dict, from the width of its class token; the strict load then checks
    every other shape."""
    version, encoders = ("V1", V1_ENCODERS) if is_v1_file(name) else ("V2", ENCODERS)
    token = state_dict.get(CLASS_TOKEN_KEY)
    if token is None:
        raise BadWeightsError(
            f"'{name}' is not a Depth Anything {version} checkpoint (it has no '{CLASS_TOKEN_KEY}'); download "
            f"{name} again from {published_url(WEIGHTS_REPOS.get(name, 'depth-anything'))}")
    size = encoder_for_width(token.shape[-1])
    if size is None or size.name not in encoders:
        known = ", ".join(f"{s.name} ({s.embed_dim})" for s in encoders.values())
        raise BadWeightsError(
            f"'{name}' has a {token.shape[-1]}-wide encoder, which is none of Depth Anything {version}'s: {known}")
    return size.name


def load_network_for_file(
    file_name: str, folders: Sequence[str], device: torch.device | str, dtype: torch.dtype,
) -> DepthAnythingV2Network:
    """The network in `file_name`: its encoder from the weights' shapes, the blocks its head reads
    from the file's version (V1_ENCODERS for V1 files); the load is strict."""
    encoders = V1_ENCODERS if is_v1_file(file_name) else ENCODERS
    return load_network_from_weights(  # the large one has 335 M parameters
        lambda state_dict: DepthAnythingV2Network(encoders[encoder_from_weights(state_dict, file_name)]),
        file_name, folders, device, dtype, repo=WEIGHTS_REPOS[file_name])


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
    return load_network_for_file(MODEL_FILES[size], folders, device, dtype)


def load_depth_anything_v1(
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: str = DEFAULT_MODEL,
) -> DepthAnythingV2Network:
    """Depth Anything V1 with the published weights of `size` ("small", "base", "large":
    depth_anything_vit{s,b,l}14.pth), found and loaded as load_depth_anything's."""
    if size not in V1_MODEL_FILES:
        raise ValueError(f"Depth Anything V1 model must be one of {', '.join(V1_MODEL_FILES)}, got '{size}'")
    return load_network_for_file(V1_MODEL_FILES[size], folders, device, dtype)


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


def relative_depth(rgb: np.ndarray, network: torch.nn.Module, input_size: int | None = None,
                   align_corners: bool = V2_ALIGN_CORNERS) -> np.ndarray:
    """HxW float32 relative inverse depth of a uint8 RGB image, at its own size (steps 1-3;
    `align_corners` is step 3's: V2_ALIGN_CORNERS or V1_ALIGN_CORNERS)."""
    height, width = rgb.shape[:2]
    parameter = next(network.parameters())
    x = torch.from_numpy(network_input(rgb, INPUT_SIZE if input_size is None else input_size))
    x = x.permute(2, 0, 1)[None].to(device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        depth = network(x)
        depth = F.interpolate(depth[:, None].float(), (height, width), mode="bilinear", align_corners=align_corners)
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


def depth_anything_v1(
    image: np.ndarray,
    network: DepthAnythingV2Network,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    input_size: int | None = None,
) -> np.ndarray:
    """Depth Anything V1 depth map (`network` from load_depth_anything_v1): as depth_anything,
    with V1's final resize (align_corners=False)."""
    return run_at_resolution(image, resolution, lambda rgb: depth_to_map(
        relative_depth(rgb, network, input_size, align_corners=V1_ALIGN_CORNERS)))
