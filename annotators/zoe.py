"""ZoeDepth depth maps (ControlNet 1.1's and A1111's depth_zoe), with the network of `zoe_network`.

Pipeline (controlnet_aux 0.0.10 ZoeDetector around ZoeDepth's DepthModel.infer; ControlNet 1.1's
annotator/zoe and A1111's are the same, and so was comfyui_controlnet_aux's "Zoe Depth Map" until it
moved to transformers' Intel/zoedepth-nyu-kitti, another checkpoint, in June 2025):
  1. the image (at the detect resolution) as RGB / 255 in float32;
  2. padding and flip augmentation (DepthModel.infer, pad_input and with_flip_aug on): the image
     is reflect-padded by int(sqrt(side / 2) * 3) pixels on each side, run, and the padding cropped
     off again; the same for the mirrored image, whose depth is mirrored back; the mean of the two;
  3. each run (MidasCore's PrepForMidas): the padded image resized bilinearly (align_corners=True)
     to the network size -- the image scaled by whichever of 384 / height and 512 / width is nearer
     1 ("minimal", keeping the aspect ratio), each side rounded half to even to a multiple of 32 --
     then normalised to -1..1; the network's metric depth brought back to the padded size bicubically;
  4. depth map: d -> 1 - (d - p2) / (p85 - p2), with p2 and p85 the 2nd and 85th percentiles of d,
     optionally to the power 2.2, x 255, clipped and truncated to uint8: near is white, and the
     farthest 15% of the pixels are black.

The detect resolution works as for every annotator of this pack: the image is resized to it (short
side, multiples of 64), steps 1-4 run on that, and the map comes back bilinearly to the image's size.
The network sees about 384 x 512 pixels whatever the detect resolution.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .image import DEFAULT_DETECT_RESOLUTION, check_min_side, run_at_resolution
from .networks_common import load_network_from_weights, to_numpy
from .weights import PUBLISHED_AT, BadWeightsError
from .zoe_network import CLASS_TOKEN_RELATIONS, ZoeDepthNetwork, ZoeSize

# https://huggingface.co/lllyasviel/Annotators/blob/main/ZoeD_M12_N.pt (isl-org/ZoeDepth v1.0
# ZoeD_N: the NYU Depth v2 metric head on MiDaS v3.1 BEiT-L 384, 345 M parameters).
ZOE_WEIGHTS = "ZoeD_M12_N.pt"

# config_zoedepth.json "img_size": [384, 512] (height, width); read at call time (input_size=None),
# so tests can shrink it.
NETWORK_INPUT_SIZE = (384, 512)
SIZE_MULTIPLE = 32      # PrepForMidas: Resize(ensure_multiple_of=32)
PAD_FACTOR = 3          # DepthModel._infer_with_pad_aug fh = fw = 3
MIN_SIDE = 5            # reflect padding needs pad < side: int(sqrt(side / 2) * 3) < side from 5 on
NEAR_PERCENTILE = 2     # ZoeDetector: vmin = np.percentile(depth, 2)
FAR_PERCENTILE = 85     # ZoeDetector: vmax = np.percentile(depth, 85)
GAMMA = 2.2             # ZoeDetector gamma_corrected
DEPTH_TO_PIXEL = 255.0

_PREFIX = "core.core."
_CLASS_TOKEN = _PREFIX + "pretrained.model.cls_token"
_BIAS_TABLE = _PREFIX + "pretrained.model.blocks.0.attn.relative_position_bias_table"
_REASSEMBLE = _PREFIX + "pretrained.act_postprocess{}.3.weight"
_DECODER = _PREFIX + "scratch.layer1_rn.weight"


def size_from_weights(state_dict: dict[str, torch.Tensor], name: str) -> ZoeSize:
    """The widths of a ZoeDepth state dict, from a few of its shapes; the strict load then checks
    every other one."""
    try:
        table = state_dict[_BIAS_TABLE]
        offsets = table.shape[0] - CLASS_TOKEN_RELATIONS
        return ZoeSize(
            embed_dim=state_dict[_CLASS_TOKEN].shape[-1],
            heads=table.shape[1],
            window=(math.isqrt(offsets) + 1) // 2,  # offsets = (2 * window - 1) ** 2
            reassemble_channels=tuple(state_dict[_REASSEMBLE.format(i)].shape[0] for i in range(1, 5)),
            features=state_dict[_DECODER].shape[0])
    except KeyError as missing:
        raise BadWeightsError(
            f"'{name}' is not a ZoeDepth checkpoint (it has no '{missing.args[0]}'); download {ZOE_WEIGHTS} "
            f"again from {PUBLISHED_AT}") from None


def load_zoe(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ZoeDepthNetwork:
    """ZoeDepthNetwork with the published `ZoeD_M12_N.pt` from the annotators models folders
    (directly or as ckpts/lllyasviel/Annotators/<file>), strictly: every key of the file must match."""
    return load_network_from_weights(lambda state_dict: ZoeDepthNetwork(size_from_weights(state_dict, ZOE_WEIGHTS)),
                                     ZOE_WEIGHTS, folders, device, dtype)


def network_input_size(height: int, width: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """(height, width) the network sees (PrepForMidas Resize, keep_aspect_ratio, "minimal",
    ensure_multiple_of=32): the image scaled by whichever of target_height / height and
    target_width / width is nearer 1, each side rounded half to even to a multiple of 32."""
    scale_height, scale_width = input_size[0] / height, input_size[1] / width
    scale = scale_width if abs(1 - scale_width) < abs(1 - scale_height) else scale_height
    new_height = int(np.round(scale * height / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    new_width = int(np.round(scale * width / SIZE_MULTIPLE)) * SIZE_MULTIPLE
    if not (new_height and new_width):
        raise ValueError(
            f"ZoeDepth cannot run a {height}x{width} image: scaled for its {input_size[0]}x{input_size[1]} "
            f"input, one side would round to 0 pixels; crop the image to a less elongated shape")
    return new_height, new_width


def network_input(image: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Bx3xHxW RGB in 0..1 -> the network's input (PrepForMidas): resized bilinearly
    (align_corners=True) to network_input_size, then normalised to -1..1 (Normalize(mean=0.5, std=0.5))."""
    size = network_input_size(*image.shape[-2:], input_size)
    return (F.interpolate(image, size, mode="bilinear", align_corners=True) - 0.5) / 0.5


