"""The folder CLI: every readable image annotated, everything else skipped with a message;
learned annotators load their network once from the published file names."""

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from annotators import canny, lineart_standard, tile
from annotators.anyline import anyline, load_anyline
from annotators.batch import LEARNED, main, parse_value
from annotators.hed import HED_WEIGHTS, hed, load_hed
from annotators.lineart import LINEART_COARSE_WEIGHTS, lineart, load_lineart
from annotators.lineart_anime import LINEART_ANIME_WEIGHTS, lineart_anime, load_lineart_anime
from annotators.mlsd import MLSD_WEIGHTS, load_mlsd, mlsd
from annotators.openpose import load_openpose, openpose
from annotators.openpose.networks import BODY_WEIGHTS, FACE_WEIGHTS, HAND_WEIGHTS
from annotators.pidinet import PIDINET_WEIGHTS, load_pidinet, pidinet
from annotators.teed import MTEED_WEIGHTS, TEED_WEIGHTS, load_teed, teed
from tests.annotators.random_learned import random_network, random_openpose, save_published

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


def test_lineart_standard_over_a_folder(folder, tmp_path):
    out = tmp_path / "lines"
    assert main(["--annotator", "lineart_standard", "--input", str(folder), "--output", str(out),
                 "--param", "gaussian_sigma=3", "--resolution", "128"]) == 0
    expected = lineart_standard(data.astronaut()[::4, ::4], 3.0, resolution=128)
    np.testing.assert_array_equal(read_rgb(out / "astronaut.png"), expected)
    assert len(np.unique(expected)) > 16


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


# --- learned annotators ----------------------------------------------------------------------------

DETECT = 64  # the smallest detect resolution: the networks stay cheap


@pytest.fixture
def two_sizes(tmp_path: Path) -> Path:
    """Two photos of different sizes and aspect ratios."""
    source = tmp_path / "photos"
    source.mkdir()
    write_rgb(source / "astronaut.png", data.astronaut()[::8, ::8])  # 64 x 64
    write_rgb(source / "coffee.png", data.coffee()[::6, ::6])        # 67 x 100
    return source


def photos(folder: Path) -> dict[str, np.ndarray]:
    return {path.stem: read_rgb(path) for path in sorted(folder.glob("*.png"))}


# batch name -> (module, loader, published file, the same map from the function itself)
LEARNED_CASES = {
    "hed_safe": ("hed", "load_hed", HED_WEIGHTS,
                 lambda image, folder: hed(image, load_hed([folder]), DETECT, safe=True)),
    "pidinet_scribble": ("pidinet", "load_pidinet", PIDINET_WEIGHTS,
                         lambda image, folder: pidinet(image, load_pidinet([folder]), DETECT,
                                                       scribble=True)),
    "lineart_coarse": ("lineart", "load_lineart", LINEART_COARSE_WEIGHTS,
                       lambda image, folder: lineart(image, load_lineart([folder], coarse=True),
                                                     DETECT)),
    "lineart_anime": ("lineart_anime", "load_lineart_anime", LINEART_ANIME_WEIGHTS,
                      lambda image, folder: lineart_anime(image, load_lineart_anime([folder]),
                                                          DETECT)),
    "mlsd": ("mlsd", "load_mlsd", MLSD_WEIGHTS,
             lambda image, folder: mlsd(image, load_mlsd([folder]), DETECT)),
    "teed": ("teed", "load_teed", TEED_WEIGHTS,
             lambda image, folder: teed(image, load_teed([folder]), DETECT)),
}


@pytest.mark.parametrize("name", list(LEARNED_CASES))
def test_learned_annotator_over_a_folder_equals_the_function(name, two_sizes, tmp_path):
    module, loader, file_name, direct = LEARNED_CASES[name]
    weights = tmp_path / "weights"
    save_published(random_network(module, loader, seed=len(name)), weights, file_name)
    out = tmp_path / "maps"
    assert main(["--annotator", name, "--input", str(two_sizes), "--output", str(out),
                 "--weights-dir", str(tmp_path / "empty"), "--weights-dir", str(weights),
                 "--resolution", str(DETECT), "--device", "cpu"]) == 0
    levels = set()
    for stem, image in photos(two_sizes).items():
        expected = direct(image, str(weights))
        got = read_rgb(out / f"{stem}.png")
        assert got.shape == image.shape  # each map at its own image's size
        np.testing.assert_array_equal(got, expected)
        levels |= set(np.unique(expected).tolist())
    assert len(levels) > 1  # random weights that drew one flat colour would prove nothing


