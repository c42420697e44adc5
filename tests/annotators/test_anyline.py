"""AnyLine against a write-up of comfyui_controlnet_aux's node (node_wrappers/anyline.py,
get_anyline, per image) built from controlnet-aux 0.0.10's own parts: TEEDdetector for the MTEED
map, LineartStandardDetector / LineartDetector / LineartAnimeDetector for the line art,
AnylineDetector's get_intensity_mask and combine_layers (the node's two functions, the same
code), and scikit-image's remove_small_objects on the three-channel mask as the node calls it.
All on float maps in 0..1, as the node works; compared exactly (float32, bit for bit).

The small-piece removal is also checked on its own against an independent breadth-first flood
fill (any dimension, scikit-image's neighbourhoods), and against scikit-image where it imports.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import warnings
from collections import deque

import cv2
import numpy as np
import pytest
import torch
from skimage import data

aux_ted = pytest.importorskip("controlnet_aux.teed.ted")
aux_teed = pytest.importorskip("controlnet_aux.teed")
aux_standard = pytest.importorskip("controlnet_aux.lineart_standard")
aux_lineart = pytest.importorskip("controlnet_aux.lineart")
aux_anime = pytest.importorskip("controlnet_aux.lineart_anime")
aux_anyline = pytest.importorskip("controlnet_aux.anyline")

from annotators.anyline import (AnyLineNetworks, anyline, clean_line_art, load_anyline,  # noqa: E402
                                remove_small_components, screen_blend)
from annotators.lineart import LINEART_WEIGHTS, LineartNetwork  # noqa: E402
from annotators.lineart_anime import LINEART_ANIME_WEIGHTS  # noqa: E402
from annotators.manga_line import MANGA_LINE_WEIGHTS, manga_line  # noqa: E402
from annotators.teed import MTEED_WEIGHTS, TEEDNetwork  # noqa: E402
from tests.annotators.parity import ChannelsFirst  # noqa: E402
from tests.annotators.random_learned import adjust, random_network, random_state_dict, save_published  # noqa: E402

try:
    from skimage import morphology
except ImportError:  # pragma: no cover - scikit-image is a test requirement, but the flood fill stands alone
    morphology = None


def skimage_remove_small_objects(mask: np.ndarray, min_size: int, connectivity: int) -> np.ndarray:
    """scikit-image's remove_small_objects(mask, min_size, connectivity) with its documented
    meaning, pieces smaller than min_size removed. 0.26 deprecated min_size for max_size
    ("smaller than or equal to") and passes a min_size on as max_size unchanged, so there it also
    removes the pieces of exactly min_size (scikit-image issue 8001); max_size = min_size - 1 is
    the documented meaning."""
    if "max_size" in inspect.signature(morphology.remove_small_objects).parameters:
        return morphology.remove_small_objects(mask, max_size=min_size - 1, connectivity=connectivity)
    return morphology.remove_small_objects(mask, min_size=min_size, connectivity=connectivity)

DETECT = 128
PHOTO = cv2.resize(data.astronaut(), (DETECT, DETECT), interpolation=cv2.INTER_AREA)   # at the detect size
COFFEE = cv2.resize(data.coffee(), (192, DETECT), interpolation=cv2.INTER_AREA)        # 128 x 192, too
PHOTO_256 = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
MERGES = ("lineart_standard", "lineart_realistic", "lineart_anime", "manga_line")
# (lower bound, upper bound, min size, connectivity): the node's defaults, then others.
SETTINGS = [(0.0, 1.0, 36, 1), (0.2, 0.9, 100, 2), (0.0, 1.0, 1, 1), (0.1, 1.0, 37, 2)]
AUX = aux_anyline.AnylineDetector(None)  # only its two mask/blend methods are used


def oracle_anime() -> torch.nn.Module:
    """controlnet-aux's anime line-art U-Net as its detector builds it (as test_learned_edges.py)."""
    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    return aux_anime.UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)


# --- the removal of small pieces -------------------------------------------------------------------

