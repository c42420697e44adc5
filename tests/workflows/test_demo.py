"""The README's first command, `scripts/demo`, runs to the end: its script is started the way the
command starts it (a fresh Python process), at a small size, with ComfyUI found as the demo finds
it. The demo once stopped on a new node without any test failing (session 17); this catches that.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workflows import headless
from workflows.example_image import DRAWN_SIDE

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = REPO_ROOT / "scripts" / "demo.py"
SIDE = 64   # the sampled image's side (latent 8x8)
STEPS = 1
DEMO_PHOTO_SIDE = DRAWN_SIDE  # scripts/demo.py writes the generated photo at its default size
LISTED_ANNOTATORS = re.compile(r"^Weight-free annotators \((\d+) nodes, [\d.]+ s\): (.+)$", re.MULTILINE)
LISTED_FILE = re.compile(r"^  (\S+\.png)$", re.MULTILINE)


def test_demo_runs_every_weight_free_annotator_and_the_workflow(tmp_path):
    comfyui, why_not = headless.find_comfyui()
    if comfyui is None:
        pytest.skip(why_not)
    output = tmp_path / "demo"
    done = subprocess.run(
        [sys.executable, str(DEMO), "--size", str(SIDE), "--steps", str(STEPS), "--output", str(output)],
        env={**os.environ, "COMFYUI_PATH": str(comfyui)}, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    count, node_ids = LISTED_ANNOTATORS.search(done.stdout).groups()
    node_ids = node_ids.split(", ")
    assert len(node_ids) == int(count) and all(n.startswith("CNS_") for n in node_ids)
    listed = LISTED_FILE.findall(done.stdout)
    maps = sorted(p.relative_to(output).as_posix() for p in (output / "maps").glob("*.png"))
    # one map per annotator, named after it, each listed in the output
    assert sorted(m for m in listed if m.startswith("maps/")) == maps
    assert sorted(m.split("/")[1].rsplit("_", 2)[0] for m in maps) == sorted(n.removeprefix("CNS_") for n in node_ids)
    for name in maps:
        picture = np.asarray(Image.open(output / name))
        assert picture.shape[:2] == (DEMO_PHOTO_SIDE, DEMO_PHOTO_SIDE), name
    assert (output / "annotators.png").is_file()

    # the shared workflow's map and its sampled image, at the size asked for
    results = [m for m in listed if not m.startswith("maps/")]
    assert results and all((output / m).is_file() for m in results)
    sampled = [m for m in results if "_map_" not in m]
    assert [Image.open(output / m).size for m in sampled] == [(SIDE, SIDE)]
