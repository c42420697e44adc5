"""Workflow tests: the shared workflows in workflows/ used as users use them, through a real
ComfyUI checkout (every test skips, saying why, when none is found).

Models are files with random weights under the standard names the workflows name
(workflows/random_models.py), in a temporary folder that ComfyUI searches first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
import torch

from workflows import build, headless
from workflows.example_image import EXAMPLE_IMAGE, write_example_photo
from workflows.models_folder import provide_models

COMFYUI, WHY_NOT = headless.find_comfyui()
# The committed workflows, by name (UI file, API file); both must exist for every workflow.
WORKFLOW_NAMES = [w.name for w in build.WORKFLOWS]
PHOTO_SIDE = 128  # the example photo in the tests (the demo draws it at 512); Hough needs lines this long


def load_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> Iterator[SimpleNamespace]:
    """ComfyUI in-process with the pack, random-weight models, the example photo in its input
    folder and a temporary output folder. The models (3 GB with the SDXL checkpoint) are deleted
    at the end: pytest keeps the last three runs' temporary folders."""
    if COMFYUI is None:
        pytest.skip(WHY_NOT)
    # Small tensors gain nothing from threads; spinning OpenMP threads slow shared runners down.
    torch.set_num_threads(1)
    booted = headless.boot(COMFYUI)
    root = tmp_path_factory.mktemp("workflows")
    checkpoints, controlnets = build.model_files()
    report = provide_models(booted, str(root / "models"), prefer_real=False, annotator_files=build.annotator_files(),
                            checkpoint_files=checkpoints, controlnet_files=controlnets)
    input_dir, output_dir = root / "input", root / "output"
    booted.set_io_folders(str(input_dir), str(output_dir))
    write_example_photo(str(input_dir / EXAMPLE_IMAGE), side=PHOTO_SIDE)
    yield SimpleNamespace(comfy=booted, output_dir=output_dir, models=report)
    shutil.rmtree(root / "models", ignore_errors=True)


