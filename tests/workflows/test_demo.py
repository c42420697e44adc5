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


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    comfyui, why_not = headless.find_comfyui()
    if comfyui is None:
        pytest.skip(why_not)
    return subprocess.run(
        [sys.executable, str(DEMO), "--size", str(SIDE), "--steps", str(STEPS), "--output", str(tmp_path / "demo"), *args],
        env={**os.environ, "COMFYUI_PATH": str(comfyui)}, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def listed_annotators(stdout: str) -> list[str]:
    count, node_ids = LISTED_ANNOTATORS.search(stdout).groups()
    node_ids = node_ids.split(", ")
    assert len(node_ids) == int(count) and all(n.startswith("CNS_") for n in node_ids)
    return node_ids


# inpaint samples the photo itself (no empty latent): the demo scales the photo to --size for it
@pytest.mark.parametrize("workflow", ["canny", "inpaint"])
def test_demo_runs_every_weight_free_annotator_and_the_workflow(tmp_path, workflow):
    done = run_demo(tmp_path, "--workflow", workflow)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    output = tmp_path / "demo"

    node_ids = listed_annotators(done.stdout)
    assert "CNS_InpaintHint" in node_ids  # the generated photo is transparent where it is to be repainted
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
    assert re.search(rf"^Shared workflow workflows/api/{workflow}\.json \({SIDE}x{SIDE}, {STEPS} steps, ", done.stdout, re.M)


def test_demo_with_a_photo_without_transparency_leaves_inpaint_out(tmp_path):
    """Load Image's mask of such a photo is empty, which Inpaint Hint refuses: the annotator sheet
    goes on without it, and the inpaint workflow is refused before ComfyUI starts."""
    photo = tmp_path / "photo.jpg"
    rgb = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photo)

    refused = run_demo(tmp_path, "--photo", str(photo), "--workflow", "inpaint")
    assert refused.returncode == 2
    assert refused.stderr == (f"The inpaint workflow repaints the photo's transparent pixels, and {photo} has none.\n"
                              "Pass a PNG whose transparent (alpha) pixels mark the region to repaint.\n")
    assert not (tmp_path / "demo").exists()

    done = run_demo(tmp_path, "--photo", str(photo))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "\nInpaint Hint left out: the photo has no transparent pixels to mark the region to inpaint\n" in done.stdout
    node_ids = listed_annotators(done.stdout)
    assert "CNS_InpaintHint" not in node_ids and "CNS_Canny" in node_ids
    maps = list((tmp_path / "demo" / "maps").glob("*.png"))
    assert len(maps) == len(node_ids)
    assert {Image.open(m).size for m in maps} == {(80, 48)}
