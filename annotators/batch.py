"""Run one annotator over a folder of images: weight-free ones and learned ones alike.

    python -m annotators.batch --annotator canny --input photos/ --output maps/ \
        --param low_threshold=50 --param high_threshold=150
    python -m annotators.batch --annotator hed_safe --input photos/ --output maps/ \
        --weights-dir ComfyUI/models/annotators --resolution 768 --device cuda

Each readable image becomes `<output>/<name>.png` at the image's own size (OpenPose also writes
its keypoints as `<output>/<name>.json`, as DWPose and Animal Pose do); other files are skipped with a message. Files are
taken in name order. Images are read with their alpha channel and bit depth
(cv2.IMREAD_UNCHANGED), so the shared input rules apply (alpha on white, 16-bit scaled to 8-bit).
A learned annotator's network is loaded once, before the first image, from the weight files
lllyasviel/Annotators publishes (and a few published elsewhere: Depth Anything V1 and V2, TEED,
AnyLine's MTEED, DWPose's and Animal Pose's ONNX files); an unknown --annotator lists every name with its files. AnyLine's float maps
are written as 16-bit PNGs.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import cv2
import numpy as np

from .binary import binary
from .canny import canny
from .color_grid import color_grid
from .hough import hough_lines
from .image import DETECT_MULTIPLE
from .lineart_standard import lineart_standard
from .normal_from_depth import normal_from_depth
from .pyracanny import pyracanny
from .recolor import recolor_intensity, recolor_luminance
from .scribble import scribble
from .shuffle import content_shuffle
from .tile import tile, ttplanet_tile_guided_filter, ttplanet_tile_simple
from .weights import PUBLISHED_AT, PUBLISHED_REPO, published_url
from .xdog import xdog_scribble

# Annotators whose only input is one image file (inpaint needs a mask, segmentation a label map).
ANNOTATORS: dict[str, Callable[..., np.ndarray]] = {
    "binary": binary,
    "canny": canny,
    "color_grid": color_grid,
    "hough": hough_lines,
    "lineart_standard": lineart_standard,
    "normal_from_depth": normal_from_depth,
    "pyracanny": pyracanny,
    "recolor_intensity": recolor_intensity,
    "recolor_luminance": recolor_luminance,
    "scribble": scribble,
    "shuffle": content_shuffle,
    "tile": tile,
    "ttplanet_tile_guided_filter": ttplanet_tile_guided_filter,
    "ttplanet_tile_simple": ttplanet_tile_simple,
    "xdog": xdog_scribble,
}


@dataclass(frozen=True)
class LearnedAnnotator:
    """Where a learned annotator lives. Names are resolved only when it is used or listed, so a
    module that is not there (or lacks a dependency) costs nothing until then."""

    module: str                  # below `annotators`, e.g. "hed" or "openpose"
    function: str                # entry point: function(image, network, **keywords)
    loader: str                  # loader(folders, device=..., **loader_options) -> network
    weights: tuple[str, ...]     # "module.CONSTANT" names of the weight files it reads
    fixed: Mapping[str, object] = field(default_factory=dict)           # implied by the name
    loader_options: Mapping[str, object] = field(default_factory=dict)


_OPENPOSE_BODY = "openpose.networks.BODY_WEIGHTS"
_OPENPOSE_HAND = "openpose.networks.HAND_WEIGHTS"
_OPENPOSE_FACE = "openpose.networks.FACE_WEIGHTS"
_DWPOSE_FILES = ("dwpose.DETECTOR_ONNX", "dwpose.POSE_ONNX")  # load_dwpose's defaults

LEARNED: dict[str, LearnedAnnotator] = {
    "hed": LearnedAnnotator("hed", "hed", "load_hed", ("hed.HED_WEIGHTS",)),
    "hed_safe": LearnedAnnotator("hed", "hed", "load_hed", ("hed.HED_WEIGHTS",),
                                 fixed={"safe": True}),
    "hed_scribble": LearnedAnnotator("hed", "hed", "load_hed", ("hed.HED_WEIGHTS",),
                                     fixed={"scribble": True}),
    "pidinet": LearnedAnnotator("pidinet", "pidinet", "load_pidinet", ("pidinet.PIDINET_WEIGHTS",)),
    "pidinet_safe": LearnedAnnotator("pidinet", "pidinet", "load_pidinet",
                                     ("pidinet.PIDINET_WEIGHTS",), fixed={"safe": True}),
    "pidinet_scribble": LearnedAnnotator("pidinet", "pidinet", "load_pidinet",
                                         ("pidinet.PIDINET_WEIGHTS",), fixed={"scribble": True}),
    "mlsd": LearnedAnnotator("mlsd", "mlsd", "load_mlsd", ("mlsd.MLSD_WEIGHTS",)),
    "lineart": LearnedAnnotator("lineart", "lineart", "load_lineart", ("lineart.LINEART_WEIGHTS",)),
    "lineart_coarse": LearnedAnnotator("lineart", "lineart", "load_lineart",
                                       ("lineart.LINEART_COARSE_WEIGHTS",),
                                       loader_options={"coarse": True}),
    "lineart_anime": LearnedAnnotator("lineart_anime", "lineart_anime", "load_lineart_anime",
                                      ("lineart_anime.LINEART_ANIME_WEIGHTS",)),
    "openpose": LearnedAnnotator("openpose", "openpose", "load_openpose", (_OPENPOSE_BODY,)),
    "openpose_hand": LearnedAnnotator("openpose", "openpose", "load_openpose",
                                      (_OPENPOSE_BODY, _OPENPOSE_HAND),
                                      fixed={"include_hand": True}, loader_options={"hands": True}),
    "openpose_face": LearnedAnnotator("openpose", "openpose", "load_openpose",
                                      (_OPENPOSE_BODY, _OPENPOSE_FACE),
                                      fixed={"include_face": True}, loader_options={"face": True}),
    "openpose_full": LearnedAnnotator("openpose", "openpose", "load_openpose",
                                      (_OPENPOSE_BODY, _OPENPOSE_HAND, _OPENPOSE_FACE),
                                      fixed={"include_hand": True, "include_face": True},
                                      loader_options={"hands": True, "face": True}),
    # DWPose: its YOLOX-L and RTMPose ONNX exports (dwpose.WEIGHTS_REPOS)
    "dwpose": LearnedAnnotator("dwpose", "dwpose", "load_dwpose", _DWPOSE_FILES),
    "dwpose_body": LearnedAnnotator("dwpose", "dwpose", "load_dwpose", _DWPOSE_FILES,
                                    fixed={"include_hand": False, "include_face": False}),
    # Animal Pose: DWPose's YOLOX-L export and the AP-10K RTMPose-m export (animal_pose.WEIGHTS_REPOS)
    "animal_pose": LearnedAnnotator("animal_pose", "animal_pose", "load_animal_pose",
                                    ("animal_pose.DETECTOR_ONNX", "animal_pose.POSE_ONNX")),
    "midas_depth": LearnedAnnotator("midas", "midas_depth", "load_midas", ("midas.MIDAS_WEIGHTS",)),
    "midas_normal": LearnedAnnotator("midas", "midas_normal", "load_midas",
                                     ("midas.MIDAS_WEIGHTS",)),
    "leres": LearnedAnnotator("leres", "leres", "load_leres", ("leres.LERES_WEIGHTS",)),
    "zoe_depth": LearnedAnnotator("zoe", "zoe_depth", "load_zoe", ("zoe.ZOE_WEIGHTS",)),
    "normalbae": LearnedAnnotator("normalbae", "normalbae", "load_normalbae",
                                  ("normalbae.NORMALBAE_WEIGHTS",)),
    # published where comfyui_controlnet_aux fetches it (dsine.DSINE_REPO)
    "dsine": LearnedAnnotator("dsine", "dsine", "load_dsine", ("dsine.DSINE_WEIGHTS",)),
    # published in other repositories (anime_face_segment.WEIGHTS_REPOS); the background removed
    # first by default, as comfyui_controlnet_aux does, or kept, as A1111 does
    "anime_face_segment": LearnedAnnotator("anime_face_segment", "anime_face_segment", "load_anime_face_segment",
                                           ("anime_face_segment.ANIME_FACE_WEIGHTS",
                                            "anime_face_segment.ISNET_WEIGHTS"),
                                           loader_options={"remove_background": True}),
    "anime_face_segment_with_background": LearnedAnnotator(
        "anime_face_segment", "anime_face_segment", "load_anime_face_segment",
        ("anime_face_segment.ANIME_FACE_WEIGHTS",)),
    "manga_line": LearnedAnnotator("manga_line", "manga_line", "load_manga_line",
                                   ("manga_line.MANGA_LINE_WEIGHTS",)),
    "uniformer": LearnedAnnotator("uniformer", "uniformer_segmentation", "load_uniformer",
                                  ("uniformer.UNIFORMER_WEIGHTS",)),
    "oneformer_ade20k": LearnedAnnotator("oneformer", "oneformer_segmentation", "load_oneformer",
                                         ("oneformer.ONEFORMER_ADE20K_WEIGHTS",),
                                         fixed={"dataset": "ade20k"}, loader_options={"dataset": "ade20k"}),
    "oneformer_coco": LearnedAnnotator("oneformer", "oneformer_segmentation", "load_oneformer",
                                       ("oneformer.ONEFORMER_COCO_WEIGHTS",),
                                       fixed={"dataset": "coco"}, loader_options={"dataset": "coco"}),
    # published by the authors (huggingface.co/depth-anything), not by lllyasviel/Annotators
    "depth_anything_v2": LearnedAnnotator("depth_anything", "depth_anything", "load_depth_anything",
                                          ("depth_anything.DEPTH_ANYTHING_V2_LARGE",),
                                          loader_options={"size": "large"}),
    "depth_anything_v2_base": LearnedAnnotator("depth_anything", "depth_anything", "load_depth_anything",
                                               ("depth_anything.DEPTH_ANYTHING_V2_BASE",),
                                               loader_options={"size": "base"}),
    "depth_anything_v2_small": LearnedAnnotator("depth_anything", "depth_anything", "load_depth_anything",
                                                ("depth_anything.DEPTH_ANYTHING_V2_SMALL",),
                                                loader_options={"size": "small"}),
    # V1: published by the authors in a Space (huggingface.co/spaces/LiheYoung/Depth-Anything)
    "depth_anything_v1": LearnedAnnotator("depth_anything", "depth_anything_v1", "load_depth_anything_v1",
                                          ("depth_anything.DEPTH_ANYTHING_V1_LARGE",),
                                          loader_options={"size": "large"}),
    "depth_anything_v1_base": LearnedAnnotator("depth_anything", "depth_anything_v1", "load_depth_anything_v1",
                                               ("depth_anything.DEPTH_ANYTHING_V1_BASE",),
                                               loader_options={"size": "base"}),
    "depth_anything_v1_small": LearnedAnnotator("depth_anything", "depth_anything_v1", "load_depth_anything_v1",
                                                ("depth_anything.DEPTH_ANYTHING_V1_SMALL",),
                                                loader_options={"size": "small"}),
    # published in folders of other repositories (teed.WEIGHTS_REPOS)
    "teed": LearnedAnnotator("teed", "teed", "load_teed", ("teed.TEED_WEIGHTS",)),
    "anyline": LearnedAnnotator("anyline", "anyline", "load_anyline", ("anyline.MTEED_WEIGHTS",)),
    "anyline_lineart_realistic": LearnedAnnotator("anyline", "anyline", "load_anyline",
                                                  ("anyline.MTEED_WEIGHTS", "anyline.LINEART_WEIGHTS"),
                                                  loader_options={"merge_with_lineart": "lineart_realistic"}),
    "anyline_lineart_anime": LearnedAnnotator("anyline", "anyline", "load_anyline",
                                              ("anyline.MTEED_WEIGHTS", "anyline.LINEART_ANIME_WEIGHTS"),
                                              loader_options={"merge_with_lineart": "lineart_anime"}),
    "anyline_manga_line": LearnedAnnotator("anyline", "anyline", "load_anyline",
                                           ("anyline.MTEED_WEIGHTS", "anyline.MANGA_LINE_WEIGHTS"),
                                           loader_options={"merge_with_lineart": "manga_line"}),
}

# What OpenCV can read; anything else is reported and skipped without trying.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Arguments of a learned entry point that the CLI supplies itself (the image, the network).
_LEARNED_POSITIONAL = 2
# ComfyUI's annotator weights folder, relative to its checkout (registered by the pack's nodes).
COMFYUI_ANNOTATORS_DIR = Path("models") / "annotators"
COMFYUI_PATH_VARIABLE = "COMFYUI_PATH"
UINT16_MAX = 65535  # float maps in 0..1 (AnyLine) are written as 16-bit PNGs: v -> round(v x 65535)


class UnavailableAnnotatorError(ImportError):
    """A learned annotator's module is missing or cannot be imported here."""


