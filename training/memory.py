"""Gradient checkpointing for original-layout models: recompute each block's activations in
the backward pass instead of keeping them (less memory, about one more forward of compute)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

BLOCK_LISTS = ("input_blocks", "output_blocks")
SINGLE_BLOCKS = ("middle_block",)


def _blocks(model: nn.Module) -> list[nn.Module]:
    blocks = [b for name in BLOCK_LISTS for b in getattr(model, name, [])]
    return blocks + [getattr(model, name) for name in SINGLE_BLOCKS if getattr(model, name, None) is not None]


@contextmanager
def gradient_checkpointing(*models: nn.Module, enabled: bool = True) -> Iterator[None]:
    """While active, every input/middle/output block of these models (our UNet and ControlNet)
    runs under torch.utils.checkpoint when gradients are being recorded."""
    patched = [block for model in models for block in _blocks(model)] if enabled else []
    for block in patched:
        block.forward = _checkpointed(type(block).forward.__get__(block))
    try:
        yield
    finally:
        for block in patched:
            del block.forward  # back to the class's forward


def _checkpointed(forward: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run
