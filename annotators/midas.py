"""MiDaS depth (the ControlNet "depth" condition) and the MiDaS normal map (ControlNet 1.0
"normal"), from one run of the DPT-Hybrid network (see `midas_network`).

Pipeline (v1.0 annotator/midas `apply_midas`; controlnet-aux 0.0.10 MidasDetector is the same):
  1. the image, resized to the detect resolution (sides multiples of 64), RGB / 127.5 - 1;
  2. the network's relative inverse depth d (near is large);
  3. depth map: (d - min) / max(d - min) x 255, truncated to uint8 (near = white);
  4. normal map: x = Sobel_x(d), y = Sobel_y(d) (3x3, on the raw d, so steepness depends on
     the network's output scale), z = a = 2*pi; x = y = 0 where the normalised depth is below
     the background threshold (far pixels face the camera); (x, y, z) / |(x, y, z)| x 127.5
     + 127.5, truncated to uint8;
  5. both maps bilinearly back to the image's size.

Normal channel order: v1.0 gradio_normal2image feeds control_sd15_normal `map[:, :, ::-1]` and
controlnet-aux returns that flipped map, so the map here is already in the order the model
consumes: R = z, G = y, B = x (the same as `normal_from_depth(..., bgr=True)`).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from .image import DEFAULT_DETECT_RESOLUTION, hwc3, resize_for_detection, to_rgb_uint8
from .midas_network import SIZE_MULTIPLE, MiDaSNetwork
from .networks_common import image_batch, load_network_from_weights, pad_to_multiple, to_numpy
from .normal_from_depth import DEFAULT_Z_COMPONENT, NORMAL_TO_PIXEL_SCALE, SOBEL_KERNEL_SIZE

# https://huggingface.co/lllyasviel/Annotators/blob/main/dpt_hybrid-midas-501f0c75.pt
# (isl-org/MiDaS v3 DPT-Hybrid; v1.0/v1.1 annotator/midas).
MIDAS_WEIGHTS = "dpt_hybrid-midas-501f0c75.pt"

# v1.0 gradio_normal2image "Normal background threshold" default (A1111's midas normal too);
# the annotator function itself and controlnet-aux default to 0.1.
DEFAULT_NORMAL_BACKGROUND_THRESHOLD = 0.4
HALF_RANGE = 127.5  # RGB / 127.5 - 1 -> -1..1 (MiDaS NormalizeImage mean = std = 0.5)
DEPTH_TO_PIXEL = 255.0


def load_midas(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MiDaSNetwork:
    """MiDaSNetwork with the published `dpt_hybrid-midas-501f0c75.pt` from the annotators
    models folders (strict: every key of the file must match)."""
    return load_network_from_weights(lambda _: MiDaSNetwork(), MIDAS_WEIGHTS, folders, device, dtype)  # 123 M parameters


def midas_inverse_depth(rgb: np.ndarray, network: MiDaSNetwork) -> np.ndarray:
    """HxW float32 relative inverse depth of a uint8 RGB image, at its own size. Sides that are
    not multiples of 32 are padded by repeating the edge and the result cropped back (a no-op
    at detect resolutions, which are multiples of 64)."""
    height, width = rgb.shape[:2]
    scaled = pad_to_multiple(rgb, SIZE_MULTIPLE).astype(np.float32) / HALF_RANGE - 1.0
    with torch.no_grad():
        depth = network(image_batch(scaled, network, channels_last=True))
    return to_numpy(depth)[0, :height, :width]


def depth_to_maps(
    depth: np.ndarray,
    background_threshold: float = DEFAULT_NORMAL_BACKGROUND_THRESHOLD,
    z_component: float = DEFAULT_Z_COMPONENT,
) -> tuple[np.ndarray, np.ndarray]:
    """(depth map HxW uint8, normal map HxWx3 uint8 in R=z, G=y, B=x order) from raw inverse
    depth, with v1.0's arithmetic in float32. A flat depth (max == min, where v1.0 divides
    by zero) gives a black depth map and a normal map facing the camera."""
    shifted = depth - depth.min()
    peak = shifted.max()
    relative = shifted / peak if peak > 0 else np.zeros_like(shifted)
    depth_map = (relative * DEPTH_TO_PIXEL).clip(0, 255).astype(np.uint8)

    x = cv2.Sobel(depth, cv2.CV_32F, 1, 0, ksize=SOBEL_KERNEL_SIZE)
    y = cv2.Sobel(depth, cv2.CV_32F, 0, 1, ksize=SOBEL_KERNEL_SIZE)
    z = np.ones_like(x) * z_component
    background = relative < background_threshold
    x[background] = 0
    y[background] = 0
    normal = np.stack([x, y, z], axis=2)
    normal /= np.sum(normal ** 2.0, axis=2, keepdims=True) ** 0.5
    normal_map = (normal * NORMAL_TO_PIXEL_SCALE + NORMAL_TO_PIXEL_SCALE).clip(0, 255).astype(np.uint8)
    return depth_map, np.ascontiguousarray(normal_map[:, :, ::-1])


def _check_options(background_threshold: float, z_component: float) -> None:
    if not 0.0 <= background_threshold <= 1.0:
        raise ValueError(
            f"background_threshold is a share of the depth range and must lie in 0..1, got "
            f"{background_threshold}; 0.4 is ControlNet 1.0's default")
    if not z_component > 0:
        raise ValueError(
            f"z_component must be > 0 (it sets how flat a slope looks), got {z_component}; "
            f"{DEFAULT_Z_COMPONENT:.4f} (2*pi) is ControlNet 1.0's")


def midas_depth_and_normal(
    image: np.ndarray,
    network: MiDaSNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    background_threshold: float = DEFAULT_NORMAL_BACKGROUND_THRESHOLD,
    z_component: float = DEFAULT_Z_COMPONENT,
) -> tuple[np.ndarray, np.ndarray]:
    """(depth map, normal map), both uint8 HxWx3 at the image's size, from one network run.

    The depth map is gray, near = white. The normal map is in the channel order the ControlNet
    1.0 normal model consumes (R = z, G = y, B = x; see the module docstring). `resolution`
    is the detect resolution (short side, rounded to multiples of 64); None runs the network
    on the image as it is.
    """
    _check_options(background_threshold, z_component)
    rgb = to_rgb_uint8(image)
    height, width = rgb.shape[:2]
    detect_rgb = rgb if resolution is None else resize_for_detection(rgb, resolution)
    depth_map, normal_map = depth_to_maps(
        midas_inverse_depth(detect_rgb, network), background_threshold, z_component)
    maps = []
    for detected in (hwc3(depth_map), normal_map):
        if detected.shape[:2] != (height, width):  # v1.1 brings soft maps back bilinearly
            detected = cv2.resize(detected, (width, height), interpolation=cv2.INTER_LINEAR)
        maps.append(detected)
    return maps[0], maps[1]


def midas_depth(
    image: np.ndarray, network: MiDaSNetwork, resolution: int | None = DEFAULT_DETECT_RESOLUTION
) -> np.ndarray:
    """MiDaS depth map (uint8 HxWx3 gray, near = white) at the image's size."""
    return midas_depth_and_normal(image, network, resolution)[0]


def midas_normal(
    image: np.ndarray,
    network: MiDaSNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    background_threshold: float = DEFAULT_NORMAL_BACKGROUND_THRESHOLD,
    z_component: float = DEFAULT_Z_COMPONENT,
) -> np.ndarray:
    """MiDaS normal map (ControlNet 1.0 "normal"; uint8 HxWx3, R = z, G = y, B = x, ready for
    control_sd15_normal) at the image's size. Pixels whose normalised depth is below
    `background_threshold` are drawn facing the camera."""
    return midas_depth_and_normal(image, network, resolution, background_threshold, z_component)[1]