# --- resolving names --------------------------------------------------------------------------

def _import_annotator_module(name: str) -> ModuleType:
    qualified = f"{__package__}.{name}"
    try:
        return importlib.import_module(qualified)
    except ImportError as error:  # the module itself, or something it needs (e.g. timm)
        raise UnavailableAnnotatorError(f"{qualified} cannot be imported ({error})") from error


def weight_sources(spec: LearnedAnnotator) -> list[tuple[str, str]]:
    """(file name, repository it is published in) of each file `spec` loads, read from the
    modules' own constants and WEIGHTS_REPOS (lllyasviel/Annotators where a module names none)."""
    sources: list[tuple[str, str]] = []
    for dotted in spec.weights:
        module_name, constant = dotted.rsplit(".", 1)
        module = _import_annotator_module(module_name)
        value = getattr(module, constant)
        repos = getattr(module, "WEIGHTS_REPOS", {})
        sources.extend((file, repos.get(file, PUBLISHED_REPO)) for file in ([value] if isinstance(value, str) else value))
    return sources


def weight_files(spec: LearnedAnnotator) -> list[str]:
    """The file names `spec` loads, read from the modules' own constants."""
    return [file for file, _ in weight_sources(spec)]


def learned_entry_points(spec: LearnedAnnotator) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(annotator function, loader) of `spec`."""
    module = _import_annotator_module(spec.module)
    return getattr(module, spec.function), getattr(module, spec.loader)


def annotator_listing() -> str:
    """One line per annotator: its name and the weight files it needs (or why it is missing)."""
    width = max(len(name) for name in [*ANNOTATORS, *LEARNED])
    lines = [f"  {name:<{width}}  (no weights)" for name in sorted(ANNOTATORS)]
    for name in sorted(LEARNED):
        try:
            needs = ", ".join(file if repo == PUBLISHED_REPO else f"{file} ({published_url(repo)})"
                              for file, repo in weight_sources(LEARNED[name]))
        except (UnavailableAnnotatorError, AttributeError) as error:
            needs = f"(not available: {error})"
        lines.append(f"  {name:<{width}}  {needs}")
    return "\n".join(lines)


def unknown_annotator_message(name: str) -> str:
    known = [*ANNOTATORS, *LEARNED]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (f"unknown annotator {name!r}{hint}. Annotators and the weight files they need "
            f"(from {PUBLISHED_AT} where no other address is given; put them in "
            f"--weights-dir):\n{annotator_listing()}")


# --- parameters --------------------------------------------------------------------------------

def parse_value(text: str) -> object:
    """'none' -> None, 'true'/'false' -> bool, then int, then float, else the string itself."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def accepted_parameters(annotator: Callable[..., Any], skip: int = 1,
                        fixed: Iterable[str] = ()) -> list[str]:
    """Keyword arguments a user may set: all but the first `skip` and those the name fixes."""
    names = list(inspect.signature(annotator).parameters)[skip:]
    return [name for name in names if name not in set(fixed)]


