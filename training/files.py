"""Files written so that an interruption never leaves a broken one (controlnet_core.files.atomic_write:
a temporary file in the same folder, flushed to disk, then renamed over the target)."""

from __future__ import annotations

import torch

from ._core import files

atomic_write = files.atomic_write


def atomic_write_bytes(path: str, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    atomic_write(path, write)


def atomic_torch_save(path: str, obj: object) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))
