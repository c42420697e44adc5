"""Reading weight files safely and lazily, and writing them atomically.

safetensors files are opened lazily (the header is read first, tensors one at a time);
pickled `.pth`/`.ckpt`/`.bin` files load only with `torch.load(weights_only=True)`, memory-mapped
where the file allows it, so a 5 GB ControlLDM dict of which we need a third is never read whole.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from typing import Callable, Iterator, Mapping

import torch

from .errors import ControlNetFileError, ControlNetFormatError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
DIFFUSERS_CONFIG = "config.json"


class WeightFile(Mapping[str, torch.Tensor]):
    """A read-only {key: tensor} view of a weight file, loading each tensor when asked.

    `shapes` is available without reading any tensor data (from the safetensors header).
    """

    def __init__(self, path: str, shapes: dict[str, tuple[int, ...]], get: Callable[[str], torch.Tensor]):
        self.path = path
        self.shapes = shapes
        self._get = get

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self.shapes:
            raise KeyError(key)
        return self._get(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)


def _name(path: str) -> str:
    return os.path.basename(path) or path


def open_weights(path: str) -> WeightFile:
    """Open a .safetensors or pickled torch file as a lazy mapping; errors name the file."""
    if not os.path.isfile(path):
        raise ControlNetFileError(f"ControlNet file not found: {path}")
    if os.path.getsize(path) == 0:
        raise ControlNetFileError(f"'{_name(path)}' is empty (0 bytes): the download or copy did not finish; fetch it again")
    if path.lower().endswith(SAFETENSORS_SUFFIXES):
        return _open_safetensors(path)
    if path.lower().endswith(PICKLE_SUFFIXES):
        return _open_pickle(path)
    raise ControlNetFileError(
        f"'{_name(path)}' has an unknown extension; ControlNet files are .safetensors (preferred) or .pth/.pt/.ckpt/.bin"
    )


def _open_safetensors(path: str) -> WeightFile:
    from safetensors import safe_open

    try:
        handle = safe_open(path, framework="pt", device="cpu")
        keys = list(handle.keys())
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
    except Exception as exc:  # safetensors raises its own SafetensorError for every header problem
        raise ControlNetFileError(
            f"'{_name(path)}' is not a readable safetensors file ({exc}); it is probably truncated or corrupt: "
            "download it again"
        ) from exc

    def get(key: str) -> torch.Tensor:
        try:
            return handle.get_tensor(key)
        except Exception as exc:
            raise ControlNetFileError(f"'{_name(path)}': tensor '{key}' cannot be read ({exc}); the file is corrupt") from exc

    return WeightFile(path, shapes, get)


def _open_pickle(path: str) -> WeightFile:
    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):  # legacy (non-zip) .pth files cannot be memory-mapped
                raise
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ControlNetFileError(
            f"'{_name(path)}' contains pickled Python objects other than tensors, which are refused for safety "
            "(loading only with torch.load(weights_only=True)). Use a .safetensors version of this file, or "
            "convert it on a machine you trust."
        ) from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise ControlNetFileError(
            f"'{_name(path)}' cannot be read as a PyTorch file ({type(exc).__name__}: {exc}); "
            "it is probably truncated or corrupt: download it again"
        ) from exc
    sd = unwrap_state_dict(data, path)
    return WeightFile(path, {k: tuple(v.shape) for k, v in sd.items()}, sd.__getitem__)


def unwrap_state_dict(data: object, path: str) -> dict[str, torch.Tensor]:
    """Return the flat {key: tensor} dict inside a saved object ('state_dict' wrappers unwrapped)."""
    while isinstance(data, dict) and "state_dict" in data and isinstance(data["state_dict"], dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ControlNetFileError(f"'{_name(path)}' holds a {type(data).__name__}, not a dictionary of weights")
    tensors = {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        # Dicts of dicts: {"adapter": {...}} (some T2I-Adapter exports), {"image_proj": {...},
        # "ip_adapter": {...}} (IP-Adapter .bin files); their keys get the outer name as prefix.
        if data and all(isinstance(v, dict) for v in data.values()):
            return {f"{name}.{k}": v for name, inner in data.items() for k, v in unwrap_state_dict(inner, path).items()}
        raise ControlNetFileError(f"'{_name(path)}' contains no weight tensors")
    return tensors


def read_diffusers_config(weights_path: str) -> dict | None:
    """The diffusers config.json beside a weights file, if there is one."""
    candidate = os.path.join(os.path.dirname(weights_path), DIFFUSERS_CONFIG)
    if not os.path.isfile(candidate):
        return None
    try:
        with open(candidate, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise ControlNetFileError(f"'{candidate}' is not valid JSON ({exc}); restore the diffusers config.json") from exc


def find_diffusers_weights(folder: str) -> str:
    """The weights file inside a diffusers model folder (fp32 safetensors preferred)."""
    for name in (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
    ):
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise ControlNetFileError(
        f"'{folder}' is a folder without diffusion_pytorch_model.safetensors (or .bin): not a diffusers ControlNet"
    )


def assign_weights(
    model: torch.nn.Module,
    read: Callable[[str], torch.Tensor],
    dtype: torch.dtype,
    device: torch.device | str,
    source: str,
    kind: str,
) -> torch.nn.Module:
    """Give a model built on the meta device its weights: read(key) for every key, checked for
    shape, converted to dtype/device and assigned (no second copy). read raises KeyError(name)
    for a weight the file lacks; the error names it."""
    state = {}
    for key, meta in model.state_dict().items():
        try:
            tensor = read(key)
        except KeyError as exc:
            raise ControlNetFormatError(
                f"{source} lacks the weight '{exc.args[0]}' that this {kind} needs: the file is incomplete or "
                "was converted wrongly"
            ) from None
        if tuple(tensor.shape) != tuple(meta.shape):
            raise ControlNetFormatError(f"{source}: weight '{key}' has shape {tuple(tensor.shape)}, expected {tuple(meta.shape)}")
        state[key] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """write(temporary_path), flush it to disk, then rename it to `path` (atomic on POSIX and
    Windows): an interruption never leaves a broken file under `path`, which keeps its old content."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _new_file_mode())  # mkstemp makes it owner-only; give it the mode open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