def parse_params(pairs: Iterable[str], annotator: Callable[..., Any], skip: int = 1,
                 fixed: Iterable[str] = ()) -> dict[str, object]:
    """['k=v', ...] -> keyword arguments, refusing names the annotator does not take."""
    accepted = accepted_parameters(annotator, skip, fixed)
    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r} is not of the form name=value")
        if name in fixed:
            raise ValueError(f"{name} is set by the annotator's name; choose the variant instead")
        if name not in accepted:
            raise ValueError(
                f"{annotator.__name__} has no parameter {name!r}; it takes {', '.join(accepted)}")
        params[name] = parse_value(value)
    return params


def parse_resolution(text: str) -> int | None:
    """--resolution: a whole number of pixels (>= 64), or 'none' for the image's own size."""
    value = parse_value(text)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < DETECT_MULTIPLE:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a detect resolution; give whole pixels, at least {DETECT_MULTIPLE} "
            "(sides are rounded to a multiple of 64), or 'none' for each image's own size")
    return value


# --- weights folders and device -------------------------------------------------------------------

def default_weights_dirs(environ: Mapping[str, str] = os.environ) -> list[str]:
    """ComfyUI's models/annotators in the checkout $COMFYUI_PATH names; a clear error without one."""
    root = environ.get(COMFYUI_PATH_VARIABLE)
    if not root:
        raise ValueError(
            "learned annotators need their weight files: pass --weights-dir FOLDER (the folder "
            f"holding them, e.g. ComfyUI/{COMFYUI_ANNOTATORS_DIR.as_posix()}), or set "
            f"{COMFYUI_PATH_VARIABLE} to your ComfyUI checkout")
    if not (Path(root) / "folder_paths.py").is_file():
        raise ValueError(
            f"{COMFYUI_PATH_VARIABLE}={root} is not a ComfyUI checkout (no folder_paths.py there); "
            "fix it or pass --weights-dir FOLDER")
    return [str(Path(root) / COMFYUI_ANNOTATORS_DIR)]


