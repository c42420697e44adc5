"""What the learned annotators (HED, PiDiNet, line art, M-LSD) share: loading a network's
published weights from the models folders, feeding it an image, and v1.1's soft-edge
post-processing (`safe` quantisation and the scribble conversion).
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .weights import PUBLISHED_REPO, find_weights, load_state_dict, strip_prefix

NetworkT = TypeVar("NetworkT", bound=nn.Module)

# Checkpoints saved from torch.nn.DataParallel prefix every key with this.
DATA_PARALLEL_PREFIX = "module."

# v1.1 annotator/util.py safe_step(x, step=2): quantise a probability to {0, 0.5, 1} (x3, floor,
# /2; 1.5 clips to 1 later) so the model does not see the soft-edge detector's fine gradations.
# comfyui_controlnet_aux's TEED takes the step count as an input (safe_steps, 0 = off).
SAFE_STEPS = 2

# v1.1 gradio_scribble2image (Scribble_HED / Scribble_PIDI); controlnet-aux `scribble=True`:
#   nms(map, 127, 3.0) -> GaussianBlur(sigma 3) -> 255 where > 4, else 0.
SCRIBBLE_NMS_SIGMA = 3.0
SCRIBBLE_NMS_THRESHOLD = 127
SCRIBBLE_BLUR_SIGMA = 3.0
SCRIBBLE_STROKE_THRESHOLD = 4
# The four 3-pixel lines (horizontal, vertical, two diagonals) of v1.1 `nms`: a pixel survives
# when it is the maximum along at least one of them (a ridge across that direction).
_RIDGE_DIRECTIONS = tuple(np.array(line, dtype=np.uint8) for line in (
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]],
    [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]],
    [[0, 0, 1], [0, 1, 0], [1, 0, 0]],
))


def load_network(
    network: NetworkT,
    file_name: str,
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    repo: str = PUBLISHED_REPO,
) -> NetworkT:
    """Fill `network` with the weights in `file_name` (found in `folders`, or as ckpts/<repo>/<file>
    below one), strictly: every key must match, so a wrong or truncated file fails here instead of
    drawing garbage later. `repo` is where the file is published (weights.find_weights)."""
    return _filled(network, read_weights(file_name, folders, repo), device, dtype)


def load_network_from_weights(
    build: Callable[[dict[str, torch.Tensor]], NetworkT],
    file_name: str,
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    repo: str = PUBLISHED_REPO,
) -> NetworkT:
    """`build(state_dict)` filled with the weights in `file_name`, strictly, for networks whose
    widths are read from the weights' shapes (or are fixed and large): built on the meta device and
    given empty storage, so no time goes into a random initialisation (seconds for 100 M+
    parameters) that the file overwrites; the strict load fills every parameter or fails."""
    return network_from_weights(build, read_weights(file_name, folders, repo), device, dtype)


def network_from_weights(
    build: Callable[[dict[str, torch.Tensor]], NetworkT],
    state_dict: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> NetworkT:
    """`build(state_dict)` built on the meta device (no random initialisation) and filled with
    `state_dict`, strictly: load_network_from_weights for weights already read (and trimmed)."""
    with torch.device("meta"):
        network = build(state_dict)
    return _filled(network.to_empty(device="cpu"), state_dict, device, dtype)


def read_weights(file_name: str, folders: Sequence[str], repo: str = PUBLISHED_REPO) -> dict[str, torch.Tensor]:
    """The weights in `file_name` (found as load_network finds it), DataParallel's prefix removed."""
    return read_weights_at(find_weights(file_name, folders, repo))


def read_weights_at(path: str) -> dict[str, torch.Tensor]:
    """The weights in the file at `path` (one find_weights found), DataParallel's prefix removed."""
    return strip_prefix(load_state_dict(path), DATA_PARALLEL_PREFIX)


def _filled(network: NetworkT, state_dict: dict[str, torch.Tensor], device: torch.device | str,
            dtype: torch.dtype) -> NetworkT:
    network.load_state_dict(state_dict, strict=True)
    return network.to(device=device, dtype=dtype).eval()


class TokenMlp(nn.Module):
    """A transformer block's feed-forward net on BxNxC (or BxHxWxC) tokens: Linear -> exact (erf)
    GELU -> Linear, named fc1 / fc2 as the published checkpoints (UniFormer, Swin) name it."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class InstanceNorm2d(nn.Module):
    """`nn.InstanceNorm2d(affine=False)` (no weights, so the same state-dict keys), computed as a
    group norm with one channel per group: the same mean and variance per channel and image,
    equal within float rounding. On the CPU the group-norm kernel keeps a channels-last tensor
    channels-last and runs about twice as fast; instance norm copies it to channels-first."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels = channels
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.channels, eps=self.eps)


class SingleChannelConv2d(nn.Conv2d):
    """A k x k convolution to one output channel (stride 1, no padding), as line-art networks
    end. oneDNN runs such a convolution at a small fraction of its usual speed on the CPU (146 ms
    for 64 -> 1 channels, 7x7, at 512x512 on 2 cores), so there it is computed as one 1x1
    convolution to k*k channels (each kernel tap's sum over the input channels) plus k*k shifted
    sums: the same products, added in another order (about 40 ms). Other devices use the
    ordinary convolution."""

    def __init__(self, in_channels: int, kernel_size: int):
        super().__init__(in_channels, 1, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        kernel_height, kernel_width = self.kernel_size
        tap_kernels = self.weight.permute(2, 3, 0, 1).reshape(
            kernel_height * kernel_width, self.in_channels, 1, 1)
        taps = F.conv2d(x, tap_kernels)  # channel dy * kernel_width + dx: tap (dy, dx)
        out_height = x.shape[-2] - kernel_height + 1
        out_width = x.shape[-1] - kernel_width + 1
        out = self.bias.view(1, 1, 1, 1).expand(x.shape[0], 1, out_height, out_width).clone()
        for dy in range(kernel_height):
            for dx in range(kernel_width):
                tap = dy * kernel_width + dx
                out += taps[:, tap:tap + 1, dy:dy + out_height, dx:dx + out_width]
        return out


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """F.max_pool2d(x, kernel_size=2, stride=2), exactly (an odd last row or column is dropped,
    as floor mode does), as the maximum of the four strided views: three times as fast on the
    CPU, where the pooling kernel also computes the argmax indices nobody reads."""
    height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :height, :width]
    return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 0::2, 1::2]),
                         torch.maximum(x[..., 1::2, 0::2], x[..., 1::2, 1::2]))


