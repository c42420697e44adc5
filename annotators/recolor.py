"""Recolor conditions: the image's brightness as a gray map (A1111 `recolor_luminance` and
`recolor_intensity`, comfyui_controlnet_aux's "Image Luminance" and "Image Intensity"), for the
recolor ControlNets (Stability's Control-LoRA `sai_xl_recolor_*lora`), which colour a gray image;
and the step A1111 runs after sampling with them, putting that brightness back into the result.

* Luminance: the L* channel of CIELAB (OpenCV's 8-bit scale, L* x 255 / 100).
* Intensity: HSV's V channel, max(R, G, B).

Both are raised to `gamma` (on 0..1) and truncated to uint8, as A1111 does. A1111 (and so every
peer) converts its RGB image with OpenCV's BGR conversion: its luminance weighs red as blue
(0.07) and blue as red (0.21). `LAB_ORDER_A1111` keeps that, so maps match the peers' and the
inputs the recolor models were used with; `LAB_ORDER_RGB` is the true L*. Intensity does not
depend on the order (a maximum).

Restoring (A1111's `recolor_*_post_processing`): the sampled image goes to 8 bits (rounded;
A1111 truncates, which darkens by half a level on average) and to LAB (or HSV), its L (or V) channel is replaced by the map's, and it comes back, so the
result has the map's brightness and the sampler's colours. A1111 converts the result in RGB
order, whatever order made the map.
"""

from __future__ import annotations

import cv2
import numpy as np

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution, to_rgb_uint8

LUMINANCE = "luminance"
INTENSITY = "intensity"
# OpenCV conversion to the colour space holding the brightness, and that channel's index.
BRIGHTNESS_SPACES = {LUMINANCE: (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB, 0),
                     INTENSITY: (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB, 2)}
LAB_ORDER_A1111 = "a1111"  # RGB read as BGR, as A1111 and the peers do
LAB_ORDER_RGB = "rgb"      # the true CIE L*
LAB_ORDERS = (LAB_ORDER_A1111, LAB_ORDER_RGB)
DEFAULT_GAMMA = 1.0
# comfyui_controlnet_aux's gamma_correction input range (A1111's slider: 0.1..2.0).
MIN_GAMMA = 0.1
MAX_GAMMA = 2.0
UINT8_MAX = 255.0


def gamma_corrected(channel: np.ndarray, gamma: float) -> np.ndarray:
    """uint8 channel ** gamma on 0..1, truncated back to uint8 (A1111's arithmetic)."""
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    return ((channel.astype(np.float32) / UINT8_MAX) ** gamma * UINT8_MAX).clip(0, UINT8_MAX).astype(np.uint8)


def brightness_space(kind: str) -> tuple[int, int, int]:
    """(conversion to the colour space, conversion back, the brightness channel) of `kind`."""
    if kind not in BRIGHTNESS_SPACES:
        raise ValueError(f"brightness must be one of {', '.join(BRIGHTNESS_SPACES)}, got {kind!r}")
    return BRIGHTNESS_SPACES[kind]


def brightness_channel(rgb: np.ndarray, kind: str, lab_order: str = LAB_ORDER_A1111) -> np.ndarray:
    """The uint8 L* (luminance) or V (intensity) channel of a uint8 RGB image."""
    to_space, _, channel = brightness_space(kind)
    if lab_order not in LAB_ORDERS:
        raise ValueError(f"lab_order must be one of {', '.join(LAB_ORDERS)}, got {lab_order!r}")
    if kind == LUMINANCE and lab_order == LAB_ORDER_A1111:
        to_space = cv2.COLOR_BGR2LAB
    return cv2.cvtColor(rgb, to_space)[:, :, channel]


def recolor_map(
    image: np.ndarray,
    kind: str = LUMINANCE,
    gamma: float = DEFAULT_GAMMA,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    lab_order: str = LAB_ORDER_A1111,
) -> np.ndarray:
    """The recolor condition (uint8 HxWx3 gray) at the image's size: its luminance or intensity,
    gamma-corrected."""
    return run_at_resolution(image, resolution, lambda rgb: gamma_corrected(
        brightness_channel(rgb, kind, lab_order), gamma))


def recolor_luminance(
    image: np.ndarray,
    gamma: float = DEFAULT_GAMMA,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    lab_order: str = LAB_ORDER_A1111,
) -> np.ndarray:
    """A1111 `recolor_luminance`: the L* map (`recolor_map` with LUMINANCE)."""
    return recolor_map(image, LUMINANCE, gamma, resolution, lab_order)


def recolor_intensity(
    image: np.ndarray,
    gamma: float = DEFAULT_GAMMA,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """A1111 `recolor_intensity`: the HSV value map (`recolor_map` with INTENSITY)."""
    return recolor_map(image, INTENSITY, gamma, resolution)


def restore_brightness(image: np.ndarray, brightness_map: np.ndarray, kind: str = LUMINANCE) -> np.ndarray:
    """`image` (HxWx3, float in 0..1 or uint8) with its L* (luminance) or V (intensity) channel replaced by
    the gray map's (same size), as float32 in 0..1 (A1111's post-processing)."""
    to_space, from_space, channel = brightness_space(kind)
    if image.shape[:2] != brightness_map.shape[:2]:
        raise ValueError(f"the brightness map is {brightness_map.shape[1]}x{brightness_map.shape[0]} but the image "
                         f"is {image.shape[1]}x{image.shape[0]}; they must be the same size")
    brightness = to_rgb_uint8(brightness_map, "brightness map")
    if not np.array_equal(brightness, brightness[:, :, :1].repeat(3, axis=2)):
        raise ValueError("the brightness map has differing colour channels: it must be the gray map Image Luminance "
                         "or Image Intensity makes, not a colour image")
    converted = cv2.cvtColor(to_rgb_uint8(image), to_space)
    converted[:, :, channel] = brightness[:, :, 0]
    return cv2.cvtColor(converted, from_space).astype(np.float32) / UINT8_MAX