def flood_fill_remove(mask: np.ndarray, min_size: int, connectivity: int) -> np.ndarray:
    """Pieces of fewer than min_size pixels removed, by breadth-first search: neighbours are the
    offsets in {-1, 0, 1}^n with 1..connectivity nonzero coordinates (scikit-image's rule)."""
    offsets = [d for d in itertools.product((-1, 0, 1), repeat=mask.ndim) if 0 < np.count_nonzero(d) <= connectivity]
    kept = np.zeros_like(mask, dtype=bool)
    seen = np.zeros_like(mask, dtype=bool)
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        piece, queue = [], deque([start])
        while queue:
            point = queue.popleft()
            piece.append(point)
            for offset in offsets:
                near = tuple(p + o for p, o in zip(point, offset))
                if all(0 <= n < s for n, s in zip(near, mask.shape)) and mask[near] and not seen[near]:
                    seen[near] = True
                    queue.append(near)
        if len(piece) >= min_size:
            for point in piece:
                kept[point] = True
    return kept


def random_masks() -> list[np.ndarray]:
    generator = np.random.default_rng(5)
    return [generator.random((30, 40)) < density for density in (0.2, 0.35, 0.5)]


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("min_size", [1, 2, 3, 5, 12, 13])
def test_remove_small_components_equals_a_flood_fill(min_size, connectivity):
    kept = removed = 0
    for mask in random_masks():
        expected = flood_fill_remove(mask, min_size, connectivity)
        got = remove_small_components(mask, min_size, connectivity)
        assert got.dtype == bool
        np.testing.assert_array_equal(got, expected)
        kept, removed = kept + expected.sum(), removed + (mask & ~expected).sum()
    assert kept > 0 and (removed > 0 or min_size == 1)  # pieces on both sides of the size


@pytest.mark.skipif(morphology is None, reason="scikit-image is not importable")
@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("min_size", [2, 5, 12, 13])
def test_remove_small_components_equals_scikit_image(min_size, connectivity):
    for mask in random_masks():
        expected = skimage_remove_small_objects(mask, min_size, connectivity)
        np.testing.assert_array_equal(remove_small_components(mask, min_size, connectivity), expected)


def line_art_levels() -> np.ndarray:
    """A float32 line-art map in 0..1 (8-bit levels), sparse, with pieces of every size."""
    generator = np.random.default_rng(9)
    levels = generator.integers(1, 256, size=(30, 40)) * (generator.random((30, 40)) < 0.3)
    return levels.astype(np.float32) / 255.0


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize("min_size", [1, 2, 3, 4, 35, 36, 37])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (0.3, 0.8)])
def test_cleaning_counts_pieces_as_the_peers_three_channel_mask(bounds, min_size, connectivity):
    """The peer's steps on the gray map repeated in three channels (each piece 3 deep, so n
    pixels count 3n), by the flood fill in three dimensions and, where it imports, by
    scikit-image, as the node calls it."""
    line = line_art_levels()
    masked = AUX.get_intensity_mask(np.repeat(line[:, :, None], 3, axis=2), *bounds)
    removal = [flood_fill_remove] + ([skimage_remove_small_objects] if morphology is not None else [])
    got = clean_line_art(line, *bounds, min_size, connectivity)
    assert got.dtype == np.float32
    for remove in removal:
        kept = remove(masked.astype(bool), min_size, connectivity)
        expected = masked * kept
        for channel in range(3):
            np.testing.assert_array_equal(got, expected[:, :, channel])


def test_screen_blend_is_the_peers_combine_layers():
    generator = np.random.default_rng(2)
    edges = generator.integers(0, 256, (20, 30)).astype(np.float32) / 255.0
    line = (generator.integers(0, 256, (20, 30)) * (generator.random((20, 30)) < 0.5)).astype(np.float32) / 255.0
    expected = AUX.combine_layers(np.repeat(edges[:, :, None], 3, axis=2), np.repeat(line[:, :, None], 3, axis=2))
    got = screen_blend(edges, line)
    assert got.dtype == np.float32
    for channel in range(3):
        np.testing.assert_array_equal(got, expected[:, :, channel])
    # where there is line art, both layers show: brighter than either
    lined = line > 0
    assert np.all(got[lined] >= np.maximum(edges, line)[lined])


# --- the whole map against the node's write-up --------------------------------------------------