def image_batch(image_hwc: np.ndarray, network: nn.Module, channels_last: bool = False
                ) -> torch.Tensor:
    """HxWxC float array -> 1xCxHxW tensor on the network's device and dtype.

    `channels_last=True` gives the view strides PyTorch recognises as channels-last memory
    (batch stride H*W*C), so the convolutions run in that layout, faster on the CPU: M-LSD (the
    layout controlnet-aux feeds it), line art and anime line art (with the two layers above),
    MiDaS (with channels-last kernels). The sums then run in another order, so a truncated map
    level can move by one against controlnet-aux's (tests/annotators/parity.py). HED and
    PiDiNet stay channels-first: their safe and scribble maps would turn such a move into a
    jump. The plain view's batch stride (C) is not recognised, and the first convolution copies
    it to the usual channels-first layout.
    """
    parameter = next(network.parameters())
    array = np.ascontiguousarray(image_hwc, dtype=np.float32)
    if channels_last:
        tensor = torch.from_numpy(array.reshape((1,) + array.shape)).permute(0, 3, 1, 2)
    else:
        tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    return tensor.to(device=parameter.device, dtype=parameter.dtype)


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """Network output -> float32 numpy (half-precision networks included)."""
    return tensor.detach().float().cpu().numpy()


def side_output_probability(rgb: np.ndarray, network: nn.Module, multiple: int = 1, min_side: int = 1) -> np.ndarray:
    """HxW float64 edge probability of a uint8 RGB image, at its own size, from a HED-style
    network (HED, TEED) that takes RGB in 0..255 and returns side logits (1x1xhxw each, at the
    input's size or a fraction of it). The image is padded by `pad_to_multiple(multiple,
    min_side)` for the network; v1.1 brings each logit to the padded size with OpenCV's bilinear
    resize (a copy where it is already there), averages them in float32 and squashes the mean
    with a float64 sigmoid; the padding is cropped off."""
    height, width = rgb.shape[:2]
    padded = pad_to_multiple(rgb, multiple, min_side=min_side)
    with torch.no_grad():
        side_logits = network(image_batch(padded.astype(np.float32), network))
    padded_height, padded_width = padded.shape[:2]
    full_size = [cv2.resize(to_numpy(logit)[0, 0], (padded_width, padded_height),
                            interpolation=cv2.INTER_LINEAR)[:height, :width]
                 for logit in side_logits]
    fused = np.mean(np.stack(full_size, axis=2), axis=2).astype(np.float64)
    return 1.0 / (1.0 + np.exp(-fused))


def probability_to_uint8(probability: np.ndarray, safe_steps: int = 0) -> np.ndarray:
    """A 0..1 edge probability -> uint8 map, as v1.1: optionally quantised to `safe_steps` + 1
    levels (v1.1's `safe` variants: SAFE_STEPS; 0: not quantised), then x255, clipped and
    truncated (astype, not rounded: the maps the models were trained on)."""
    if safe_steps:
        # floor == v1.1's int32 cast here: the values are never negative.
        probability = np.floor(probability.astype(np.float32) * (safe_steps + 1)) / safe_steps
    return (probability * 255.0).clip(0, 255).astype(np.uint8)


def soft_edges_to_scribble(edges: np.ndarray) -> np.ndarray:
    """uint8 soft-edge map -> binary scribble (v1.1 nms -> blur -> threshold): thin the edges to
    their ridges, keep the strong ones, then thicken them into hand-drawn-looking strokes."""
    smooth = cv2.GaussianBlur(edges.astype(np.float32), (0, 0), SCRIBBLE_NMS_SIGMA)
    ridges = np.zeros_like(smooth)
    for direction in _RIDGE_DIRECTIONS:
        np.putmask(ridges, cv2.dilate(smooth, kernel=direction) == smooth, smooth)
    thin = np.where(ridges > SCRIBBLE_NMS_THRESHOLD, 255, 0).astype(np.uint8)
    thick = cv2.GaussianBlur(thin, (0, 0), SCRIBBLE_BLUR_SIGMA)
    return np.where(thick > SCRIBBLE_STROKE_THRESHOLD, 255, 0).astype(np.uint8)


def pad_to_multiple(image: np.ndarray, multiple: int, min_side: int = 1) -> np.ndarray:
    """Repeat the last row and column until both sides are multiples of `multiple` and at least
    `min_side`, so a network that halves the resolution a few times gives back whole pixels and
    its innermost layers get enough of them. A no-op at v1.1's detect sizes (multiples of 64);
    callers crop the result back with [:height, :width]."""
    height, width = image.shape[:2]
    pad_bottom = max(min_side - height, 0)
    pad_right = max(min_side - width, 0)
    pad_bottom += -(height + pad_bottom) % multiple
    pad_right += -(width + pad_right) % multiple
    if pad_bottom == 0 and pad_right == 0:
        return image
    extra = ((0, pad_bottom), (0, pad_right)) + ((0, 0),) * (image.ndim - 2)
    return np.pad(image, extra, mode="edge")
