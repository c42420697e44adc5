"""LeReS depth (A1111's depth_leres; comfyui_controlnet_aux's "LeReS Depth Map" with boost off),
with the network of `leres_network`.

Pipeline (controlnet-aux 0.0.10 LeresDetector.__call__ with boost=False and depthmap.py
estimateleres, which comfyui_controlnet_aux runs too):
  1. the image at the detect resolution (sides multiples of 64), its channels reversed (RGB ->
     BGR), normalised with the ImageNet mean and std **on the 0..255 values**: scale_torch hands
     torchvision's ToTensor a float32 array, which it does not divide by 255;
  2. the network's relative depth d (far is large), at the same size;
  3. 16-bit: (d - min) x 65535 / (max - min) in float32, truncated (all zero when max - min is
     within float64 epsilon); to 8-bit with OpenCV's convertScaleAbs (x 255/65535, rounded);
  4. remove nearest (percent of 255): levels at or below it become 0, then the map is inverted
     (near = white) and remove background (percent of 255) zeroes the levels at or below it (far);
  5. the map bilinearly back to the image's size (run_at_resolution).

A 0 threshold leaves the map alone, as in the peer. With the detect resolution off (None) the
image is padded to multiples of 32 by repeating its edge and the depth cropped back before step 3
(the peer fails on such sizes).

Weights: `res101.pth` from lllyasviel/Annotators, LeReS's ResNeXt-101 checkpoint; its weights are
under 'depth_model' with DataParallel's "module." prefix (weights.py unwraps and strips both).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .leres_network import SIZE_MULTIPLE, LeReSNetwork
from .networks_common import image_batch, load_network_from_weights, pad_to_multiple, to_numpy

# https://huggingface.co/lllyasviel/Annotators/blob/main/res101.pth (controlnet-aux LeresDetector's file).
LERES_WEIGHTS = "res101.pth"

# depthmap.py scale_torch: transforms.Normalize(mean, std), applied to the BGR channels in this order.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# LeresDetector: numbytes = 2, so the depth is first spread over 0 .. 2^16 - 1 ...
DEPTH_16_BIT_MAX = 65535
# ... then brought to 8 bits by cv2.convertScaleAbs(alpha=255/65535).
SIXTEEN_TO_EIGHT_BIT = 255.0 / 65535.0
# The thresholds are percentages of the 8-bit range (the peer's thr_a / 100 * 255), so at most 100.
MAX_PERCENT = 100.0
EIGHT_BIT_MAX = 255


def load_leres(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> LeReSNetwork:
    """LeReSNetwork with the published `res101.pth` from the annotators models folders (the
    checkpoint's 'depth_model' entry, "module." stripped; strict: every key must match)."""
    return load_network_from_weights(lambda _: LeReSNetwork(), LERES_WEIGHTS, folders, device, dtype)  # 115.4 M parameters


def network_input(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB HxWx3 -> float32 HxWx3 network input: BGR, (v - mean) / std on 0..255 values
    (step 1 of the module docstring), in float32 as the peer's torch ops."""
    bgr = rgb[:, :, ::-1].astype(np.float32)
    return (bgr - np.array(IMAGENET_MEAN, dtype=np.float32)) / np.array(IMAGENET_STD, dtype=np.float32)


def leres_depth(rgb: np.ndarray, network: LeReSNetwork) -> np.ndarray:
    """HxW float32 relative depth (far is large) of a uint8 RGB image, at its own size. Sides that
    are not multiples of 32 are padded by repeating the edge and the result cropped back (a
    no-op at detect resolutions, which are multiples of 64)."""
    height, width = rgb.shape[:2]
    padded = pad_to_multiple(rgb, SIZE_MULTIPLE)
    with torch.no_grad():
        depth = network(image_batch(network_input(padded), network))
    return to_numpy(depth)[0, 0, :height, :width]


def _check_percent(value: float, name: str, meaning: str) -> None:
    if not 0.0 <= value <= MAX_PERCENT:
        raise ValueError(f"{name} is a percentage of the depth range and must lie in 0..100, got {value}; "
                         f"0 keeps {meaning}")


def depth_to_map(depth: np.ndarray, remove_nearest: float = 0.0, remove_background: float = 0.0) -> np.ndarray:
    """HxW uint8 depth map, near = white, from raw LeReS depth (steps 3-4 of the module docstring)."""
    _check_percent(remove_nearest, "remove_nearest", "the nearest parts")
    _check_percent(remove_background, "remove_background", "the background")
    low, high = depth.min(), depth.max()
    if high - low > np.finfo(np.float64).eps:
        # In the peer's order and float32: 65535 * (d - min) first, then / (max - min).
        spread = np.float32(DEPTH_16_BIT_MAX) * (depth - low) / (high - low)
    else:
        spread = np.zeros(depth.shape)
    depth_map = cv2.convertScaleAbs(spread.astype(np.uint16), alpha=SIXTEEN_TO_EIGHT_BIT)
    if remove_nearest:
        depth_map = cv2.threshold(depth_map, remove_nearest / MAX_PERCENT * EIGHT_BIT_MAX, EIGHT_BIT_MAX,
                                  cv2.THRESH_TOZERO)[1]
    depth_map = cv2.bitwise_not(depth_map)
    if remove_background:
        depth_map = cv2.threshold(depth_map, remove_background / MAX_PERCENT * EIGHT_BIT_MAX, EIGHT_BIT_MAX,
                                  cv2.THRESH_TOZERO)[1]
    return depth_map


def leres(
    image: np.ndarray,
    network: LeReSNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    remove_nearest: float = 0.0,
    remove_background: float = 0.0,
) -> np.ndarray:
    """LeReS depth map (uint8 HxWx3 gray, near = white) at the image's size.

    `remove_nearest` (0..100, percent of the 8-bit range) blanks the nearest levels before the
    map is inverted, which turns them white; `remove_background` (0..100) turns the farthest
    levels black. 0 leaves the map as it is. `resolution` is the detect resolution (short side,
    rounded to multiples of 64); None runs the network on the image as it is.
    """
    _check_percent(remove_nearest, "remove_nearest", "the nearest parts")
    _check_percent(remove_background, "remove_background", "the background")
    return run_at_resolution(
        image, resolution,
        lambda rgb: depth_to_map(leres_depth(rgb, network), remove_nearest, remove_background),
        restore_interpolation=cv2.INTER_LINEAR)
