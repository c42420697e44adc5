"""Run one weight-free annotator over a folder of images.

    python -m annotators.batch --annotator canny --input photos/ --output maps/ \
        --param low_threshold=50 --param high_threshold=150

Each readable image becomes `<output>/<name>.png`; other files are skipped with a message.
Images are read with their alpha channel and bit depth (cv2.IMREAD_UNCHANGED), so the shared
input rules apply (alpha on white, 16-bit scaled to 8-bit).
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np

from .binary import binary
from .canny import canny
from .color_grid import color_grid
from .hough import hough_lines
from .normal_from_depth import normal_from_depth
from .scribble import scribble
from .shuffle import content_shuffle
from .tile import tile
from .xdog import xdog_scribble

# Annotators whose only input is one image file (inpaint needs a mask, segmentation a label map).
ANNOTATORS: dict[str, Callable[..., np.ndarray]] = {
    "binary": binary,
    "canny": canny,
    "color_grid": color_grid,
    "hough": hough_lines,
    "normal_from_depth": normal_from_depth,
    "scribble": scribble,
    "shuffle": content_shuffle,
    "tile": tile,
    "xdog": xdog_scribble,
}
# What OpenCV can read; anything else is reported and skipped without trying.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


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


def parse_params(pairs: Iterable[str], annotator: Callable[..., np.ndarray]) -> dict[str, object]:
    """['k=v', ...] -> keyword arguments, refusing names the annotator does not take."""
    accepted = [name for name in inspect.signature(annotator).parameters][1:]  # skip the image
    params: dict[str, object] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r} is not of the form name=value")
        if name not in accepted:
            raise ValueError(
                f"{annotator.__name__} has no parameter {name!r}; it takes {', '.join(accepted)}")
        params[name] = parse_value(value)
    return params


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


def _progress(items: list[Path]):
    """tqdm when installed, else a plain counter."""
    try:
        from tqdm import tqdm
    except ImportError:
        def plain():
            for index, item in enumerate(items, start=1):
                print(f"[{index}/{len(items)}] {item.name}", file=sys.stderr)
                yield item
        return plain(), print
    bar = tqdm(items, unit="image")
    return bar, tqdm.write


def run(annotator_name: str, input_dir: Path, output_dir: Path, params: dict[str, object]) -> int:
    """Annotate every image in `input_dir` into `output_dir`; returns the number written.

    Files that are not images, cannot be decoded, or are refused by the annotator (its
    ValueError message is shown) are skipped.
    """
    annotator = ANNOTATORS[annotator_name]
    output_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in input_dir.iterdir() if p.is_file())
    items, say = _progress(files)
    written = 0
    for path in items:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            say(f"skipping {path.name}: not an image")
            continue
        image = read_image_rgb(path)
        if image is None:
            say(f"skipping {path.name}: not a readable image")
            continue
        try:
            result = annotator(image, **params)
        except ValueError as error:  # one unusable image should not stop the whole folder
            say(f"skipping {path.name}: {error}")
            continue
        cv2.imwrite(str(output_dir / f"{path.stem}.png"), cv2.cvtColor(result, cv2.COLOR_RGB2BGR))
        written += 1
    say(f"wrote {written} map(s) to {output_dir}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m annotators.batch",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--annotator", required=True, choices=sorted(ANNOTATORS))
    parser.add_argument("--input", required=True, type=Path, help="folder of images")
    parser.add_argument("--output", required=True, type=Path, help="folder for the maps (created)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="annotator keyword argument; repeat for several")
    args = parser.parse_args(argv)
    if not args.input.is_dir():
        parser.error(f"--input {args.input} is not a folder")
    try:
        params = parse_params(args.param, ANNOTATORS[args.annotator])
    except ValueError as error:
        parser.error(str(error))
    run(args.annotator, args.input, args.output, params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
