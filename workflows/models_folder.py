"""Fill a models folder with random-weight files under the standard names the workflows use,
and register it with ComfyUI. Shared by the demo and the tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable

from . import random_models
from .headless import Comfy

# Distinct seeds per file kind, so no two kinds share weights by accident.
CHECKPOINT_SEED = 0
CONTROLNET_SEED = 100
ANNOTATOR_SEED = 200
CHECKPOINT_WRITERS = {
    random_models.SD15_CHECKPOINT: random_models.write_sd15_checkpoint,
    random_models.SDXL_CHECKPOINT: random_models.write_sdxl_checkpoint,
}


@dataclass
class ModelsReport:
    real: list[str] = field(default_factory=list)  # "kind/file -> path" found in ComfyUI's folders
    random: list[str] = field(default_factory=list)  # "kind/file" written with random weights
    unavailable: list[str] = field(default_factory=list)  # annotator files whose module is not in this checkout


def provide_models(
    comfy: Comfy,
    folder: str,
    prefer_real: bool,
    annotator_files: Iterable[str] = (),
    checkpoint_files: Iterable[str] = (random_models.SD15_CHECKPOINT,),
    controlnet_files: Iterable[str] = tuple(random_models.CONTROLNET_FILES.values()),
) -> ModelsReport:
    """Make the files the workflows name available to ComfyUI (build.model_files says which).

    prefer_real: a file ComfyUI already finds (the user's real weights) is used as is, and only
    the missing ones are generated; the generated folder is appended after the user's folders.
    Otherwise (tests) every file is generated and the folder goes first, so results never
    depend on what a machine happens to have installed. Of the learned annotators' files, only
    `annotator_files` are provided (they are large).
    """
    report = ModelsReport()
    folders = {kind: os.path.join(folder, kind) for kind in ("checkpoints", "controlnet", "annotators")}
    for path in folders.values():
        os.makedirs(path, exist_ok=True)

    def needed(kind: str, file_name: str) -> bool:
        if prefer_real:
            found = comfy.find_model(kind, file_name)
            if found and not os.path.abspath(found).startswith(os.path.abspath(folder) + os.sep):
                report.real.append(f"{kind}/{file_name} -> {found}")
                return False
        report.random.append(f"{kind}/{file_name}")
        return True

    for file_name in sorted(set(checkpoint_files)):
        path = os.path.join(folders["checkpoints"], file_name)
        if needed("checkpoints", file_name) and not os.path.exists(path):
            CHECKPOINT_WRITERS[file_name](path, CHECKPOINT_SEED)

    first_controlnet = None
    for file_name in sorted(set(controlnet_files)):
        if not needed("controlnet", file_name):
            continue
        path = os.path.join(folders["controlnet"], file_name)
        if file_name == random_models.UNION_FILE:
            if not os.path.exists(path):
                random_models.write_union(path, CONTROLNET_SEED)
        elif os.path.exists(path):
            first_controlnet = first_controlnet or path
        elif first_controlnet is None:
            first_controlnet = random_models.write_controlnet(path, CONTROLNET_SEED)
        else:  # one random ControlNet is as good as another: share the bytes
            random_models.link_or_copy(first_controlnet, path)

    wanted = set(annotator_files)
    for file_name, write in random_models.annotator_writers().items():
        if file_name in wanted:
            if write is None:
                report.unavailable.append(file_name)
                continue
            if not needed("annotators", file_name):
                continue
            if not os.path.exists(os.path.join(folders["annotators"], file_name)):
                write(folders["annotators"], ANNOTATOR_SEED)

    for kind, path in folders.items():
        comfy.use_model_folder(kind, path, first=not prefer_real)
    return report
