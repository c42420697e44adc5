"""Manga line extraction (ControlNet v1.1 "lineart_anime_denoise", A1111 `annotator/manga_line`).

The network (`erika.pth`, lllyasviel's MangaLineExtraction model) is a residual U-Net of
pre-activation units: each unit is two (BatchNorm -> LeakyReLU -> conv) steps added to its input,
which a 1x1 convolution projects when the channel count or the stride changes. Stages
`block0..block4` go down (24, 48, 96, 192, 384 channels; the last unit of `block1..4` has stride
2), `block5..block8` come back up (the first unit of each doubles the size with nearest
upsampling) and each adds the encoder features of its size (the published `res1..res4` are
plain sums, without weights); `block9` and the 1x1 `conv15` turn the result into one channel.

Contract (A1111 `MangaLineExtration.__call__`): **grayscale 0..255, not normalised**, as
1x1xHxW with H and W multiples of 16 (four halvings must come back to the same size for the
sums); the network draws dark lines on white, and the map is `255 - out`, clipped and truncated
to uint8: white lines on black.

There is no package to compare with (controlnet-aux 0.0.10 has no manga line), so
tests/annotators/test_manga_line.py checks instead:
  - the state-dict key names and shapes against a list derived from the published module tree
    (707 keys with BatchNorm buffers), so the published file loads strictly;
  - one residual unit against the same computation written with torch.nn.functional;
  - the whole wiring with hand-set weights, for which the network's output has a closed form
    (the image plus its upsampled subsamplings) computed in numpy;
  - the output contract: inversion and clipping, padding of sides that are not multiples of 16
    and cropping back, the map at the image's size, a non-degenerate map on a photo.
Not checked: agreement with the published weights' real drawings (no file, no reference output).
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from .image import DEFAULT_DETECT_RESOLUTION, run_at_resolution
from .networks_common import image_batch, load_network, pad_to_multiple, to_numpy

# https://huggingface.co/lllyasviel/Annotators/blob/main/erika.pth (A1111 annotator/manga_line)
MANGA_LINE_WEIGHTS = "erika.pth"

BATCH_NORM_EPS = 1e-3  # the network was ported from Keras, whose BatchNormalization default is 1e-3
LEAKY_SLOPE = 0.2
# (name, input channels, output channels, units) of the published stages, in order.
ENCODER_STAGES = (("block0", 1, 24, 2), ("block1", 24, 48, 3), ("block2", 48, 96, 5),
                  ("block3", 96, 192, 7), ("block4", 192, 384, 12))
DECODER_STAGES = (("block5", 384, 192, 7), ("block6", 192, 96, 5), ("block7", 96, 48, 3),
                  ("block8", 48, 24, 2))
HEAD_STAGE = ("block9", 24, 16, 2)
OUTPUT_CHANNELS = 1
# block1..block4 each halve the size once: sides must divide by 2**4 for the skip sums to match.
SIZE_MULTIPLE = 2 ** (len(ENCODER_STAGES) - 1)
WHITE = 255.0


class PreActivationConv(nn.Module):
    """BatchNorm -> LeakyReLU -> conv ("same" padding), then optionally nearest 2x upsampling.
    Held in `model` (an nn.Sequential) so the indices are the published key names."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 upsample: bool = False):
        super().__init__()
        layers: list[nn.Module] = [
            nn.BatchNorm2d(in_channels, eps=BATCH_NORM_EPS),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                      padding=kernel_size // 2),
        ]
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Projection(nn.Module):
    """The shortcut's 1x1 conv (with the unit's stride; upsampled when the unit upsamples)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, upsample: bool):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, 1, stride=stride)]
        if upsample:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ResidualUnit(nn.Module):
    """x -> shortcut(x) + residual(conv1(x)); the shortcut is x itself when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 upsample: bool = False):
        super().__init__()
        self.conv1 = PreActivationConv(in_channels, out_channels, 3, stride, upsample)
        self.residual = PreActivationConv(out_channels, out_channels, 3)
        # Only the encoder projects on a stride; the decoder's upsampling unit always changes
        # the channel count, so its projection follows from that alone.
        reshapes = in_channels != out_channels or stride != 1
        self.shortcut = Projection(in_channels, out_channels, stride, upsample) if reshapes else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.residual(self.conv1(x))
        return (x if self.shortcut is None else self.shortcut(x)) + branch


class Stage(nn.Module):
    """`units` residual units in `model`: a down stage strides in its last unit (unless it
    keeps the size), an up stage upsamples in its first."""

    def __init__(self, in_channels: int, out_channels: int, units: int, direction: str):
        super().__init__()
        layers = []
        for index in range(units):
            unit_in = in_channels if index == 0 else out_channels
            stride = 2 if direction == "down" and index == units - 1 else 1
            upsample = direction == "up" and index == 0
            layers.append(ResidualUnit(unit_in, out_channels, stride, upsample))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MangaLineNetwork(nn.Module):
    """Input 1x1xHxW gray in 0..255 (H, W multiples of 16); output 1x1xHxW, lines dark."""

    def __init__(self):
        super().__init__()
        for index, (name, in_channels, out_channels, units) in enumerate(ENCODER_STAGES):
            # block0 works at full size; block1..4 each halve it.
            setattr(self, name, Stage(in_channels, out_channels, units,
                                      "down" if index > 0 else "same"))
        for name, in_channels, out_channels, units in DECODER_STAGES:
            setattr(self, name, Stage(in_channels, out_channels, units, "up"))
        name, in_channels, out_channels, units = HEAD_STAGE
        setattr(self, name, Stage(in_channels, out_channels, units, "same"))
        self.conv15 = PreActivationConv(out_channels, OUTPUT_CHANNELS, 1)

    def forward(self, gray_255: torch.Tensor) -> torch.Tensor:
        skips = []
        x = gray_255
        for name, *_ in ENCODER_STAGES:
            x = getattr(self, name)(x)
            skips.append(x)
        skips.pop()  # the deepest features feed the decoder directly, not a sum
        for name, *_ in DECODER_STAGES:
            x = getattr(self, name)(x) + skips.pop()  # res1..res4
        return self.conv15(getattr(self, HEAD_STAGE[0])(x))


def load_manga_line(
    folders: Sequence[str], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> MangaLineNetwork:
    """MangaLineNetwork with the published `erika.pth` from the annotators models folders."""
    return load_network(MangaLineNetwork(), MANGA_LINE_WEIGHTS, folders, device, dtype)


def manga_line_gray(gray: np.ndarray, network: MangaLineNetwork) -> np.ndarray:
    """uint8 HxW line map (white lines on black) of a uint8 HxW gray image, at its own size.
    Sides that are not multiples of 16 are padded (edge rows repeated) and cropped back."""
    height, width = gray.shape
    padded = pad_to_multiple(gray, SIZE_MULTIPLE)
    with torch.no_grad():
        drawing = network(image_batch(padded[:, :, None].astype(np.float32), network))
    lines = WHITE - to_numpy(drawing)[0, 0, :height, :width]
    return lines.clip(0, 255).astype(np.uint8)  # A1111: clipped, then truncated by astype


def manga_line(
    image: np.ndarray,
    network: MangaLineNetwork,
    resolution: int | None = DEFAULT_DETECT_RESOLUTION,
) -> np.ndarray:
    """Manga line map (uint8 HxWx3, white lines on black) at the image's size."""

    def detect(rgb: np.ndarray) -> np.ndarray:
        return manga_line_gray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), network)

    return run_at_resolution(image, resolution, detect, restore_interpolation=cv2.INTER_LINEAR)