def resolve_device(text: str) -> str:
    """'auto' -> cuda when available, else mps, else cpu; anything else must exist here."""
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device {text!r} is not a torch device; use auto, cpu, cuda, cuda:1 "
                         "or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {text}: this PyTorch has no CUDA device; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {text}: MPS is not available here; use --device cpu")
    return text


# --- running -------------------------------------------------------------------------------------

def prepare(
    annotator_name: str,
    params: Mapping[str, object],
    folders: Sequence[str] = (),
    device: str = "cpu",
) -> Callable[[np.ndarray], Any]:
    """image -> result for `annotator_name`, its network (if any) loaded once, here.

    Raises the loader's MissingWeightsError (naming the file and the folders) when a weight
    file is not there.
    """
    if annotator_name in ANNOTATORS:
        function = ANNOTATORS[annotator_name]
        return lambda image: function(image, **params)
    spec = LEARNED[annotator_name]
    function, loader = learned_entry_points(spec)
    network = loader(list(folders), device=device, **spec.loader_options)
    keywords = {**spec.fixed, **params}
    return lambda image: function(image, network, **keywords)


def read_image_rgb(path: Path) -> np.ndarray | None:
    """The file as an RGB(A) array in its own dtype, or None if OpenCV cannot decode it."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def write_map(path: Path, condition_map: np.ndarray) -> None:
    """RGB maps are written as colour PNGs; single-channel maps (any depth PNG holds) as gray;
    float maps in 0..1 (AnyLine's) as 16-bit PNGs, which keep their in-between levels."""
    if np.issubdtype(condition_map.dtype, np.floating):
        condition_map = np.round(np.clip(condition_map, 0.0, 1.0) * UINT16_MAX).astype(np.uint16)
    if condition_map.ndim == 3 and condition_map.shape[2] == 3:
        condition_map = cv2.cvtColor(condition_map, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), condition_map):
        raise OSError(f"could not write {path}")


