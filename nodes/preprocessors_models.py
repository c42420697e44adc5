"""Learned annotator networks under ComfyUI's model management.

A `LearnedModel` names, as strings, where a network comes from: its annotators module, the
module's weight-file constants and its `load_*` function. Nothing is imported until a node runs,
so the nodes register even when an annotator module (or scipy for OpenPose) is absent.

`learned_network(model)` (`learned_networks(*models)` for several at once) finds the files in
the `annotators` model folders (a missing file raises the annotators' MissingWeightsError, whose
message names the file, the folders and where it is published), loads the network once on
ComfyUI's offload device, wraps it in a ModelPatcher and loads that with `load_models_gpu`, as
ComfyUI does for VAEs and ControlNets. So ComfyUI moves it to its device, evicts it when it needs
the memory, and "unload models" releases it. The network stays cached between runs (keyed by the
files, their size and modification time, the load options, device and dtype), one copy for every
node that names the same model (AnyLine's line art and the Line Art nodes), until ComfyUI
detaches it. Then its weights are dropped at once (moved to the meta device, which frees their
memory) and the entry is removed from the cache at the next cache access: removing it inside
ComfyUI's unload loop would free the patcher there, and ComfyUI's finalizer would shrink the list
it is iterating.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

ANNOTATORS_FOLDER = "annotators"  # the model folder nodes/__init__.py registers
# Annotators are small (<= 250 MB) and some overflow in half precision (HED subtracts a mean
# from 0..255 input); float32 everywhere gives the maps the annotator tests check.
ANNOTATOR_DTYPE = torch.float32


@dataclass(frozen=True)
class LearnedModel:
    """One annotator network: `module` (below annotators/), the names of its weight-file
    constants, and its loader, called as loader(folders, device=..., dtype=..., **options)."""

    module: str
    weight_constants: tuple[str, ...]
    loader: str
    options: tuple[tuple[str, Any], ...] = ()

    def import_module(self):
        full_name = f"{__package__.rsplit('.', 1)[0]}.annotators.{self.module}"
        try:
            return importlib.import_module(full_name)
        except ModuleNotFoundError as error:
            if error.name != full_name:
                raise  # a dependency is missing: Python's message names it
            raise ModuleNotFoundError(
                f"this ControlNet Suite install has no annotators/{self.module.replace('.', '/')}.py; "
                "update ControlNet Suite to use this node", name=full_name) from error


class AnnotatorNetworks(nn.Module):
    """The module a ModelPatcher manages: the network(s) of one LearnedModel as submodules.
    A container, so the attributes ModelPatcher sets (`device`, ...) never touch the network."""

    def __init__(self, network: Any):
        super().__init__()
        if isinstance(network, nn.Module):
            self.network = network
        elif dataclasses.is_dataclass(network):  # e.g. OpenPoseNetworks: body, hand, face
            for field in dataclasses.fields(network):
                value = getattr(network, field.name)
                if isinstance(value, nn.Module):
                    self.add_module(field.name, value)
        else:
            raise TypeError(f"an annotator loader returned {type(network).__name__}, not a torch module")


@dataclass
class CachedNetwork:
    network: Any  # what the annotator function takes (a module, or OpenPoseNetworks)
    patcher: Any  # comfy.model_patcher.ModelPatcher around AnnotatorNetworks(network)
    released: bool = False  # ComfyUI unloaded it; its weights are gone


_cache: dict[tuple, CachedNetwork] = {}
_in_use: set[tuple] = set()


def annotator_folders() -> list[str]:
    import folder_paths

    try:
        return folder_paths.get_folder_paths(ANNOTATORS_FOLDER)
    except KeyError:  # not registered: find_weights says so and names the default folder
        return []


def _file_identity(path: str) -> tuple[str, int, int]:
    stat = os.stat(path)
    return (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)


def _release_when_detached(key: tuple):
    def on_detach(patcher, unpatch_all) -> None:
        # ComfyUI unloaded it (eviction, "unload models"): free the weights' memory now, forget
        # the entry at the next cache access. Not while a node runs it: load_models_gpu may
        # evict and reload a model within one call. unpatch_all=False is a clone hand-over.
        entry = _cache.get(key)
        if unpatch_all and key not in _in_use and entry is not None and entry.patcher is patcher:
            entry.released = True
            patcher.model.to("meta")
    return on_detach


def _forget_released() -> None:
    for key in [key for key, entry in _cache.items() if entry.released]:
        del _cache[key]


def cached_network(model: LearnedModel) -> tuple[tuple, CachedNetwork]:
    """(cache key, the network and its patcher), loading the network if it is not cached."""
    import comfy.model_management as model_management
    import comfy.model_patcher
    import comfy.patcher_extension

    from ..annotators.weights import PUBLISHED_REPO, find_weights

    _forget_released()
    module = model.import_module()
    folders = annotator_folders()
    repos = getattr(module, "WEIGHTS_REPOS", {})  # files published elsewhere than lllyasviel/Annotators
    paths = [find_weights(name, folders, repos.get(name, PUBLISHED_REPO))
             for name in (getattr(module, constant) for constant in model.weight_constants)]
    load_device = model_management.get_torch_device()
    offload_device = model_management.unet_offload_device()
    key = (model.module, model.loader, model.options, tuple(_file_identity(p) for p in paths),
           str(load_device), str(offload_device), ANNOTATOR_DTYPE)
    entry = _cache.get(key)
    if entry is None:
        loader = getattr(module, model.loader)
        network = loader(folders, device=offload_device, dtype=ANNOTATOR_DTYPE, **dict(model.options))
        patcher = comfy.model_patcher.ModelPatcher(
            AnnotatorNetworks(network), load_device=load_device, offload_device=offload_device)
        patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_DETACH, _release_when_detached(key))
        entry = _cache[key] = CachedNetwork(network, patcher)
    return key, entry


@contextlib.contextmanager
def learned_networks(*models: LearnedModel) -> Iterator[list[Any]]:
    """The networks of `models`, loaded by ComfyUI onto its device together (so loading one
    cannot evict another) for the duration of the block."""
    import comfy.model_management as model_management

    entries = [cached_network(model) for model in models]
    keys = {key for key, _ in entries}
    _in_use.update(keys)
    try:
        # force_full_load: our layers are plain torch ones, which ComfyUI cannot run partly
        # offloaded (only comfy.ops layers cast weights on the fly).
        model_management.load_models_gpu([entry.patcher for _, entry in entries], force_full_load=True)
        yield [entry.network for _, entry in entries]
    finally:
        _in_use.difference_update(keys)


@contextlib.contextmanager
def learned_network(model: LearnedModel) -> Iterator[Any]:
    """The network of `model`, loaded by ComfyUI onto its device for the duration of the block."""
    with learned_networks(model) as (network,):
        yield network


def cached_keys() -> list[tuple]:
    """The keys of the networks held (for tests and diagnostics)."""
    _forget_released()
    return list(_cache)
