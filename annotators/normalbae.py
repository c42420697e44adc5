"""NormalBAE surface normals (the ControlNet v1.1 "normalbae" condition,
`control_v11p_sd15_normalbae`).

The network is Bae, Budvytis & Cipolla's "Estimating and Exploiting the Aleatoric Uncertainty
in Surface Normal Estimation" (ICCV 2021), trained on ScanNet (`scannet.pt`). An EfficientNet-B5
encoder (annotators/normalbae_efficientnet.py) feeds a U-Net-like decoder that predicts, per
pixel, a unit normal (x, y, z) and a concentration kappa (how sure it is): first at 1/8 of the
input size with a 3x3 conv, then refined at 1/4, 1/2 and full size by per-pixel MLPs that read
the upsampled decoder features together with the upsampled coarser prediction. In training the
MLPs only run at uncertain pixels; at inference they run at every pixel, which is what this
module implements. Only the full-size prediction is used.

Input: RGB / 255 with ImageNet mean and std. Map: the normal's x, y, z become R, G, B via
(n + 1) / 2 * 255, truncated, with no axis flip (v1.1 annotator/normalbae and controlnet-aux
NormalBaeDetector); the v1.1 model was trained on exactly these maps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import image_batch, load_network, pad_to_multiple, to_numpy
from .normalbae_efficientnet import HEAD_CHANNELS, STAGE_CHANNELS, EfficientNetEncoder

# https://huggingface.co/lllyasviel/Annotators/blob/main/scannet.pt (v1.1 annotator/normalbae)
NORMALBAE_WEIGHTS = "scannet.pt"

# ImageNet statistics (torchvision), which the EfficientNet encoder was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The encoder halves the input five times; padding to this keeps every decoder scale whole.
ENCODER_STRIDE = 32

# Prediction channels: normal x, y, z and the concentration kappa.
PREDICTION_CHANNELS = 4
NORMAL_CHANNELS = 3
# kappa = elu(raw) + 1 + MIN_KAPPA keeps the concentration positive (decoder `norm_normalize`).
MIN_KAPPA = 0.01
# Added to the xyz length before dividing, so a zero vector does not divide by zero.
NORM_EPS = 1e-10
# Hidden width of the per-pixel refinement MLPs.
MLP_CHANNELS = 128

# Decoder feature widths after conv2 and each upsampling step (the "BN" architecture).
_DECODER_CHANNELS = (2048, 1024, 512, 256, 128)
# Which encoder stages are skip connections for up1..up4 (176, 64, 40 and 24 channels).
_SKIP_STAGES = (4, 2, 1, 0)


class UpSampleBN(nn.Module):
    """Bilinear (align_corners) upsampling to the skip's size, concatenation with the skip,
    then two (3x3 conv, BN, LeakyReLU 0.01)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self._net = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels),
            nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([up, skip], dim=1))


def refinement_mlp(in_channels: int) -> nn.Sequential:
    """The per-pixel MLP that refines a prediction: four 1x1 Conv1d with ReLU between them
    (Conv1d for the published key shapes; `pointwise_mlp` runs it)."""
    return nn.Sequential(
        nn.Conv1d(in_channels, MLP_CHANNELS, 1), nn.ReLU(inplace=True),
        nn.Conv1d(MLP_CHANNELS, MLP_CHANNELS, 1), nn.ReLU(inplace=True),
        nn.Conv1d(MLP_CHANNELS, MLP_CHANNELS, 1), nn.ReLU(inplace=True),
        nn.Conv1d(MLP_CHANNELS, PREDICTION_CHANNELS, 1))


def pointwise_mlp(mlp: nn.Sequential, pixels: torch.Tensor) -> torch.Tensor:
    """`mlp` applied to a pixels x channels matrix, its 1x1 Conv1d layers as matrix products:
    the same sums as Conv1d over channels x pixels, about twice as fast on the CPU (a full-size
    layer at 512x512: 95 ms against 222 ms on 2 cores)."""
    for layer in mlp:
        if isinstance(layer, nn.Conv1d):
            pixels = F.linear(pixels, layer.weight.squeeze(-1), layer.bias)
        else:
            pixels = layer(pixels)
    return pixels


def normalize_prediction(raw: torch.Tensor) -> torch.Tensor:
    """Raw 4-channel output -> (unit normal, kappa > 0) along dim 1."""
    x, y, z, kappa = torch.split(raw, 1, dim=1)
    length = torch.sqrt(x ** 2.0 + y ** 2.0 + z ** 2.0) + NORM_EPS
    return torch.cat([x / length, y / length, z / length, F.elu(kappa) + 1.0 + MIN_KAPPA], dim=1)


