"""Normal map from a depth map, by the MiDaS-normal convention of ControlNet 1.0.

v1.0 annotator/midas/__init__.py (huggingface controlnet-aux MidasDetector is the same):
    x = Sobel(depth, dx=1, ksize=3); y = Sobel(depth, dy=1, ksize=3); z = a   (a = 2*pi)
    x = y = 0 where (depth - min) / (max - min) < bg_th        (flat, facing the camera)
    normal = (x, y, z) / |(x, y, z)|;  map = (normal * 127.5 + 127.5) as uint8
The depth is "near is bright" (MiDaS inverse depth). `z_component` sets how steep a given
gradient looks: larger is flatter. Gradients are in the depth map's own units, here 0..255.

Channel order: v1.0 gradio_normal2image feeds the model `map[:, :, ::-1]`, and A1111's
annotator/midas returns that flipped map, so control_sd15_normal expects (z, y, x) as (R, G, B).
`bgr=True` (the default) returns that order; `bgr=False` the annotator's raw (x, y, z).

Background threshold: 0.1 is the annotator's and controlnet-aux's default; the v1.0 gradio app
and A1111 default to 0.4.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import check_array, to_float_255

DEFAULT_Z_COMPONENT = 2.0 * np.pi   # v1.0 MidasDetector a=np.pi * 2.0
DEFAULT_BACKGROUND_THRESHOLD = 0.1  # v1.0 MidasDetector bg_th=0.1
SOBEL_KERNEL_SIZE = 3               # v1.0 cv2.Sobel(..., ksize=3)
NORMAL_TO_PIXEL_SCALE = 127.5       # [-1, 1] -> [0, 255]


def normal_from_depth(
    depth: np.ndarray,
    z_component: float = DEFAULT_Z_COMPONENT,
    background_threshold: float = DEFAULT_BACKGROUND_THRESHOLD,
    bgr: bool = True,
) -> np.ndarray:
    """Normal map (uint8 HxWx3) from a depth map (near = bright) at the depth map's size.

    `depth` is HxW, HxWx1 or a gray HxWx3 (all channels equal), with the image dtype rules
    (uint8, uint16, bool, float 0..1), but kept in float so 16-bit depth keeps its precision.
    """
    depth = check_array(depth, "depth")
    if depth.ndim == 3:
        if depth.shape[2] == 3 and not (np.array_equal(depth[..., 0], depth[..., 1])
                                        and np.array_equal(depth[..., 0], depth[..., 2])):
            raise ValueError(
                "depth has 3 different channels; pass a single-channel (gray) depth map")
        if depth.shape[2] not in (1, 3):
            raise ValueError(
                f"depth must be HxW, HxWx1 or gray HxWx3, got shape {depth.shape}")
        depth = depth[:, :, 0]
    if z_component <= 0:
        raise ValueError(f"z_component must be > 0, got {z_component}")
    values = to_float_255(depth, "depth")

    x = cv2.Sobel(values, cv2.CV_32F, 1, 0, ksize=SOBEL_KERNEL_SIZE)
    y = cv2.Sobel(values, cv2.CV_32F, 0, 1, ksize=SOBEL_KERNEL_SIZE)
    z = np.full_like(x, z_component)
    depth_range = float(values.max() - values.min())
    relative = (values - values.min()) / depth_range if depth_range > 0 else np.zeros_like(values)
    background = relative < background_threshold
    x[background] = 0
    y[background] = 0

    normal = np.stack([x, y, z], axis=2)
    normal /= np.sqrt(np.sum(normal ** 2, axis=2, keepdims=True))
    image = (normal * NORMAL_TO_PIXEL_SCALE + NORMAL_TO_PIXEL_SCALE).clip(0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, ::-1]) if bgr else image
