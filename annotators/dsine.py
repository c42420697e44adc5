"""DSINE surface normals (Bae & Davison, "Rethinking Inductive Biases for Surface Normal
Estimation", CVPR 2024), comfyui_controlnet_aux's "DSINE Normal Map", for normal ControlNets.

DSINE reads the camera as well as the image. Every pixel's viewing ray, from the field of view,
is fed to the decoder (as the ray's (x/z, y/z), "uv") at 1/32, 1/16 and 1/8 of the input, and a
first normal is predicted at 1/8. That normal is then refined a few times, each time from its
5x5 neighbours. A ConvGRU updates a hidden state. From it, each neighbour gets an image
direction (du, dv), an angle and a weight. The neighbour's normal is rotated by that angle about
the 3-D direction its tangent plane takes along (du, dv) (`tangent_axes`). The rotated normals
are averaged with the weights. The last 1/8 prediction is upsampled x8, each fine pixel a
learned convex mix of its coarse 3x3 neighbours (as RAFT does for optical flow). After every
step a "ray ReLU" tilts any normal whose cosine with its viewing ray is below RAY_RELU_EPS
(a surface the camera could not see) back to about that cosine.

Pipeline: at the detect resolution, the image is zero-padded (black, before the ImageNet
normalisation), centred, to a multiple of 32. The camera comes from `fov` over the longer side
of the unpadded image, with its principal point at that image's centre. The map is (n + 1) / 2 *
255, truncated: x, y, z to R, G, B as NormalBAE (same author, same axes; comfyui_controlnet_aux
maps it the same way). This is the original repository's `hubconf.py` Predictor.infer_pil
(baegwangbin/DSINE) at the detect size.

comfyui_controlnet_aux's DsineDetector differs in two ways. It takes the intrinsics from the
image's size *before* resizing it to the detect resolution, while the network sees the resized
image. Unless the photo is already at its detect size, the rays it feeds are then those of
another camera: the principal point is off-centre, and the field of view is narrowed or widened
by the resize factor. It also pads to 64 at the bottom and right. The two agree when the image
is already at a detect size (a multiple of 64 on both sides, so no padding either).

Keys as in `dsine.pt` (the original repository's DSINE, loaded strictly by its hubconf):
`encoder.original_model.*` (geffnet's tf_efficientnet_b5_ap, annotators/normalbae_efficientnet),
`decoder.*`, `gru.*`, `prob_head.*`, `xy_head.*`, `angle_head.*`, `up_prob_head.*`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import image_batch, load_network, to_numpy
from .normalbae import imagenet_normalized, normal_to_uint8
from .normalbae_efficientnet import HEAD_CHANNELS, STAGE_CHANNELS, EfficientNetEncoder

# https://huggingface.co/hr16/Diffusion-Edge/blob/main/dsine.pt, where comfyui_controlnet_aux
# fetches it (the same file as camenduru/DSINE, which the original hubconf.py fetches).
DSINE_WEIGHTS = "dsine.pt"
DSINE_REPO = "hr16/Diffusion-Edge"
WEIGHTS_REPOS = {DSINE_WEIGHTS: DSINE_REPO}  # where the nodes look for and name the file

# comfyui_controlnet_aux's node defaults (hubconf.py uses 60 degrees and the model's 5 steps).
DEFAULT_FOV = 60.0
DEFAULT_ITERATIONS = 5
MAX_ITERATIONS = 20  # comfyui_controlnet_aux's maximum
MAX_FOV = 179.0      # a field of view must stay below 180 degrees (tan(fov / 2) is finite)

ENCODER_STRIDE = 32      # the input is padded to this: every scale down to 1/32 is whole
COARSE_STRIDE = 8        # DSINE predicts at 1/8 and upsamples x8 (downsample_ratio)
NEIGHBOURHOOD = 5        # each refinement reads a 5x5 neighbourhood of normals (ps)
UPSAMPLE_NEIGHBOURHOOD = 3  # each fine pixel mixes its coarse pixel's 3x3 neighbours
RAY_RELU_EPS = 1e-2      # minimum cosine between a normal and its viewing ray (RayReLU eps)
# Where the tangent-plane depth step's denominator is this close to 0 it is set to this, with
# its sign (a zero stays zero, and the axis it gives is discarded as not finite).
DENOMINATOR_EPS = 1e-8
WEIGHT_STANDARDIZATION_EPS = 1e-5  # added to the weight's standard deviation (Conv2d_WS)
GROUP_NORM_GROUPS = 8

UV_CHANNELS = 2                  # the ray encoding (x/z, y/z) joined to every decoder input
DECODER_CHANNELS = HEAD_CHANNELS  # NF = 2048, halved by each upsampling step
DECODER_HEAD_HIDDEN = 128
FEATURE_CHANNELS = 64            # the context features the ConvGRU reads
HIDDEN_CHANNELS = 64             # the ConvGRU's state
REFINE_HEAD_HIDDEN = 64
# Which encoder stages the decoder reads as skips: 1/16 (176 channels), 1/8 (64 channels).
SKIP_STAGES = (4, 2)


class Camera(NamedTuple):
    """Pinhole intrinsics in pixels of the network input, in coordinates where pixel i spans
    i..i+1 (its centre is i + 0.5). One focal length for both axes."""
    focal: float
    centre_x: float
    centre_y: float


def camera_from_fov(height: int, width: int, fov_degrees: float, left: int = 0, top: int = 0) -> Camera:
    """The camera of a height x width image with `fov_degrees` across its longer side, placed
    `left` and `top` pixels into the padded input (utils.get_intrins_from_fov, plus the +0.5
    the model adds: its centre pixel coordinates are i + 0.5)."""
    if not 0.0 < fov_degrees <= MAX_FOV:
        raise ValueError(f"fov must be between 0 and {MAX_FOV:g} degrees, got {fov_degrees:g}")
    focal = max(height, width) / 2.0 / math.tan(math.radians(fov_degrees) / 2.0)
    return Camera(focal, left + width / 2.0, top + height / 2.0)


def pixel_centres(height: int, width: int, device: torch.device | str = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """1x2xHxW: the x and y of every pixel centre (i + 0.5)."""
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                            torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack([xs, ys])[None]


def ray_uv(camera: Camera, height: int, width: int, scale: float) -> torch.Tensor:
    """1x2xhxw float64 on the CPU (small; every device can take a copy): the viewing ray of each
    pixel of a grid `scale` times the input's, as (x/z, y/z)."""
    centres = pixel_centres(height, width, dtype=torch.float64)
    principal = torch.tensor([camera.centre_x, camera.centre_y], dtype=torch.float64).view(1, 2, 1, 1)
    return (centres - principal * scale) / (camera.focal * scale)


