"""Learned annotators (random weights) on awkward inputs: every one either gives a uint8 HxWx3
map (AnyLine: float32 in 0..1, see annotators/anyline.py) at the input's size, equal to its map of
the same picture as plain contiguous uint8 RGB, or refuses with the shared message that names the
problem and the fix (annotators/image.py).
Also the folder CLI on a folder of mixed sizes and formats.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import cv2
import numpy as np
import pytest
from skimage import data

from annotators.batch import main, read_image_rgb
from annotators.lineart import LINEART_WEIGHTS, lineart, load_lineart
from annotators.networks_common import pad_to_multiple
from tests.annotators.random_learned import (DEPTH_ANYTHING_TEST_GRID, DEPTH_ANYTHING_TEST_WIDTHS, ZOE_TEST_WIDTHS,
                                             random_network, random_openpose, save_published)

DETECT = 64  # the smallest detect resolution: every network stays cheap
PHOTO = np.ascontiguousarray(data.astronaut()[:384:8, ::8])  # 48 x 64 RGB uint8
GRAY = np.ascontiguousarray(PHOTO[:, :, 1])
ALPHA_LEVELS = (0, 128, 255)  # with these, compositing on white has no rounding ties


def optional(module_name: str) -> bool:
    """Whether annotators/<module_name>.py is there yet (others are writing some of them)."""
    try:
        importlib.import_module(f"annotators.{module_name}")
    except ModuleNotFoundError as missing:
        if missing.name == f"annotators.{module_name}":
            return False
        raise
    return True


def entry(module_name: str, function: str, **keywords: Any) -> Callable[..., np.ndarray]:
    def call(image: np.ndarray, network: Any, resolution: int | None) -> np.ndarray:
        module = importlib.import_module(f"annotators.{module_name}")
        return getattr(module, function)(image, network, resolution, **keywords)
    return call


def openpose_map(image: np.ndarray, networks: Any, resolution: int | None) -> np.ndarray:
    from annotators.openpose import openpose

    pose_map, keypoints = openpose(image, networks, resolution)
    # The keypoints are in the input's pixels too.
    assert (keypoints["canvas_height"], keypoints["canvas_width"]) == image.shape[:2]
    return pose_map


# UniFormer rescales every image to a 512 short side (mmseg's test pipeline) whatever the detect
# resolution: ~15 s a call on this CPU. Its limits are shrunk here (same code path, smaller
# numbers) because these tests are about the input, not about the network's size.
SMALL_UNIFORMER_LIMITS = (256, 64)


def uniformer_map(image: np.ndarray, network: Any, resolution: int | None) -> np.ndarray:
    module = importlib.import_module("annotators.uniformer")
    with mock.patch.object(module, "RESCALE_LIMITS", SMALL_UNIFORMER_LIMITS):
        return module.uniformer_segmentation(image, network, resolution)


# Depth Anything V2 and ZoeDepth are built narrow (RANDOM_NETWORKS) and run on a smaller network
# input than their 518 and 384 x 512 (same code path, smaller numbers): at full size a map takes
# seconds here. 70 is 5 patches of 14; 96 x 128 keeps ZoeDepth's 3:4 in multiples of 32.
SMALL_DEPTH_ANYTHING_INPUT = 70
SMALL_ZOE_INPUT = (96, 128)


# name -> (network module, loader, call(image, network, resolution))
ANNOTATORS: dict[str, tuple[str, str, Callable[..., np.ndarray]]] = {
    "hed": ("hed", "load_hed", entry("hed", "hed")),
    "hed_scribble": ("hed", "load_hed", entry("hed", "hed", scribble=True)),
    "pidinet_safe": ("pidinet", "load_pidinet", entry("pidinet", "pidinet", safe=True)),
    "teed": ("teed", "load_teed", entry("teed", "teed")),
    "mlsd": ("mlsd", "load_mlsd", entry("mlsd", "mlsd")),
    "lineart": ("lineart", "load_lineart", entry("lineart", "lineart")),
    "lineart_anime": ("lineart_anime", "load_lineart_anime",
                      entry("lineart_anime", "lineart_anime")),
    "openpose": ("openpose", "load_openpose", openpose_map),
    "midas_depth": ("midas", "load_midas", entry("midas", "midas_depth")),
    "midas_normal": ("midas", "load_midas", entry("midas", "midas_normal")),
    "leres": ("leres", "load_leres", entry("leres", "leres")),
    "normalbae": ("normalbae", "load_normalbae", entry("normalbae", "normalbae")),
    "dsine": ("dsine", "load_dsine", entry("dsine", "dsine")),
    "anime_face_segment": ("anime_face_segment", "load_anime_face_segment",
                           entry("anime_face_segment", "anime_face_segment")),
    "manga_line": ("manga_line", "load_manga_line", entry("manga_line", "manga_line")),
    "uniformer": ("uniformer", "load_uniformer", uniformer_map),
    "depth_anything": ("depth_anything", "load_depth_anything",
                       entry("depth_anything", "depth_anything", input_size=SMALL_DEPTH_ANYTHING_INPUT)),
    "depth_anything_v1": ("depth_anything", "load_depth_anything_v1",
                          entry("depth_anything", "depth_anything_v1", input_size=SMALL_DEPTH_ANYTHING_INPUT)),
    "zoe_depth": ("zoe", "load_zoe", entry("zoe", "zoe_depth", input_size=SMALL_ZOE_INPUT)),
    "anyline": ("anyline", "load_anyline", entry("anyline", "anyline")),
}
# Cheap enough (< 0.2 s a map here) to try every input kind one by one, which says which one
# broke; the others get the inputs that combine several kinds at once.
CHEAP = ("hed", "hed_scribble", "pidinet_safe", "teed", "mlsd", "lineart", "depth_anything", "depth_anything_v1",
         "anyline")
# AnyLine's map is a blend of 8-bit maps, kept in float32; the others give uint8.
MAP_DTYPES = {"anyline": np.float32}
# Annotators that refuse an image below a side length at its own size (image.check_min_side):
# (the name they give, that length). ZoeDepth's reflect padding needs 5 pixels (annotators/zoe.py).
MIN_SIDES = {"zoe_depth": ("ZoeDepth", 5)}


def names(only: tuple[str, ...] | None = None) -> list:
    return [pytest.param(name, marks=pytest.mark.skipif(
        not optional(module), reason=f"annotators/{module}.py is not written yet"))
        for name, (module, _, _) in ANNOTATORS.items() if only is None or name in only]


def anyline_networks() -> Any:
    from annotators.anyline import AnyLineNetworks

    # Merged with Standard line art (its default), which is not learned: MTEED is its network.
    return AnyLineNetworks(random_network("teed", "load_teed", seed=0), "lineart_standard")


def narrow_depth_anything(loader: str) -> Any:
    from annotators.depth_anything_network import EncoderSize, last_blocks_readout

    # the tiny encoder test_depth_anything.py uses (its position embeddings are resized to each
    # input's grid); V1 reads its last four blocks
    tiny = EncoderSize("tiny", **DEPTH_ANYTHING_TEST_WIDTHS)
    if loader == "load_depth_anything_v1":
        tiny = last_blocks_readout(tiny)
    return random_network("depth_anything", loader, 0, tiny, DEPTH_ANYTHING_TEST_GRID)


def narrow_zoe() -> Any:
    from annotators.zoe_network import ZoeSize

    return random_network("zoe", "load_zoe", 0, ZoeSize(**ZOE_TEST_WIDTHS))


# name -> its networks, where they are not random_network(module, loader) at the published widths
RANDOM_NETWORKS: dict[str, Callable[[], Any]] = {
    "openpose": lambda: random_openpose(seed=0),
    "anyline": anyline_networks,
    "depth_anything": lambda: narrow_depth_anything("load_depth_anything"),
    "depth_anything_v1": lambda: narrow_depth_anything("load_depth_anything_v1"),
    "zoe_depth": narrow_zoe,
}


class Annotator:
    """One annotator with its random network; maps of the same input are computed once."""

    def __init__(self, name: str):
        module, loader, self.call = ANNOTATORS[name]
        build = RANDOM_NETWORKS.get(name, lambda: random_network(module, loader, seed=0))
        self.network = build()
        self.dtype = MAP_DTYPES.get(name, np.uint8)
        self._maps: dict[int, np.ndarray] = {}

    def __call__(self, image: np.ndarray, resolution: int | None = DETECT) -> np.ndarray:
        return self.call(image, self.network, resolution)

    def map_of(self, rgb: np.ndarray) -> np.ndarray:
        """The map of a contiguous uint8 RGB image (one of this module's constants)."""
        if id(rgb) not in self._maps:
            self._maps[id(rgb)] = self(rgb)
        return self._maps[id(rgb)]


@pytest.fixture(scope="module")
def annotators() -> dict[str, Annotator]:
    return {}


@pytest.fixture
def annotator(annotators: dict[str, Annotator], request: pytest.FixtureRequest) -> Annotator:
    name = request.node.callspec.params["name"]
    if name not in annotators:
        annotators[name] = Annotator(name)
    return annotators[name]


def composite_on_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Written out independently of image.hwc3: colour * a + 255 * (1 - a), rounded."""
    a = alpha.astype(np.float64)[:, :, None] / 255.0
    return np.round(colour.astype(np.float64) * a + 255.0 * (1.0 - a)).astype(np.uint8)


def alpha_blocks(height: int, width: int) -> np.ndarray:
    """Columns of opaque, half and fully transparent pixels."""
    levels = np.array(ALPHA_LEVELS, np.uint8)
    return np.broadcast_to(levels[np.arange(width) * len(levels) // width], (height, width)).copy()


ALPHA = alpha_blocks(*PHOTO.shape[:2])
GRAY3 = np.dstack([GRAY, GRAY, GRAY])
PHOTO_ON_WHITE = composite_on_white(PHOTO, ALPHA)
GRAY_ON_WHITE = composite_on_white(GRAY3, ALPHA)
MIRRORED = np.ascontiguousarray(PHOTO[:, ::-1])
MIRRORED_ON_WHITE = composite_on_white(MIRRORED, ALPHA[:, ::-1])
LARGE = cv2.resize(PHOTO, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
LARGE_GRAY = cv2.resize(GRAY, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)

# case -> (input, the same picture as contiguous uint8 RGB)
SAME_PICTURE = {
    "gray HxW": (GRAY, GRAY3),
    "gray HxWx1": (GRAY[:, :, None], GRAY3),
    "gray + alpha": (np.dstack([GRAY, ALPHA]), GRAY_ON_WHITE),
    "RGBA": (np.dstack([PHOTO, ALPHA]), PHOTO_ON_WHITE),
    "uint16": (PHOTO.astype(np.uint16) * 257, PHOTO),            # 8 -> 16 bit widening
    "float32 0..1": (PHOTO.astype(np.float32) / 255.0, PHOTO),
    "float64 0..1": (PHOTO / 255.0, PHOTO),
    "strided view": (LARGE[::2, ::2], PHOTO),                    # every other pixel
    "mirrored view": (PHOTO[:, ::-1], MIRRORED),
    "BGR flipped to RGB view": (np.ascontiguousarray(PHOTO[:, :, ::-1])[:, :, ::-1], PHOTO),
    "Fortran order": (np.asfortranarray(PHOTO), PHOTO),
}
# Several kinds in one input each, so the expensive annotators see all of them in three maps.
COMBINED = {
    "RGBA uint16, Fortran order, mirrored": (
        np.asfortranarray(np.dstack([PHOTO, ALPHA]).astype(np.uint16) * 257)[:, ::-1],
        MIRRORED_ON_WHITE),
    "gray HxWx1 float32 0..1, strided view": (
        (LARGE_GRAY.astype(np.float32) / 255.0)[::2, ::2, None], GRAY3),
    "gray HxW uint16": (GRAY.astype(np.uint16) * 257, GRAY3),
}


def assert_same_map(annotator: Annotator, image: np.ndarray, as_rgb: np.ndarray) -> None:
    assert not (image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
                and image.flags.c_contiguous)  # each case really is something else
    got = annotator(image)
    assert got.dtype == annotator.dtype and got.shape == PHOTO.shape
    np.testing.assert_array_equal(got, annotator.map_of(as_rgb))


@pytest.mark.parametrize("case", list(SAME_PICTURE))
@pytest.mark.parametrize("name", names(CHEAP))
def test_each_other_layout_of_the_same_picture_gives_the_same_map(annotator, name, case):
    assert_same_map(annotator, *SAME_PICTURE[case])


@pytest.mark.parametrize("case", list(COMBINED))
@pytest.mark.parametrize("name", names())
def test_combined_layouts_of_the_same_picture_give_the_same_map(annotator, name, case):
    assert_same_map(annotator, *COMBINED[case])


TINY = [
    ((17, 23), DETECT),  # enlarged to the detect size and brought back
    ((17, 23), None),    # run at its own size
    ((5, 7), None),      # below HED's 16 and PiDiNet's 8 pixels: padded for the network
    ((1, 1), None),      # (the expensive networks at their own size: this one only)
]


def below_min_side(name: str, size: tuple[int, int], resolution: int | None) -> bool:
    return resolution is None and name in MIN_SIDES and min(size) < MIN_SIDES[name][1]


def tiny_cases(refused: bool) -> list:
    return [pytest.param(*name.values, size, resolution, marks=name.marks)
            for name in names() for size, resolution in TINY
            if (name.values[0] in CHEAP or resolution is not None or size == (1, 1))
            and below_min_side(name.values[0], size, resolution) == refused]


@pytest.mark.parametrize("name, size, resolution", tiny_cases(refused=False))
def test_tiny_images_work(annotator, name, size, resolution):
    image = np.ascontiguousarray(PHOTO[:size[0], :size[1]])
    got = annotator(image, resolution)
    assert got.dtype == annotator.dtype and got.shape == size + (3,)


@pytest.mark.parametrize("name, size, resolution", tiny_cases(refused=True))
def test_images_below_a_networks_minimum_are_refused_with_the_fix(annotator, name, size, resolution):
    who, min_side = MIN_SIDES[name]
    with pytest.raises(ValueError) as refused:
        annotator(np.ascontiguousarray(PHOTO[:size[0], :size[1]]), resolution)
    assert str(refused.value) == (f"{who} needs an image of at least {min_side}x{min_side} pixels, got "
                                  f"{size[0]}x{size[1]}; upscale it or pass a detect resolution")


@pytest.mark.parametrize("name", names())
def test_huge_image_at_a_low_detect_resolution(annotator, name):
    huge = cv2.resize(PHOTO, (3000, 4000), interpolation=cv2.INTER_NEAREST)
    got = annotator(huge, DETECT)
    assert got.dtype == annotator.dtype and got.shape == (4000, 3000, 3)


FLOAT_255 = PHOTO.astype(np.float32)
FLOAT_255[0, 0] = 255.0  # so the reported range is exactly 0..255
FLOAT_255[0, 1] = 0.0
WITH_NAN = PHOTO / 255.0
WITH_NAN[3, 4] = np.nan

REFUSED = {
    "float in 0..255": (FLOAT_255, ValueError,
                        "float image values must lie in 0..1, found 0..255; divide 0..255 data "
                        "by 255 first"),
    "float with NaN": (WITH_NAN, ValueError,
                       "float image contains NaN or infinity; replace them first (np.nan_to_num)"),
    "int64": (PHOTO.astype(np.int64), ValueError,
              "image dtype int64 is not supported; use uint8 (0..255), uint16 (0..65535), bool, "
              "or float (0..1)"),
    "a batch": (PHOTO[None], ValueError,
                "image must be HxW or HxWxC, got 4 dimensions (shape (1, 48, 64, 3)); pass one "
                "image at a time, e.g. batch[0]"),
    "5 channels": (np.dstack([PHOTO, PHOTO[:, :, :2]]), ValueError,
                   "image must have 1, 2, 3 or 4 channels, got 5 (shape (48, 64, 5)); pass gray, "
                   "gray+alpha, RGB or RGBA"),
    "empty": (PHOTO[:0], ValueError,
              "image is empty (shape (0, 64, 3)); pass an image with at least one pixel"),
    "a list": (PHOTO.tolist(), TypeError,
               "image must be a numpy array (HxWxC), got list; convert it with np.asarray(...)"),
    "over the side limit": (np.zeros((16385, 2, 3), np.uint8), ValueError,
                            "image is 16385x2, over the 16384-pixel side limit; downscale it first"),
}


@pytest.mark.parametrize("case", list(REFUSED))
@pytest.mark.parametrize("name", names())
def test_unusable_input_is_refused_with_the_fix(annotator, name, case):
    image, error, message = REFUSED[case]
    with pytest.raises(error) as refused:
        annotator(image)
    assert str(refused.value) == message


def test_padding_for_small_networks():
    image = np.arange(2 * 3, dtype=np.uint8).reshape(2, 3)
    # Independently: the last row / column repeated out to the size asked for.
    rows = image[[0, 1, 1, 1, 1, 1, 1, 1]]
    np.testing.assert_array_equal(pad_to_multiple(image, 4, min_side=8),
                                  rows[:, [0, 1, 2, 2, 2, 2, 2, 2]])
    assert pad_to_multiple(image, 4, min_side=5).shape == (8, 8)  # 5 rounded up to 8
    assert pad_to_multiple(image, 1, min_side=2).shape == (2, 3)
    photo = PHOTO[:40, :60]
    assert pad_to_multiple(photo, 4) is photo  # a no-op where nothing is missing


# --- the folder CLI on mixed sizes ----------------------------------------------------------------

def test_batch_of_mixed_sizes_maps_each_image_at_its_own_size(tmp_path: Path):
    source = tmp_path / "mixed"
    source.mkdir()
    photo = data.chelsea()  # 300 x 451
    images = {
        "wide.png": photo[::3, ::2],                                   # 100 x 226 RGB
        "tall.jpg": np.ascontiguousarray(photo[::2, ::6].swapaxes(0, 1)),  # 76 x 150
        "tiny.png": photo[:17, :23],                                   # below every network
        "gray.png": data.camera()[::6, ::6],                           # 86 x 86, one channel
        "rgba.png": np.dstack([photo[:64, :90], alpha_blocks(64, 90)]),
        "deep.png": (photo[:90, :70].astype(np.uint16) * 257),         # 16-bit
    }
    for file_name, image in images.items():
        code = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}.get(image.shape[-1] if image.ndim == 3 else 0)
        assert cv2.imwrite(str(source / file_name), image if code is None else cv2.cvtColor(image, code))
    weights = tmp_path / "weights"
    save_published(random_network("lineart", "load_lineart", seed=3), weights, LINEART_WEIGHTS)
    out = tmp_path / "lines"
    assert main(["--annotator", "lineart", "--input", str(source), "--output", str(out),
                 "--weights-dir", str(weights), "--resolution", str(DETECT),
                 "--device", "cpu"]) == 0
    network = load_lineart([str(weights)])
    for file_name, image in images.items():
        written = cv2.cvtColor(cv2.imread(str(out / f"{Path(file_name).stem}.png")),
                               cv2.COLOR_BGR2RGB)
        assert written.shape == image.shape[:2] + (3,), file_name
        decoded = read_image_rgb(source / file_name)  # the JPEG as decoded, not as encoded
        np.testing.assert_array_equal(written, lineart(decoded, network, DETECT), file_name)
