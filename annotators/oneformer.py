"""OneFormer semantic segmentation (ControlNet 1.1's "seg" annotators OneFormer COCO and
OneFormer ADE20K), in plain torch on the published weights (`oneformer_network`).

The pipeline is ControlNet-v1-1-nightly's `annotator/oneformer` (api.py, oneformer/demo/defaults.py
DefaultPredictor, oneformer_model.py OneFormer.forward at inference):
  1. resize the RGB image so its short side is `short_side` (COCO: 800, detectron2's default
     MIN_SIZE_TEST; ADE20K: 640, the Swin-L config's) unless the long side would pass
     `long_side_limit` (1333; 2560), sizes rounded half up (ResizeShortestEdge), with PIL's
     bilinear resize of the uint8 image (detectron2's ResizeTransform);
  2. subtract the ImageNet mean and divide by the std (RGB, 0..255), pad right and bottom with
     zeros to multiples of 32 (ImageList.from_tensors, SIZE_DIVISIBILITY);
  3. the network, with the task "the task is semantic" as token ids;
  4. the mask logits upsampled bilinearly to the padded size, cropped to the resized image,
     upsampled to the input's size (sem_seg_postprocess, before inference since the configs turn
     panoptic inference on), then semantic inference: the einsum over the queries of the class
     probabilities (the "no object" class dropped) and the mask sigmoids; the label is the
     argmax;
  5. the labels coloured with the dataset's palette (`segmentation.PALETTES`: "coco_panoptic",
     the 133 COCO panoptic classes; "ade20k", the 150 ADE20K classes).

One difference, on purpose: v1.1 draws the labels with detectron2's Visualizer, which fills each
region as a matplotlib polygon on a white canvas with a thin off-white outline. The maps here are
the palette colours pixel by pixel, as the ADE20K/COCO annotations seg ControlNets were trained
on look, and as the UniFormer annotator draws them; the outlines are not reproduced.

Checks (tests/annotators/test_oneformer.py): the network equals transformers' OneFormerModel
(itself checked against the original code by transformers' conversion script) with identical
random weights; the resize, normalisation, padding and post-processing are checked against their
definitions above. Not checked: the published files themselves (none here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import network_from_weights, read_weights
from .oneformer_network import (BACKBONE_PREFIX, PREDICTOR_PREFIX, OneFormerNetwork, build_oneformer,
                                network_state_dict)
from .segmentation import colorize_labels
from .weights import PUBLISHED_AT, BadWeightsError

# "The task is semantic" as OneFormer's Tokenize(SimpleTokenizer(), max_seq_len=77) gives it
# (CLIP's BPE, lower-cased: <start> the task is seman tic <end>, then zeros to 77). The same ids
# come from transformers' CLIPTokenizer on ComfyUI's SD1 tokenizer files (tests/host).
SEMANTIC_TASK = "the task is semantic"
SEMANTIC_TASK_TOKEN_IDS = (49406, 518, 10549, 533, 29119, 1550, 49407)
TASK_SEQUENCE_LENGTH = 77  # INPUT.TASK_SEQ_LEN

SIZE_DIVISIBILITY = 32  # MODEL.ONE_FORMER.SIZE_DIVISIBILITY
PIXEL_MEAN = (123.675, 116.280, 103.530)  # MODEL.PIXEL_MEAN / PIXEL_STD, RGB on 0..255
PIXEL_STD = (58.395, 57.120, 57.375)


@dataclass(frozen=True)
class OneFormerModel:
    """One published OneFormer: its file, its classes and palette, its test-time resize."""

    weights: str
    classes: int
    palette: str           # segmentation.PALETTES name
    short_side: int        # INPUT.MIN_SIZE_TEST
    long_side_limit: int   # INPUT.MAX_SIZE_TEST


# https://huggingface.co/lllyasviel/Annotators/blob/main/<file>
ONEFORMER_COCO_WEIGHTS = "150_16_swin_l_oneformer_coco_100ep.pth"
ONEFORMER_ADE20K_WEIGHTS = "250_16_swin_l_oneformer_ade20k_160k.pth"
ONEFORMER_MODELS = {
    # configs/ade20k/oneformer_swin_large_IN21k_384_bs16_160k.yaml: 150 classes, 640 / 2560.
    "ade20k": OneFormerModel(ONEFORMER_ADE20K_WEIGHTS, 150, "ade20k", 640, 2560),
    # configs/coco/*: COCO panoptic, 133 classes, detectron2's default test size 800 / 1333.
    "coco": OneFormerModel(ONEFORMER_COCO_WEIGHTS, 133, "coco_panoptic", 800, 1333),
}
DEFAULT_DATASET = "ade20k"  # v1.1 gradio_seg.py's default preprocessor, Seg_OFADE20K


def oneformer_model(dataset: str) -> OneFormerModel:
    """The published OneFormer of `dataset`; a clear error for any other name."""
    if dataset not in ONEFORMER_MODELS:
        raise ValueError(f"OneFormer model must be one of {', '.join(ONEFORMER_MODELS)}, got '{dataset}'")
    return ONEFORMER_MODELS[dataset]


def semantic_task_tokens(device: torch.device | str = "cpu") -> torch.Tensor:
    """1x77 int64: the semantic task's token ids, zero-padded."""
    tokens = torch.zeros(1, TASK_SEQUENCE_LENGTH, dtype=torch.int64, device=device)
    tokens[0, :len(SEMANTIC_TASK_TOKEN_IDS)] = torch.tensor(SEMANTIC_TASK_TOKEN_IDS)
    return tokens