def unit_rays(uv: torch.Tensor) -> torch.Tensor:
    """Bx2xHxW ray encoding -> Bx3xHxW unit viewing rays (x/z, y/z, 1) / length."""
    return F.normalize(torch.cat([uv, torch.ones_like(uv[:, :1])], dim=1), dim=1)


def ray_relu(normals: torch.Tensor, rays: torch.Tensor) -> torch.Tensor:
    """Unit normals whose cosine with the viewing ray (along dim 1) is below RAY_RELU_EPS, moved
    along the ray until their component along it is RAY_RELU_EPS, then renormalised (which
    leaves the cosine a little above); the others unchanged."""
    cosine = torch.cosine_similarity(normals, rays, dim=1).unsqueeze(1)
    return F.normalize(normals + rays * (cosine.clamp_min(RAY_RELU_EPS) - cosine), dim=1)


def neighbours(x: torch.Tensor, size: int) -> torch.Tensor:
    """BxCxHxW -> BxCx(size*size)xHxW: each pixel's size x size neighbourhood, row by row, the
    border repeated outwards."""
    batch, channels, height, width = x.shape
    pad = size // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    return F.unfold(padded, size).view(batch, channels, size * size, height, width)


def tangent_axes(normals: torch.Tensor, pixels: torch.Tensor, directions: torch.Tensor,
                 camera: Camera, scale: float) -> torch.Tensor:
    """Unit 3-D axes (Bx3xKxHxW) along which each neighbour's tangent plane runs in the image
    direction (du, dv) predicted for it. Take the plane through the neighbour's surface point
    (at depth 1, pixel `pixels`) with normal `normals`, and step (du, dv) in the image. The 3-D
    step (du/f + dz (u + du - cx)/f, dv/f + dz (v + dv - cy)/f, dz) stays on the plane for one
    depth change dz. Axes that come out infinite or NaN are set to zero (no rotation)."""
    focal, centre_x, centre_y = camera.focal * scale, camera.centre_x * scale, camera.centre_y * scale
    du, dv = directions[:, 0], directions[:, 1]
    nx, ny, nz = normals[:, 0], normals[:, 1], normals[:, 2]
    step_u, step_v = du / focal, dv / focal
    ray_u = (pixels[:, 0] + du - centre_x) / focal
    ray_v = (pixels[:, 1] + dv - centre_y) / focal
    denominator = ray_u * nx + ray_v * ny + nz
    denominator = torch.where(denominator.abs() < DENOMINATOR_EPS,
                              DENOMINATOR_EPS * denominator.sign(), denominator)
    depth_step = -(step_u * nx + step_v * ny) / denominator
    axes = F.normalize(torch.stack([step_u + depth_step * ray_u, step_v + depth_step * ray_v,
                                    depth_step], dim=1), dim=1)
    return torch.where(torch.isfinite(axes).all(dim=1, keepdim=True), axes, torch.zeros_like(axes))