def teed_weights(seed: int) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        template = aux_ted.TED().state_dict()
    return adjust("teed", random_state_dict(template, seed))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """MTEED and the three line-art networks with random weights, under the published names (the
    oracles' key layouts: controlnet-aux's TED, Generator and anime U-Net)."""
    path = tmp_path_factory.mktemp("annotators")
    torch.save(teed_weights(3), path / MTEED_WEIGHTS)
    generator = aux_lineart.Generator(3, 1, 3)
    generator.load_state_dict(random_state_dict(generator.state_dict(), 4))
    torch.save(generator.state_dict(), path / LINEART_WEIGHTS)
    anime = oracle_anime()
    anime.load_state_dict(random_state_dict(anime.state_dict(), 5))
    torch.save(anime.state_dict(), path / LINEART_ANIME_WEIGHTS)
    save_published(random_network("manga_line", "load_manga_line", seed=6), path, MANGA_LINE_WEIGHTS)
    return path


@pytest.fixture(scope="module")
def oracles(folder):
    """The oracle networks holding the saved weights (read back from the files)."""
    ted = aux_ted.TED()
    ted.load_state_dict(torch.load(folder / MTEED_WEIGHTS), strict=True)
    generator = aux_lineart.Generator(3, 1, 3)
    generator.load_state_dict(torch.load(folder / LINEART_WEIGHTS), strict=True)
    anime = oracle_anime()
    anime.load_state_dict(torch.load(folder / LINEART_ANIME_WEIGHTS), strict=True)
    return {"ted": ted.eval(), "lineart": generator.eval(), "anime": anime.eval()}


@pytest.fixture(scope="module")
def bundles(folder, oracles):
    """merge choice -> (our networks, loaded by load_anyline; the same with the oracle's line-art
    network fed channels-first, whose line maps are then the oracle detector's to the bit)."""
    result = {}
    for merge in MERGES:
        ours = load_anyline([str(folder)], merge_with_lineart=merge)
        exact = {"lineart_realistic": ChannelsFirst(oracles["lineart"]),
                 "lineart_anime": ChannelsFirst(oracles["anime"])}.get(merge, ours.line_art)
        result[merge] = (ours, AnyLineNetworks(ours.mteed, merge, exact))
    return result


def oracle_line_art(merge: str, rgb: np.ndarray, oracles, bundles) -> np.ndarray:
    size = min(rgb.shape[:2])
    if merge == "lineart_standard":  # get_anyline: guassian_sigma=2, intensity_threshold=3
        return aux_standard.LineartStandardDetector()(rgb, guassian_sigma=2, intensity_threshold=3,
                                                      detect_resolution=size, output_type="np")
    if merge == "lineart_realistic":
        return aux_lineart.LineartDetector(oracles["lineart"], oracles["lineart"])(
            rgb, detect_resolution=size, image_resolution=size, output_type="np")
    if merge == "lineart_anime":
        return aux_anime.LineartAnimeDetector(oracles["anime"])(
            rgb, detect_resolution=size, image_resolution=size, output_type="np")
    # controlnet-aux 0.0.10 has no manga line: our own annotator (tests/annotators/test_manga_line.py)
    return manga_line(rgb, bundles["manga_line"][0].line_art, resolution=None)


def aux_anyline_node(rgb, line_uint8, ted, lower, upper, min_size, connectivity) -> tuple[np.ndarray, np.ndarray]:
    """get_anyline for one image already at the detect size: common_annotator_call's uint8 / 255,
    then the node's own lines. Also returns the MTEED layer alone."""
    mteed = aux_teed.TEEDdetector(ted)(rgb, detect_resolution=min(rgb.shape[:2]), output_type="np")
    mteed = mteed.astype(np.float32) / 255.0
    line = line_uint8.astype(np.float32) / 255.0
    masked = AUX.get_intensity_mask(line, lower_bound=lower, upper_bound=upper)
    cleaned = skimage_remove_small_objects(masked.astype(bool), min_size, connectivity)
    return AUX.combine_layers(mteed, masked * cleaned), mteed


@pytest.mark.skipif(morphology is None, reason="the node's write-up calls scikit-image")
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("merge", MERGES)
def test_map_equals_the_nodes_write_up(bundles, oracles, merge, settings):
    for rgb in (PHOTO, COFFEE):
        line = oracle_line_art(merge, rgb, oracles, bundles)
        expected, mteed = aux_anyline_node(rgb, line, oracles["ted"], *settings)
        got = anyline(rgb, bundles[merge][1], DETECT, *settings)
        assert got.dtype == np.float32 and got.shape == expected.shape == rgb.shape
        np.testing.assert_array_equal(got, expected)
        # Not degenerate: line art was blended in, except where the random manga network's few
        # lines all fall outside the bounds 0.2..0.9; on the Standard line art (sparse, as on a
        # real photo) the blend made levels between the 8-bit ones and the cleaning dropped
        # pieces and kept some.
        lower, upper, min_size, _ = settings
        gray = line[:, :, 0].astype(np.float32) / 255
        kept = np.count_nonzero(clean_line_art(gray, *settings))
        if kept:
            assert not np.array_equal(expected, mteed)
        else:
            assert merge == "manga_line" and lower > 0
        if merge == "lineart_standard":
            assert np.any(np.abs(expected * 255 - np.round(expected * 255)) > 1e-3)
            if min_size > 1:
                assert 0 < kept < np.count_nonzero((gray >= lower) & (gray <= upper) & (gray > 0))