def _progress(items: list[Path], label: str = "") -> tuple[Iterator[Path], Callable[[str], None]]:
    """(items with a progress display, a print that does not break it): tqdm on stderr when
    installed (it comes with ComfyUI's requirements), else a plain '[i/n] name' counter."""
    try:
        from tqdm import tqdm
    except ImportError:
        def plain() -> Iterator[Path]:
            for index, item in enumerate(items, start=1):
                print(f"[{index}/{len(items)}] {item.name}", file=sys.stderr)
                yield item
        return plain(), print
    bar = tqdm(items, unit="image", desc=label or None)
    return iter(bar), tqdm.write


def run(
    annotator_name: str,
    input_dir: Path,
    output_dir: Path,
    params: Mapping[str, object],
    folders: Sequence[str] = (),
    device: str = "cpu",
) -> int:
    """Annotate every image in `input_dir` (in name order) into `output_dir`; returns the number
    of maps written.

    The network is loaded before the first image (a missing weight file stops the run at once).
    Files that are not images, cannot be decoded, or are refused by the annotator (its
    ValueError message is shown) are skipped, as is a second image with an already used name.
    """
    annotate = prepare(annotator_name, params, folders, device)
    output_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in input_dir.iterdir() if p.is_file())
    items, say = _progress(files, annotator_name)
    written = 0
    writer_of: dict[str, str] = {}  # output name -> input that wrote it
    for path in items:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            say(f"skipping {path.name}: not an image")
            continue
        target = output_dir / f"{path.stem}.png"
        if target.name in writer_of:
            say(f"skipping {path.name}: {writer_of[target.name]} already wrote {target.name}; "
                "rename one of them")
            continue
        image = read_image_rgb(path)
        if image is None:
            say(f"skipping {path.name}: not a readable image")
            continue
        try:
            result = annotate(image)
        except ValueError as error:  # one unusable image should not stop the whole folder
            say(f"skipping {path.name}: {error}")
            continue
        keypoints = None
        if isinstance(result, tuple):  # OpenPose: (map, OpenPose-format keypoints)
            result, keypoints = result
        write_map(target, result)
        if keypoints is not None:
            target.with_suffix(".json").write_text(json.dumps(keypoints))
        writer_of[target.name] = path.name
        written += 1
    say(f"wrote {written} map(s) to {output_dir}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotators.batch",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--annotator", required=True,
                        help="annotator name, e.g. canny, hed_safe, openpose_full (an unknown "
                             "name lists them all with their weight files)")
    parser.add_argument("--input", required=True, type=Path, help="folder of images")
    parser.add_argument("--output", required=True, type=Path, help="folder for the maps (created)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="annotator keyword argument; repeat for several")
    parser.add_argument("--weights-dir", action="append", default=[], metavar="FOLDER",
                        help="folder holding the annotator weight files, searched in order; "
                             "repeat for several (default: $COMFYUI_PATH/models/annotators)")
    parser.add_argument("--resolution", type=parse_resolution, default=argparse.SUPPRESS,
                        metavar="PIXELS",
                        help="detect resolution (short side, >= 64; 'none': each image's own "
                             "size); default: the annotator's (512; AnyLine 1280)")
    parser.add_argument("--device", default="auto",
                        help="torch device for learned annotators: auto (default: cuda, else "
                             "mps, else cpu), cpu, cuda, cuda:1, mps")
    args = parser.parse_args(argv)
    name = args.annotator
    if name not in ANNOTATORS and name not in LEARNED:
        parser.error(unknown_annotator_message(name))
    if not args.input.is_dir():
        parser.error(f"--input {args.input} is not a folder")
    learned = name in LEARNED
    try:
        if learned:
            function, _ = learned_entry_points(LEARNED[name])
            params = parse_params(args.param, function, _LEARNED_POSITIONAL, LEARNED[name].fixed)
            accepted = accepted_parameters(function, _LEARNED_POSITIONAL, LEARNED[name].fixed)
        else:
            params = parse_params(args.param, ANNOTATORS[name])
            accepted = accepted_parameters(ANNOTATORS[name])
        if hasattr(args, "resolution"):
            if "resolution" not in accepted:
                raise ValueError(f"{name} has no detect resolution; leave out --resolution")
            if "resolution" in params:
                raise ValueError("give the resolution once: --resolution or --param resolution=")
            params["resolution"] = args.resolution
        folders = (args.weights_dir or default_weights_dirs()) if learned else []
        device = resolve_device(args.device) if learned else "cpu"
    except (ValueError, UnavailableAnnotatorError) as error:
        parser.error(str(error))
    try:
        run(name, args.input, args.output, params, folders, device)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        # Missing or unusable weight files: the loaders' messages name the file and the fix.
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