def rotate(vectors: torch.Tensor, rotation_vectors: torch.Tensor) -> torch.Tensor:
    """Rotate 3-vectors (along dim 1) about rotation_vectors' directions by their lengths, in
    radians (Rodrigues' formula); a zero rotation vector leaves the vector as it is."""
    angle = rotation_vectors.norm(dim=1, keepdim=True)
    axis = rotation_vectors / angle.clamp_min(torch.finfo(angle.dtype).tiny)
    cos, sin = angle.cos(), angle.sin()
    along = (axis * vectors).sum(dim=1, keepdim=True)
    return vectors * cos + torch.cross(axis, vectors, dim=1) * sin + axis * along * (1.0 - cos)


def convex_upsample(coarse: torch.Tensor, mask_logits: torch.Tensor, factor: int) -> torch.Tensor:
    """BxCxHxW -> BxCx(factor H)x(factor W): every fine pixel a softmax-weighted mix of its coarse
    pixel's 3x3 neighbours; `mask_logits` (Bx(9 factor^2)xHxW) holds the nine logits of each."""
    batch, channels, height, width = coarse.shape
    area = UPSAMPLE_NEIGHBOURHOOD * UPSAMPLE_NEIGHBOURHOOD
    weights = mask_logits.view(batch, 1, area, factor, factor, height, width).softmax(dim=2)
    around = neighbours(coarse, UPSAMPLE_NEIGHBOURHOOD).view(batch, channels, area, 1, 1, height, width)
    fine = (weights * around).sum(dim=2)                     # B, C, factor, factor, H, W
    return fine.permute(0, 1, 4, 2, 5, 3).reshape(batch, channels, factor * height, factor * width)


class WeightStandardizedConv2d(nn.Conv2d):
    """Conv2d whose kernels are standardised at each call: per output channel, minus their
    mean, over their (unbiased) standard deviation + WEIGHT_STANDARDIZATION_EPS."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        std = weight.flatten(1).std(dim=1).view(-1, 1, 1, 1) + WEIGHT_STANDARDIZATION_EPS
        return F.conv2d(x, weight / std, self.bias, self.stride, self.padding)


class UpSampleGN(nn.Module):
    """Bilinear upsampling (align_corners=False) to the skip's size, concatenation with the
    skip, then two (weight-standardised 3x3 conv, GroupNorm 8, LeakyReLU 0.01)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self._net = nn.Sequential(
            WeightStandardizedConv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(GROUP_NORM_GROUPS, out_channels), nn.LeakyReLU(),
            WeightStandardizedConv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(GROUP_NORM_GROUPS, out_channels), nn.LeakyReLU())

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self._net(torch.cat([up, skip], dim=1))


def prediction_head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    """3x3 conv, ReLU, 1x1 conv, ReLU, 1x1 conv (get_prediction_head)."""
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out_channels, 1))