def test_anyline_over_a_folder_writes_16_bit_maps(two_sizes, tmp_path):
    """AnyLine's float maps in 0..1 are written as 16-bit PNGs, round(v x 65535)."""
    weights = tmp_path / "weights"
    save_published(random_network("teed", "load_teed", seed=3), weights, MTEED_WEIGHTS)
    out = tmp_path / "anyline"
    assert main(["--annotator", "anyline", "--input", str(two_sizes), "--output", str(out),
                 "--weights-dir", str(weights), "--resolution", str(DETECT), "--param", "object_min_size=9",
                 "--device", "cpu"]) == 0
    networks = load_anyline([str(weights)])
    for stem, image in photos(two_sizes).items():
        expected = anyline(image, networks, DETECT, object_min_size=9)
        written = cv2.imread(str(out / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert written.dtype == np.uint16 and written.shape == image.shape
        np.testing.assert_array_equal(cv2.cvtColor(written, cv2.COLOR_BGR2RGB), np.round(expected * 65535))
        assert len(np.unique(written)) > 16


def test_openpose_over_a_folder_writes_maps_and_keypoints(two_sizes, tmp_path):
    weights = tmp_path / "weights"
    save_published(random_openpose(seed=5).body, weights, BODY_WEIGHTS)
    out = tmp_path / "poses"
    assert main(["--annotator", "openpose", "--input", str(two_sizes), "--output", str(out),
                 "--weights-dir", str(weights), "--resolution", str(DETECT),
                 "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "astronaut.json", "astronaut.png", "coffee.json", "coffee.png"]
    networks = load_openpose([str(weights)])
    people = 0
    for stem, image in photos(two_sizes).items():
        pose_map, keypoints = openpose(image, networks, DETECT)
        np.testing.assert_array_equal(read_rgb(out / f"{stem}.png"), pose_map)
        assert json.loads((out / f"{stem}.json").read_text()) == keypoints
        people += len(keypoints["people"])
    assert people > 0  # the random body network finds "people": the JSON is not trivially empty


def test_a_variant_fixes_its_options(two_sizes, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--annotator", "hed_safe", "--input", str(two_sizes), "--output", str(tmp_path / "o"),
              "--weights-dir", str(tmp_path), "--param", "safe=false"])
    assert stop.value.code == 2
    assert "safe is set by the annotator's name; choose the variant instead" in capsys.readouterr().err


def test_missing_weights_name_the_file_and_the_folders(two_sizes, tmp_path, capsys):
    first, second = tmp_path / "annotators", tmp_path / "more"
    out = tmp_path / "maps"
    assert main(["--annotator", "openpose_hand", "--input", str(two_sizes), "--output", str(out),
                 "--weights-dir", str(first), "--weights-dir", str(second)]) == 1
    # load_openpose looks for every file before loading any: the body file is the first missing.
    assert capsys.readouterr().err == (
        f"error: annotator weights '{BODY_WEIGHTS}' not found. Download {BODY_WEIGHTS} from "
        f"https://huggingface.co/lllyasviel/Annotators and put it in {first} (looked in: {first}, "
        f"{second}). Nothing is downloaded automatically.\n")
    assert not out.exists()  # stopped before the first image


def test_weights_dir_is_required_without_comfyui(two_sizes, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    with pytest.raises(SystemExit) as stop:
        main(["--annotator", "mlsd", "--input", str(two_sizes), "--output", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert ("learned annotators need their weight files: pass --weights-dir FOLDER (the folder "
            "holding them, e.g. ComfyUI/models/annotators), or set COMFYUI_PATH to your ComfyUI "
            "checkout") in capsys.readouterr().err


def test_weights_default_to_comfyui_models_annotators(two_sizes, tmp_path, monkeypatch):
    comfyui = tmp_path / "ComfyUI"
    comfyui.mkdir()
    (comfyui / "folder_paths.py").write_text("")  # what marks a ComfyUI checkout
    save_published(random_network("mlsd", "load_mlsd", seed=7),
                   comfyui / "models" / "annotators", MLSD_WEIGHTS)
    monkeypatch.setenv("COMFYUI_PATH", str(comfyui))
    out = tmp_path / "lines"
    assert main(["--annotator", "mlsd", "--input", str(two_sizes), "--output", str(out),
                 "--resolution", str(DETECT), "--device", "cpu"]) == 0
    image = photos(two_sizes)["coffee"]
    expected = mlsd(image, load_mlsd([str(comfyui / "models" / "annotators")]), DETECT)
    np.testing.assert_array_equal(read_rgb(out / "coffee.png"), expected)


def test_comfyui_path_that_is_no_checkout_is_named(two_sizes, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["--annotator", "hed", "--input", str(two_sizes), "--output", str(tmp_path / "o")])
    assert (f"COMFYUI_PATH={tmp_path} is not a ComfyUI checkout (no folder_paths.py there); fix "
            "it or pass --weights-dir FOLDER") in capsys.readouterr().err


def test_unknown_annotator_lists_every_name_with_its_weight_files(folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--annotator", "hedd", "--input", str(folder), "--output", str(tmp_path / "o")])
    assert stop.value.code == 2
    text = capsys.readouterr().err
    assert "unknown annotator 'hedd' (did you mean hed" in text
    expected_files = {  # from the modules' constants, not from the CLI's table
        "canny": "(no weights)", "tile": "(no weights)",
        "hed_scribble": HED_WEIGHTS, "pidinet": PIDINET_WEIGHTS, "mlsd": MLSD_WEIGHTS,
        "lineart_coarse": LINEART_COARSE_WEIGHTS, "lineart_anime": LINEART_ANIME_WEIGHTS,
        "openpose": BODY_WEIGHTS,
        "openpose_full": f"{BODY_WEIGHTS}, {HAND_WEIGHTS}, {FACE_WEIGHTS}",
    }
    for name, files in expected_files.items():
        assert re.search(rf"^  {name} +{re.escape(files)}$", text, re.MULTILINE), name


# Annotators written in their own modules (MiDaS, NormalBAE, manga line, UniFormer): the CLI
# names their entry points; this checks that the names resolve, whenever the module is here.
OPTIONAL_MODULES = sorted({spec.module for spec in LEARNED.values()}
                          - {"hed", "pidinet", "mlsd", "lineart", "lineart_anime", "openpose"})


@pytest.mark.parametrize("module_name", OPTIONAL_MODULES)
def test_registry_names_resolve_in_optional_modules(module_name):
    try:
        module = importlib.import_module(f"annotators.{module_name}")
    except ModuleNotFoundError as missing:
        if missing.name != f"annotators.{module_name}":
            raise
        pytest.skip(f"annotators/{module_name}.py is not written yet")
    for name, spec in LEARNED.items():
        if spec.module != module_name:
            continue
        function = getattr(module, spec.function)
        getattr(module, spec.loader)
        for dotted in spec.weights:
            files = getattr(module, dotted.rsplit(".", 1)[1])
            assert isinstance(files, str) or all(isinstance(f, str) for f in files), name
        parameters = list(inspect.signature(function).parameters)
        assert parameters[2] == "resolution", name  # (image, network, resolution, ...)


def test_progress_bar_counts_the_files(folder, tmp_path, capsys):
    pytest.importorskip("tqdm")
    main(["--annotator", "binary", "--input", str(folder), "--output", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert re.search(r"binary: 100%\|[^|]*\| 5/5 ", err), err  # tqdm's bar on stderr


def test_two_files_with_one_name_write_once(tmp_path, capsys):
    source = tmp_path / "in"
    source.mkdir()
    write_rgb(source / "photo.jpg", data.astronaut()[::8, ::8])
    write_rgb(source / "photo.png", data.coffee()[::8, ::8])
    out = tmp_path / "out"
    assert main(["--annotator", "tile", "--input", str(source), "--output", str(out)]) == 0
    np.testing.assert_array_equal(read_rgb(out / "photo.png"),
                                  tile(read_rgb(source / "photo.jpg")))  # name order: .jpg first
    captured = capsys.readouterr()
    assert ("skipping photo.png: photo.jpg already wrote photo.png; rename one of them"
            in captured.out + captured.err)


@pytest.mark.parametrize("arguments, message", [
    (["--annotator", "tile", "--resolution", "256"],
     "tile has no detect resolution; leave out --resolution"),
    (["--annotator", "canny", "--resolution", "32"],
     "argument --resolution: '32' is not a detect resolution; give whole pixels, at least 64 "
     "(sides are rounded to a multiple of 64), or 'none' for each image's own size"),
    (["--annotator", "canny", "--resolution", "256", "--param", "resolution=128"],
     "give the resolution once: --resolution or --param resolution="),
    (["--annotator", "hed", "--weights-dir", ".", "--device", "tpu9"],
     "--device 'tpu9' is not a torch device; use auto, cpu, cuda, cuda:1 or mps"),
])
def test_bad_options_are_refused(folder, tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as stop:
        main(arguments + ["--input", str(folder), "--output", str(tmp_path / "o")])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_resolution_none_runs_at_each_images_size(folder, tmp_path):
    out = tmp_path / "edges"
    main(["--annotator", "canny", "--input", str(folder), "--output", str(out),
          "--resolution", "none"])
    np.testing.assert_array_equal(read_rgb(out / "astronaut.png"),
                                  canny(data.astronaut()[::4, ::4], resolution=None))