def upsample_2x(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


def refine(mlp: nn.Sequential, features: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """One refinement step: features and prediction upsampled x2, joined per pixel, the MLP run
    on every pixel. Upsampled channels-last, the joined map is already the pixels x channels
    matrix the MLP reads (a view, not a copy of the largest tensor of the network)."""
    joined = torch.cat([upsample_2x(features.contiguous(memory_format=torch.channels_last)),
                        upsample_2x(prediction.contiguous(memory_format=torch.channels_last))],
                       dim=1)
    batch, channels, height, width = joined.shape
    refined = pointwise_mlp(mlp, joined.permute(0, 2, 3, 1).reshape(-1, channels))
    return normalize_prediction(refined.view(batch, height, width, -1).permute(0, 3, 1, 2))


class NormalBaeDecoder(nn.Module):
    """Encoder features -> 1xCxHxW prediction (normal xyz, kappa) at the input size."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(HEAD_CHANNELS, _DECODER_CHANNELS[0], 1)
        for index, stage in enumerate(_SKIP_STAGES, start=1):
            setattr(self, f"up{index}", UpSampleBN(
                _DECODER_CHANNELS[index - 1] + STAGE_CHANNELS[stage], _DECODER_CHANNELS[index]))
        self.out_conv_res8 = nn.Conv2d(_DECODER_CHANNELS[2], PREDICTION_CHANNELS, 3, padding=1)
        self.out_conv_res4 = refinement_mlp(_DECODER_CHANNELS[2] + PREDICTION_CHANNELS)
        self.out_conv_res2 = refinement_mlp(_DECODER_CHANNELS[3] + PREDICTION_CHANNELS)
        self.out_conv_res1 = refinement_mlp(_DECODER_CHANNELS[4] + PREDICTION_CHANNELS)

    def forward(self, stage_outputs: list[torch.Tensor], head: torch.Tensor) -> torch.Tensor:
        features = self.conv2(head)                                  # 1/32
        scales = []
        for index, stage in enumerate(_SKIP_STAGES, start=1):        # 1/16, 1/8, 1/4, 1/2
            features = getattr(self, f"up{index}")(features, stage_outputs[stage])
            scales.append(features)
        res8, res4, res2 = scales[1], scales[2], scales[3]
        prediction = normalize_prediction(self.out_conv_res8(res8))  # 1/8
        # Each refinement doubles the size: the features it reads are those of the previous
        # scale, upsampled like the prediction (the decoder's inference path).
        for features, mlp in ((res8, self.out_conv_res4), (res4, self.out_conv_res2),
                              (res2, self.out_conv_res1)):
            prediction = refine(mlp, features, prediction)
        return prediction


class NormalBaeNetwork(nn.Module):
    """Input 1x3xHxW ImageNet-normalised RGB, H and W multiples of 32; output 1x4xHxW: the unit
    normal (x, y, z) and kappa. Keys as in `scannet.pt` (controlnet-aux NNET):
    `encoder.original_model.*` and `decoder.*`."""

    def __init__(self):
        super().__init__()
        self.encoder = EfficientNetEncoder()
        self.decoder = NormalBaeDecoder()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        stage_outputs, head = self.encoder(image)
        return self.decoder(stage_outputs, head)


def load_normalbae(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> NormalBaeNetwork:
    """NormalBaeNetwork with the published `scannet.pt` from the annotators models folders,
    loaded strictly (its DataParallel `module.` prefix, if any, removed)."""
    return load_network(NormalBaeNetwork(), NORMALBAE_WEIGHTS, folders, device, dtype)


def imagenet_normalized(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> float32 (rgb / 255 - mean) / std, per channel."""
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return (rgb.astype(np.float32) / 255.0 - mean) / std


def normal_to_uint8(normal: np.ndarray) -> np.ndarray:
    """HxWx3 normals in -1..1 -> uint8 (n + 1) / 2 * 255, clipped and truncated as v1.1."""
    return (((normal + 1.0) * 0.5).clip(0.0, 1.0) * 255.0).clip(0, 255).astype(np.uint8)


def normalbae_normals(rgb: np.ndarray, network: NormalBaeNetwork) -> np.ndarray:
    """HxWx3 float32 unit normals of a uint8 RGB image, at its own size (no resizing)."""
    height, width = rgb.shape[:2]
    # A no-op at detect sizes (multiples of 64); other sizes are padded and cropped back.
    padded = pad_to_multiple(rgb, ENCODER_STRIDE)
    with torch.no_grad():
        prediction = network(image_batch(imagenet_normalized(padded), network))
    normals = to_numpy(prediction[0, :NORMAL_CHANNELS]).transpose(1, 2, 0)
    return normals[:height, :width]


def normalbae(
    image: np.ndarray,
    network: NormalBaeNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """NormalBAE normal map (uint8 HxWx3, R G B = normal x y z mapped from -1..1 to 0..255) at
    the image's size."""
    return run_at_resolution(
        image, resolution, lambda rgb: normal_to_uint8(normalbae_normals(rgb, network)))