def _run(image: torch.Tensor, network: ZoeDepthNetwork, input_size: tuple[int, int]) -> torch.Tensor:
    """Metric depth at the image's size: reflect-padded, prepared for the network, the result brought
    back to the padded size (bicubic) and the padding cropped off (steps 2-3)."""
    height, width = image.shape[-2:]
    pad_height = int(np.sqrt(height / 2) * PAD_FACTOR)
    pad_width = int(np.sqrt(width / 2) * PAD_FACTOR)
    padded = F.pad(image, [pad_width, pad_width, pad_height, pad_height], mode="reflect")
    depth = network(network_input(padded, input_size))
    if depth.shape[-2:] != padded.shape[-2:]:
        depth = F.interpolate(depth, size=padded.shape[-2:], mode="bicubic", align_corners=False)
    return depth[:, :, pad_height:pad_height + height, pad_width:pad_width + width]


def metric_depth(rgb: np.ndarray, network: ZoeDepthNetwork, input_size: tuple[int, int] | None = None) -> np.ndarray:
    """HxW float32 metric depth (metres, far is large) of a uint8 RGB image at its own size: the
    mean of the padded runs on the image and on its mirror image (steps 1-3)."""
    check_min_side(rgb, MIN_SIDE, "ZoeDepth")
    parameter = next(network.parameters())
    image = torch.from_numpy(rgb).float() / 255.0
    image = image.permute(2, 0, 1)[None].to(device=parameter.device, dtype=parameter.dtype)
    size = NETWORK_INPUT_SIZE if input_size is None else input_size
    with torch.no_grad():
        straight = _run(image, network, size)
        mirrored = _run(torch.flip(image, dims=[3]), network, size)
        depth = (straight + torch.flip(mirrored, dims=[3])) / 2
    return to_numpy(depth)[0, 0]



def depth_to_map(depth: np.ndarray, gamma_corrected: bool = False) -> np.ndarray:
    """HxW uint8 map of metric depth with ZoeDetector's arithmetic: 1 - (d - p2) / (p85 - p2),
    optionally ^2.2, x 255, clipped, truncated. Pixels farther than p85 are black; with the gamma
    their negative values (NaN in the peer, cast to 0) are taken as 0. Where p2 == p85 (the peer
    divides by zero) the pixels nearer than that depth are white and the rest black."""
    near, far = np.percentile(depth, NEAR_PERCENTILE), np.percentile(depth, FAR_PERCENTILE)
    if not far - near > 0:
        return np.where(depth < near, 255, 0).astype(np.uint8)
    relative = depth.copy()
    relative -= near
    relative /= far - near
    relative = 1.0 - relative
    if gamma_corrected:
        relative = np.power(np.maximum(relative, 0.0), GAMMA)
    return (relative * DEPTH_TO_PIXEL).clip(0, 255).astype(np.uint8)


def zoe_depth(
    image: np.ndarray,
    network: ZoeDepthNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    gamma_corrected: bool = False,
    input_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """ZoeDepth depth map (uint8 HxWx3 gray, near = white) at the image's size.

    `resolution` is the detect resolution (short side, rounded to multiples of 64; None: the image
    as it is); `gamma_corrected` raises the normalised depth to the power 2.2 (ZoeDetector's option,
    off there by default); `input_size` is the network's (height, width) target (None: 384 x 512)."""
    return run_at_resolution(
        image, resolution, lambda rgb: depth_to_map(metric_depth(rgb, network, input_size), gamma_corrected))
