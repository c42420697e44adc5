"""The folder CLI: every readable image annotated, everything else skipped with a message."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from annotators import canny, tile
from annotators.batch import main, parse_value

REPO_ROOT = Path(__file__).resolve().parents[2]


def write_rgb(path: Path, rgb: np.ndarray) -> None:
    code = cv2.COLOR_RGBA2BGRA if rgb.shape[2] == 4 else cv2.COLOR_RGB2BGR
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, code))


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    source = tmp_path / "in"
    source.mkdir()
    write_rgb(source / "astronaut.png", data.astronaut()[::4, ::4])
    rgba = np.dstack([data.coffee()[::4, ::4], np.full((100, 150), 128, np.uint8)])
    write_rgb(source / "coffee.png", rgba)  # alpha: composited on white on the way in
    camera16 = data.camera()[::4, ::4].astype(np.uint16) * 257
    assert cv2.imwrite(str(source / "camera16.png"), camera16)
    (source / "notes.txt").write_text("not an image")
    (source / "broken.jpg").write_bytes(b"\x00 definitely not a jpeg")
    return source


def test_batch_writes_one_map_per_image_and_skips_the_rest(folder, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["--annotator", "canny", "--input", str(folder), "--output", str(out),
                 "--param", "low_threshold=50", "--param", "high_threshold=150",
                 "--param", "resolution=none"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["astronaut.png", "camera16.png", "coffee.png"]
    # 16-bit gray comes in as round(v / 257): exactly the 8-bit original
    np.testing.assert_array_equal(read_rgb(out / "camera16.png"),
                                  canny(data.camera()[::4, ::4], 50, 150, resolution=None))
    np.testing.assert_array_equal(read_rgb(out / "astronaut.png"),
                                  canny(data.astronaut()[::4, ::4], 50, 150, resolution=None))
    coffee = np.dstack([data.coffee()[::4, ::4], np.full((100, 150), 128, np.uint8)])
    np.testing.assert_array_equal(read_rgb(out / "coffee.png"),
                                  canny(coffee, 50, 150, resolution=None))
    messages = capsys.readouterr()
    text = messages.out + messages.err
    assert "skipping notes.txt: not an image" in text
    assert "skipping broken.jpg: not a readable image" in text
    assert "wrote 3 map(s) to" in text


def test_batch_skips_images_the_annotator_refuses(folder, tmp_path, capsys):
    out = tmp_path / "normals"
    main(["--annotator", "normal_from_depth", "--input", str(folder), "--output", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ["camera16.png"]  # the only gray "depth"
    captured = capsys.readouterr()
    assert ("skipping astronaut.png: depth has 3 different channels; pass a single-channel "
            "(gray) depth map") in captured.out + captured.err


def test_batch_refuses_an_unknown_parameter(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--annotator", "tile", "--input", str(folder), "--output", str(tmp_path / "o"),
              "--param", "sigma=2"])
    assert stop.value.code == 2
    assert "tile has no parameter 'sigma'; it takes downsample_factor, blur_sigma" in \
        capsys.readouterr().err


def test_batch_counts_without_tqdm(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # makes `from tqdm import tqdm` fail
    main(["--annotator", "binary", "--input", str(folder), "--output", str(tmp_path / "b")])
    captured = capsys.readouterr()
    assert "[1/5] astronaut.png" in captured.err and "[5/5] notes.txt" in captured.err
    assert "skipping notes.txt: not an image" in captured.out


def test_parse_value():
    values = [parse_value(v) for v in ("none", "True", "3", "2.5", "rgb")]
    assert values == [None, True, 3, 2.5, "rgb"]


def test_batch_runs_as_a_module(folder, tmp_path):
    out = tmp_path / "tiles"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "annotators.batch", "--annotator", "tile", "--input", str(folder),
         "--output", str(out), "--param", "downsample_factor=2"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_rgb(out / "astronaut.png"),
                                  tile(data.astronaut()[::4, ::4], 2))
