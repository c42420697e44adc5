"""Inpaint hint (v1.1 gradio_inpaint.py, controlnet-aux InpaintPreprocessor, A1111 `inpaint`).

hint = image / 255, with every masked pixel (mask > 0.5) set to -1 in all three channels: the
inpaint ControlNet reads -1 as "generate here". Because -1 has no uint8 value, this annotator
alone returns float32 in [-1, 1] (a ready hint), not a uint8 map.

xinsir's ControlNet Union ProMax ("repaint" type) was trained with the masked pixels black
instead (0; comfyui_controlnet_aux's InpaintPreprocessor `black_pixel_for_xinsir_cn`):
`masked_value=UNION_REPAINT_MASKED_VALUE`.
"""

from __future__ import annotations

import numpy as np

from .image import check_array, to_float_255, to_rgb_uint8

MASKED_VALUE = -1.0   # v1.1: detected_map[mask > 0.5] = -255.0, then / 255
UNION_REPAINT_MASKED_VALUE = 0.0  # ControlNet Union ProMax repaint: masked pixels black
MASK_THRESHOLD = 0.5  # v1.1 gradio_inpaint.py: mask_pixel > 0.5


def inpaint_hint(image: np.ndarray, mask: np.ndarray, masked_value: float = MASKED_VALUE) -> np.ndarray:
    """float32 HxWx3 hint in [-1, 1]: image/255, and `masked_value` (-1, or 0 for a ControlNet
    Union's repaint) where the mask is set.

    `mask` is HxW (or HxWx1): uint8 0..255, uint16, bool, or float 0..1; nonzero-ish means
    "inpaint here" (> 0.5 after scaling to 0..1).
    """
    rgb = to_rgb_uint8(image)
    mask = check_array(mask, "mask")
    if mask.ndim == 3:
        if mask.shape[2] != 1:
            raise ValueError(
                f"mask must be HxW or HxWx1, got shape {mask.shape}; "
                "pass one channel, e.g. mask[..., 0]")
        mask = mask[:, :, 0]
    if mask.shape != rgb.shape[:2]:
        raise ValueError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} but the image is "
            f"{rgb.shape[0]}x{rgb.shape[1]}; resize the mask to the image")
    masked = to_float_255(mask, "mask") / 255.0 > MASK_THRESHOLD
    hint = rgb.astype(np.float32) / 255.0
    hint[masked] = masked_value
    return hint
