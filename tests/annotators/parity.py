"""Comparing our annotators' maps with the oracle detectors' (controlnet-aux) when our network
runs some layers in another order of summation than the oracle's (channels-last kernels, group
norm for instance norm, tap sums: annotators/networks_common.py), equal within the raw tolerance
but not bit for bit.

Such a pair is checked in two parts: our pre- and post-processing around the oracle's own
network must give the oracle detector's map exactly, and the map from our network may differ
from it only where float rounding moves a truncated level by one.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn


class ChannelsFirst(nn.Module):
    """The oracle's network fed channels-first input, the layout its own detector gives it,
    so that its outputs are bit-equal to the detector's whatever layout our pipeline passes;
    `pick` takes from its outputs the one our pipeline expects."""

    def __init__(self, network: nn.Module,
                 pick: Callable[[Any], torch.Tensor] = lambda outputs: outputs):
        super().__init__()
        self.network = network
        self.pick = pick

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pick(self.network(x.contiguous()))


def max_moved_level_fraction(raw_tolerance: float) -> float:
    """A map level (value x 255, truncated) moves by one where the value lies within
    raw_tolerance x 255 of a level boundary: for evenly spread fractional parts, at most twice
    that share of the pixels (either side of the boundary)."""
    return 2 * raw_tolerance * 255


def assert_levels_within_rounding(got: np.ndarray, expected: np.ndarray,
                                  raw_tolerance: float) -> None:
    assert got.dtype == expected.dtype == np.uint8 and got.shape == expected.shape
    moved = got.astype(np.int16) - expected
    assert int(np.abs(moved).max()) <= 1
    assert float(np.mean(moved != 0)) <= max_moved_level_fraction(raw_tolerance)