def test_our_loaded_line_art_networks_hold_the_files_weights(bundles, oracles):
    """The bundles' own networks (channels-last, not bit-equal) read the saved files: same weights."""
    ours = bundles["lineart_realistic"][0].line_art
    assert isinstance(ours, LineartNetwork)
    expected = oracles["lineart"].state_dict()
    assert all(torch.equal(ours.state_dict()[key], value) for key, value in expected.items())
    ted = bundles["lineart_standard"][0].mteed
    assert isinstance(ted, TEEDNetwork)
    assert all(torch.equal(ted.state_dict()[key], value) for key, value in oracles["ted"].state_dict().items())
    assert bundles["lineart_standard"][0].line_art is None


@pytest.mark.skipif(morphology is None, reason="the node's write-up calls scikit-image")
def test_detect_resolution_resizes_first_and_brings_the_float_map_back(bundles, oracles):
    small = cv2.resize(PHOTO_256, (DETECT, DETECT), interpolation=cv2.INTER_AREA)  # = resize_for_detection
    line = oracle_line_art("lineart_standard", small, oracles, bundles)
    expected = cv2.resize(aux_anyline_node(small, line, oracles["ted"], *SETTINGS[0])[0], (256, 256),
                          interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(anyline(PHOTO_256, bundles["lineart_standard"][1], DETECT), expected)


def test_defaults_are_the_nodes():
    """comfyui_controlnet_aux's AnyLine inputs: resolution 1280, bounds 0..1, 36, connectivity 1,
    Standard line art."""
    defaults = {name: p.default for name, p in inspect.signature(anyline).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"resolution": 1280, "lineart_lower_bound": 0.0, "lineart_upper_bound": 1.0,
                        "object_min_size": 36, "object_connectivity": 1}
    assert inspect.signature(load_anyline).parameters["merge_with_lineart"].default == "lineart_standard"


# --- refusals ------------------------------------------------------------------------------------

def test_connectivity_must_be_1_or_2(bundles):
    with pytest.raises(ValueError) as error:
        anyline(PHOTO, bundles["lineart_standard"][0], DETECT, object_connectivity=3)
    assert str(error.value) == "object_connectivity must be 1 (4 neighbours) or 2 (8 neighbours), got 3"


def test_unknown_merge_is_refused(folder):
    with pytest.raises(ValueError) as error:
        load_anyline([str(folder)], merge_with_lineart="lineart_realisitic")
    assert str(error.value) == ("merge_with_lineart must be one of lineart_standard, lineart_realistic, "
                                "lineart_anime, manga_line, got 'lineart_realisitic'")


def test_networks_must_fit_the_merge(bundles):
    mteed = bundles["lineart_standard"][0].mteed
    with pytest.raises(ValueError) as error:
        AnyLineNetworks(mteed, "lineart_anime")
    assert str(error.value) == "merge_with_lineart 'lineart_anime' needs the network of netG.pth"
    with pytest.raises(ValueError) as error:
        AnyLineNetworks(mteed, "lineart_standard", mteed)
    assert str(error.value) == "merge_with_lineart 'lineart_standard' needs no line-art network"


def test_comfyui_controlnet_aux_layout_is_found(folder, tmp_path):
    """ckpts/TheMistoAI/MistoLine/Anyline/MTEED.pth, as comfyui_controlnet_aux downloads it."""
    target = tmp_path / "ckpts" / "TheMistoAI" / "MistoLine" / "Anyline"
    target.mkdir(parents=True)
    (target / MTEED_WEIGHTS).symlink_to(folder / MTEED_WEIGHTS)
    networks = load_anyline([str(tmp_path)])
    assert networks.merge_with_lineart == "lineart_standard" and networks.line_art is None

