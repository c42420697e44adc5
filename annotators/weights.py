"""Finding and reading annotator weights: local folders only, never a download.

Files keep the names lllyasviel/Annotators publishes (`ControlNetHED.pth`, `body_pose_model.pth`,
...). A file is looked up directly in each models folder, then in controlnet_aux's cache layout
`ckpts/<repo>/<file>` below it, so users can point us at what they already have.

Where a file is published is a Hugging Face repository "owner/name", or "owner/name/folder" for a
file kept in a folder of the repository (TEED's `7_model.pth` in bdsqlsz/qinglong_controlnet-lllite's
`Annotators`): comfyui_controlnet_aux keeps those as `ckpts/owner/name/folder/<file>`, which the
same join finds, and the missing-file message links to the folder. A file kept in a Hugging Face
Space rather than a model repository is "spaces/owner/name/folder" (Depth Anything V1's checkpoints,
in the LiheYoung/Depth-Anything Space): its address keeps the prefix, the cache layout does not.
A file published outside the hub (mmdet's YOLOX checkpoint, on download.openmmlab.com) is named
by its folder's address; it is looked up directly in the models folders only.
"""

from __future__ import annotations

import os
import pickle
from typing import Sequence

import torch

HUB_URL = "https://huggingface.co"
PUBLISHED_REPO = "lllyasviel/Annotators"
PUBLISHED_AT = f"{HUB_URL}/{PUBLISHED_REPO}"
CONTROLNET_AUX_CACHE = "ckpts"  # controlnet_aux's from_pretrained(cache_dir) layout: ckpts/<repo>/<file>
REPO_ID_PARTS = 2  # a Hugging Face repository id is "owner/name"; anything after is a folder in it
# hf_hub_download(repo_type="space") files, addressed huggingface.co/spaces/owner/name; controlnet_aux
# keeps them as ckpts/owner/name/<folder>/<file> (its custom_hf_download: local_dir=ckpts/<repo id>).
SPACE_PREFIX = "spaces/"
WEB_ADDRESS_PREFIX = "https://"  # a repo given as an address: a file published outside the hub


# Entries that hold a checkpoint's weights, tried in this order. "depth_model" is last, so it only
# matters for a file with neither of the others (LeReS's res101.pth).
CHECKPOINT_WEIGHT_KEYS = ("state_dict", "model", "depth_model")


class MissingWeightsError(FileNotFoundError):
    """An annotator's weight file is not in any models folder."""


class BadWeightsError(ValueError):
    """An annotator's weight file exists but cannot be used."""


def published_url(repo: str) -> str:
    """The address of `repo` ("owner/name") on the hub, or of the folder in it ("owner/name/folder");
    "spaces/owner/name/folder" is a folder in a Space; an address ("https://...") is returned as is."""
    if repo.startswith(WEB_ADDRESS_PREFIX):
        return repo
    space = SPACE_PREFIX if repo.startswith(SPACE_PREFIX) else ""
    parts = repo.removeprefix(space).split("/")
    repo_id, folder = "/".join(parts[:REPO_ID_PARTS]), "/".join(parts[REPO_ID_PARTS:])
    return f"{HUB_URL}/{space}{repo_id}" + (f"/tree/main/{folder}" if folder else "")


def find_weights(file_name: str, folders: Sequence[str], repo: str = PUBLISHED_REPO) -> str:
    """Path of `file_name` in the first folder that has it, directly or as ckpts/<repo>/<file>; a
    clear error naming the file, the folders looked in and where the file is published when none
    does. `repo` is "owner/name" or, for a file in a folder of the repository, "owner/name/folder"
    ("spaces/owner/name/folder" for a Space's), or the address of the folder of a file published
    outside the hub (then only the folders themselves are searched)."""
    if os.path.basename(file_name) != file_name:
        raise ValueError(f"annotator weight names are plain file names, got '{file_name}'")
    cached_as = repo.removeprefix(SPACE_PREFIX)
    for folder in folders:
        candidates = [os.path.join(folder, file_name)]
        if not repo.startswith(WEB_ADDRESS_PREFIX):
            candidates.append(os.path.join(folder, CONTROLNET_AUX_CACHE, cached_as, file_name))
        for candidate in candidates:
            if os.path.isfile(candidate):
                return candidate
    looked_in = ", ".join(folders) if folders else "(no annotators folder is registered)"
    raise MissingWeightsError(
        f"annotator weights '{file_name}' not found. Download {file_name} from {published_url(repo)} and put "
        f"it in {folders[0] if folders else 'ComfyUI/models/annotators'} (looked in: {looked_in}). Nothing is "
        "downloaded automatically."
    )


class OpaqueObject:
    """What a class or function named in a checkpoint beside its tensors becomes when read with
    `opaque_objects=True`: it takes any arguments and state and keeps none, so nothing the file
    names is imported or run (OpenMMLab training checkpoints pickle mmengine's HistoryBuffer and
    numpy arrays in their metadata)."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state) -> None:
        pass


def _torch_load(path: str, opaque_objects: bool):
    list_globals = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)  # torch >= 2.5
    if not opaque_objects or list_globals is None:
        return torch.load(path, map_location="cpu", weights_only=True)
    # weights_only's allow-list, plus every other global the file names, each read as an
    # OpaqueObject (listed from the pickle's opcodes without running them).
    names = list_globals(path)
    with torch.serialization.safe_globals([(OpaqueObject, name) for name in names]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict(path: str, opaque_objects: bool = False) -> dict[str, torch.Tensor]:
    """{key: tensor} from a .safetensors or pickled torch file (weights_only=True: tensors only).
    `opaque_objects=True` reads any other object in the file as an inert `OpaqueObject` instead
    of refusing the file; still nothing but tensors is returned."""
    name = os.path.basename(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as exc:
            raise BadWeightsError(f"'{name}' is not a readable safetensors file ({exc}); download it again") from exc
    try:
        data = _torch_load(path, opaque_objects)
    except pickle.UnpicklingError as exc:
        raise BadWeightsError(
            f"'{name}' contains pickled Python objects other than tensors, which are refused for safety "
            "(loading only with torch.load(weights_only=True)); use a .safetensors version of it"
        ) from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BadWeightsError(f"'{name}' cannot be read ({type(exc).__name__}: {exc}); it is probably truncated: download it again") from exc
    # Training checkpoints nest the weights: mmseg/lightning under "state_dict", NormalBAE and Zoe
    # under "model" (beside "iter" / optimizer state), LeReS under "depth_model".
    while isinstance(data, dict) and any(isinstance(data.get(key), dict) for key in CHECKPOINT_WEIGHT_KEYS):
        data = next(data[key] for key in CHECKPOINT_WEIGHT_KEYS if isinstance(data.get(key), dict))
    if not isinstance(data, dict) or not any(isinstance(v, torch.Tensor) for v in data.values()):
        raise BadWeightsError(f"'{name}' holds no weight tensors")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove a prefix such as `module.` (DataParallel saves) from every key that has it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state_dict.items()}


def drop_prefixes(state_dict: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """`state_dict` without the keys that start with any of `prefixes` (a checkpoint's
    training-only parts, which the inference network does not build)."""
    return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}