class ConvGRU(nn.Module):
    """A GRU cell whose gates are 5x5 convolutions over [state, input]."""

    def __init__(self, hidden: int, inputs: int, kernel_size: int):
        super().__init__()
        pad = kernel_size // 2
        self.convz = nn.Conv2d(hidden + inputs, hidden, kernel_size, padding=pad)
        self.convr = nn.Conv2d(hidden + inputs, hidden, kernel_size, padding=pad)
        self.convq = nn.Conv2d(hidden + inputs, hidden, kernel_size, padding=pad)

    def forward(self, state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        joined = torch.cat([state, x], dim=1)
        update = torch.sigmoid(self.convz(joined))
        reset = torch.sigmoid(self.convr(joined))
        candidate = torch.tanh(self.convq(torch.cat([reset * state, x], dim=1)))
        return (1.0 - update) * state + update * candidate


class DsineDecoder(nn.Module):
    """Encoder features and ray encodings -> (unit normals, context features, GRU state), all at
    1/8 of the input."""

    def __init__(self):
        super().__init__()
        width = DECODER_CHANNELS
        self.conv2 = nn.Conv2d(width + UV_CHANNELS, width, 1)
        self.up1 = UpSampleGN(width + STAGE_CHANNELS[SKIP_STAGES[0]] + UV_CHANNELS, width // 2)
        self.up2 = UpSampleGN(width // 2 + STAGE_CHANNELS[SKIP_STAGES[1]] + UV_CHANNELS, width // 4)
        head_in = width // 4 + UV_CHANNELS
        self.normal_head = prediction_head(head_in, DECODER_HEAD_HIDDEN, 3)
        self.feature_head = prediction_head(head_in, DECODER_HEAD_HIDDEN, FEATURE_CHANNELS)
        self.hidden_head = prediction_head(head_in, DECODER_HEAD_HIDDEN, HIDDEN_CHANNELS)

    def forward(self, stage_outputs: list[torch.Tensor], head: torch.Tensor,
                uv_32: torch.Tensor, uv_16: torch.Tensor, uv_8: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv2(torch.cat([head, uv_32], dim=1))
        x = self.up1(x, torch.cat([stage_outputs[SKIP_STAGES[0]], uv_16], dim=1))
        x = self.up2(x, torch.cat([stage_outputs[SKIP_STAGES[1]], uv_8], dim=1))
        x = torch.cat([x, uv_8], dim=1)
        return (F.normalize(self.normal_head(x), dim=1), self.feature_head(x), self.hidden_head(x))


class DsineNetwork(nn.Module):
    """Input Bx3xHxW ImageNet-normalised RGB, H and W multiples of 32, and its Camera; output
    Bx3xHxW unit normals after `iterations` refinements."""

    def __init__(self):
        super().__init__()
        self.encoder = EfficientNetEncoder()
        self.decoder = DsineDecoder()
        refine_in = HIDDEN_CHANNELS + UV_CHANNELS
        self.gru = ConvGRU(HIDDEN_CHANNELS, FEATURE_CHANNELS + UV_CHANNELS, NEIGHBOURHOOD)
        area = NEIGHBOURHOOD * NEIGHBOURHOOD
        self.prob_head = prediction_head(refine_in, REFINE_HEAD_HIDDEN, area)       # weights
        self.xy_head = prediction_head(refine_in, REFINE_HEAD_HIDDEN, 2 * area)     # (du, dv)
        self.angle_head = prediction_head(refine_in, REFINE_HEAD_HIDDEN, area)      # angles
        self.up_prob_head = prediction_head(
            refine_in, REFINE_HEAD_HIDDEN, UPSAMPLE_NEIGHBOURHOOD ** 2 * COARSE_STRIDE ** 2)

    def refine(self, state: torch.Tensor, context: torch.Tensor, normals: torch.Tensor,
               uv: torch.Tensor, rays: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
        """One step at 1/8: the new GRU state and the neighbours' rotated normals, averaged."""
        state = self.gru(state, context)
        read = torch.cat([state, uv], dim=1)
        area = NEIGHBOURHOOD * NEIGHBOURHOOD
        weights = torch.sigmoid(self.prob_head(read)).unsqueeze(1)               # B, 1, K, h, w
        du, dv = self.xy_head(read).split(area, dim=1)
        directions = F.normalize(torch.stack([du, dv], dim=1), dim=1)            # B, 2, K, h, w
        angles = torch.sigmoid(self.angle_head(read)).unsqueeze(1) * math.pi     # 0..pi
        around = neighbours(normals, NEIGHBOURHOOD)                              # B, 3, K, h, w
        pixels = neighbours(pixel_centres(*normals.shape[-2:], normals.device, normals.dtype), NEIGHBOURHOOD)
        axes = tangent_axes(around, pixels, directions, camera, 1.0 / COARSE_STRIDE)
        rotated = ray_relu(F.normalize(rotate(around, axes * angles), dim=1), rays.unsqueeze(2))
        return state, F.normalize((weights * rotated).sum(dim=2), dim=1)

    def forward(self, image: torch.Tensor, camera: Camera, iterations: int = DEFAULT_ITERATIONS) -> torch.Tensor:
        height, width = image.shape[-2:]
        stage_outputs, head = self.encoder(image)
        uv_32, uv_16, uv_8 = (ray_uv(camera, height // stride, width // stride, 1.0 / stride)
                              .to(image.device, image.dtype).expand(image.shape[0], -1, -1, -1)
                              for stride in (ENCODER_STRIDE, ENCODER_STRIDE // 2, COARSE_STRIDE))
        rays = unit_rays(uv_8)
        normals, features, state = self.decoder(stage_outputs, head, uv_32, uv_16, uv_8)
        normals = ray_relu(normals, rays)
        context = torch.cat([features, uv_8], dim=1)
        for _ in range(iterations):
            state, normals = self.refine(state, context, normals, uv_8, rays, camera)
        # The original upsamples after every step and keeps the last: this is that last one.
        mask_logits = self.up_prob_head(torch.cat([state, uv_8], dim=1))
        return F.normalize(convex_upsample(normals, mask_logits, COARSE_STRIDE), dim=1)


def load_dsine(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> DsineNetwork:
    """DsineNetwork with `dsine.pt` from the annotators models folders, loaded strictly (its
    "model" wrapper and DataParallel `module.` prefix, if any, removed)."""
    return load_network(DsineNetwork(), DSINE_WEIGHTS, folders, device, dtype, repo=WEIGHTS_REPOS[DSINE_WEIGHTS])


def centred_padding(size: int, multiple: int) -> tuple[int, int]:
    """(before, after) padding that brings `size` to a multiple, split as evenly as it goes with
    the odd pixel after (utils.pad_input)."""
    total = -size % multiple
    return total // 2, total - total // 2


def dsine_normals(rgb: np.ndarray, network: DsineNetwork, fov: float = DEFAULT_FOV,
                  iterations: int = DEFAULT_ITERATIONS) -> np.ndarray:
    """HxWx3 float32 unit normals of a uint8 RGB image, at its own size (no resizing)."""
    if iterations < 0:
        raise ValueError(f"iterations must be 0 or more, got {iterations}")
    height, width = rgb.shape[:2]
    top, bottom = centred_padding(height, ENCODER_STRIDE)
    left, right = centred_padding(width, ENCODER_STRIDE)
    camera = camera_from_fov(height, width, fov, left, top)
    # The original pads the 0..1 image with zeros, then normalises: the border is black.
    black = imagenet_normalized(np.zeros((1, 1, 3), np.uint8))
    padded = np.repeat(np.repeat(black, top + height + bottom, axis=0), left + width + right, axis=1)
    padded[top:top + height, left:left + width] = imagenet_normalized(rgb)
    with torch.no_grad():
        normals = network(image_batch(padded, network), camera, iterations)
    return to_numpy(normals[0]).transpose(1, 2, 0)[top:top + height, left:left + width]


def dsine(
    image: np.ndarray,
    network: DsineNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
    fov: float = DEFAULT_FOV,
    iterations: int = DEFAULT_ITERATIONS,
) -> np.ndarray:
    """DSINE normal map (uint8 HxWx3, R G B = normal x y z mapped from -1..1 to 0..255) at the
    image's size; `fov` is the camera's field of view across the longer side, in degrees."""
    return run_at_resolution(
        image, resolution, lambda rgb: normal_to_uint8(dsine_normals(rgb, network, fov, iterations)))
