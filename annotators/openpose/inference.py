"""Running an OpenPose network on an image and bringing its maps back to image size.

Shared by body, hand and face; the steps are those of ControlNet v1.1's
`annotator/openpose/{body,hand,face}.py` (controlnet-aux 0.0.10 is the same), so the maps, and
therefore the detected keypoints, equal the published annotator's.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

STRIDE = 8          # three 2x2 pools: one map pixel per 8 image pixels
PAD_VALUE = 128     # v1.1 padValue: mid-gray, which the normalisation below maps to 0
INPUT_SCALE = 256.0  # v1.1 input = BGR / 256 - 0.5 (the Caffe models' convention)
INPUT_SHIFT = 0.5


def resize_like_v11(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """v1.1 `smart_resize`: AREA when shrinking, LANCZOS4 when enlarging (judged on h + w).

    Arrays with other than 1 or 3 channels are resized one channel at a time, as v1.1 does
    (OpenCV's AREA and LANCZOS4 paths refuse more than 4 channels).
    """
    channels = 1 if array.ndim == 2 else array.shape[2]
    if channels not in (1, 3):
        return np.stack([resize_like_v11(array[:, :, c], height, width) for c in range(channels)], axis=2)
    growth = float(height + width) / float(array.shape[0] + array.shape[1])
    interpolation = cv2.INTER_AREA if growth < 1 else cv2.INTER_LANCZOS4
    return cv2.resize(array, (int(width), int(height)), interpolation=interpolation)


def scale_like_v11(array: np.ndarray, factor: float) -> np.ndarray:
    """v1.1 `smart_resize_k`: both sides times `factor`, truncated to whole pixels."""
    return resize_like_v11(array, int(array.shape[0] * factor), int(array.shape[1] * factor))


def pad_to_stride(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    """Pad bottom and right with PAD_VALUE to a multiple of STRIDE; returns (padded, pad_bottom,
    pad_right)."""
    height, width = image.shape[:2]
    pad_bottom, pad_right = -height % STRIDE, -width % STRIDE
    padded = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE,) * 3)
    return padded, pad_bottom, pad_right


def network_input(image_bgr: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 BGR -> float32 [1, 3, H, W] in -0.5..0.5."""
    normalised = image_bgr.astype(np.float32) / INPUT_SCALE - INPUT_SHIFT
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)[None]))


def run_network(network: nn.Module, batch: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Forward in the network's device and dtype; outputs come back as float32 on the CPU."""
    weight = next(network.parameters())
    with torch.no_grad():
        outputs = network(batch.to(device=weight.device, dtype=weight.dtype))
    if isinstance(outputs, torch.Tensor):
        return outputs.float().cpu()
    return tuple(output.float().cpu() for output in outputs)


def maps_to_image(maps: torch.Tensor, padded_shape: tuple[int, int], pad_bottom: int, pad_right: int,
                  height: int, width: int) -> np.ndarray:
    """[1, C, h, w] network maps -> HxWxC float32: enlarge by the stride, drop the padding,
    resize to (height, width)."""
    hwc = maps[0].numpy().transpose(1, 2, 0)
    enlarged = scale_like_v11(hwc, STRIDE)
    cropped = enlarged[:padded_shape[0] - pad_bottom, :padded_shape[1] - pad_right, :]
    return resize_like_v11(cropped, height, width)


def maps_at_scale(network: nn.Module, image_bgr: np.ndarray, scaled_height: int, scaled_width: int,
                  out_height: int, out_width: int) -> list[np.ndarray]:
    """Resize the image, run the network, return each output as out_height x out_width x C."""
    scaled = resize_like_v11(image_bgr, scaled_height, scaled_width)
    padded, pad_bottom, pad_right = pad_to_stride(scaled)
    outputs = run_network(network, network_input(padded))
    if isinstance(outputs, torch.Tensor):
        outputs = (outputs,)
    return [maps_to_image(output, padded.shape[:2], pad_bottom, pad_right, out_height, out_width)
            for output in outputs]