def load_oneformer(
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    dataset: str = DEFAULT_DATASET,
) -> OneFormerNetwork:
    """OneFormerNetwork with the published weights of `dataset` ("coco" or "ade20k") from the
    annotators models folders. The network's shape is read from the weights; every key but the
    training-only text encoder's must match."""
    model = oneformer_model(dataset)
    state_dict = network_state_dict(read_weights(model.weights, folders))
    for key in (BACKBONE_PREFIX + "patch_embed.proj.weight", PREDICTOR_PREFIX + "class_embed.weight"):
        if key not in state_dict:
            raise BadWeightsError(
                f"'{model.weights}' is not a OneFormer Swin checkpoint (it has no '{key}'); download "
                f"{model.weights} again from {PUBLISHED_AT}")
    classes = state_dict[PREDICTOR_PREFIX + "class_embed.weight"].shape[0] - 1
    if classes != model.classes:
        raise BadWeightsError(
            f"'{model.weights}' predicts {classes} classes, but OneFormer {dataset} has {model.classes}; the file "
            f"under this name is another model: download {model.weights} again from {PUBLISHED_AT}")
    return network_from_weights(build_oneformer, state_dict, device, dtype)  # 219 M parameters (Swin-L)


def resized_size(height: int, width: int, short_side: int, long_side_limit: int) -> tuple[int, int]:
    """(height, width) after detectron2's ResizeShortestEdge(short_side, long_side_limit)."""
    scale = short_side / min(height, width)
    new_height, new_width = (short_side, scale * width) if height < width else (scale * height, short_side)
    if max(new_height, new_width) > long_side_limit:
        shrink = long_side_limit / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def resize_like_detectron2(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """detectron2's ResizeTransform on a uint8 image: PIL's bilinear resize (which filters over
    the source pixels a target pixel covers when shrinking)."""
    from PIL import Image  # ComfyUI's own dependency

    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR))


def network_input(rgb: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 RGB at the network's size -> 1x3xHxW normalised, zero-padded to multiples of 32."""
    image = torch.from_numpy(np.array(rgb)).to(device=device, dtype=torch.float32).permute(2, 0, 1)
    mean = torch.tensor(PIXEL_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=device).view(3, 1, 1)
    image = (image - mean) / std
    height, width = image.shape[-2:]
    pad_bottom = -height % SIZE_DIVISIBILITY
    pad_right = -width % SIZE_DIVISIBILITY
    return F.pad(image, (0, pad_right, 0, pad_bottom))[None].to(dtype)


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """OneFormer.semantic_inference: QxK+1 class logits and QxHxW mask logits -> KxHxW scores,
    sum over the queries of P(class | query) * sigmoid(mask)."""
    class_probabilities = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("qc,qhw->chw", class_probabilities, mask_logits.sigmoid())


def segment_labels(rgb: np.ndarray, network: OneFormerNetwork, model: OneFormerModel) -> np.ndarray:
    """HxW int64 class index of a uint8 RGB image, at its size."""
    height, width = rgb.shape[:2]
    net_height, net_width = resized_size(height, width, model.short_side, model.long_side_limit)
    parameter = next(network.parameters())
    image = network_input(resize_like_detectron2(rgb, net_height, net_width), parameter.device, parameter.dtype)
    scores_dtype = torch.promote_types(parameter.dtype, torch.float32)  # as the original: at least float32
    with torch.no_grad():
        class_logits, mask_logits = network(image, semantic_task_tokens(parameter.device))
        mask_logits = F.interpolate(mask_logits.to(scores_dtype), size=image.shape[-2:], mode="bilinear",
                                    align_corners=False)
        mask_logits = mask_logits[:, :, :net_height, :net_width]
        mask_logits = F.interpolate(mask_logits, size=(height, width), mode="bilinear", align_corners=False)
        labels = semantic_scores(class_logits[0].to(scores_dtype), mask_logits[0]).argmax(0)
    return labels.cpu().numpy().astype(np.int64)


def oneformer_segmentation(
    image: np.ndarray,
    network: OneFormerNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    dataset: str = DEFAULT_DATASET,
) -> np.ndarray:
    """Segmentation map (uint8 HxWx3, the dataset's palette) at the image's size, from the
    OneFormer `network` trained on `dataset` ("coco" or "ade20k")."""
    model = oneformer_model(dataset)
    if network.config.classes != model.classes:
        raise ValueError(f"this OneFormer network predicts {network.config.classes} classes, but OneFormer "
                         f"{dataset} has {model.classes}: load it with load_oneformer(..., dataset='{dataset}')")

    def detect(rgb: np.ndarray) -> np.ndarray:
        return colorize_labels(segment_labels(rgb, network, model), model.palette)

    # Nearest: a blend of two class colours is no class.
    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_NEAREST)
