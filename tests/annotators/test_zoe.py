"""ZoeDepth against controlnet-aux 0.0.10's ZoeDepth model and ZoeDetector, with identical random
weights saved under the published key layout and read back through our loader.

The oracle is built as ZoeDetector.from_pretrained builds it, `ZoeDepth.build_from_config(
get_config("zoedepth", "infer"))` (use_pretrained_midas is false there, so MidasCore.build asks
torch.hub.load for DPT_BEiT_L_384 from the package's local midas_repo with pretrained=False), with
two substitutions that keep the comparison cheap: torch.hub.load returns the peer's own
DPTDepthModel(backbone="beitl16_384") whose encoder factory (dpt_depth._make_encoder) makes a
narrower timm Beit (32 wide, 2 heads, all 24 blocks, the published 24 x 24 trained grid) and
narrower reassemble and decoder widths through the peer's _make_beit_backbone / _make_scratch
(so MiDaS's patched BEiT forward, its hooks, readout and decoder run as published), and
MIDAS_SETTINGS gives the metric head that decoder width. The metric head, the prep (384 x 512
"minimal" resize) and DepthModel.infer are the peer's, at full size. Sockets are disabled.

The full-size layout is checked separately: the oracle built on the meta device (0.2 s) against
ours, key by key with shapes and dtypes. The published file also holds each block's
`relative_position_index` (saved by an older timm; ZoeDepth's own load_state_dict drops them under
timm >= 1.0, and loading the file into timm 1.0's model strictly reports exactly those 24 keys as
unexpected: isl-org/ZoeDepth#137, okaris/omni-zero-couples#1 with lllyasviel/Annotators' file).

Our network runs the peer's operations in the peer's order, so raw outputs, the padded and flipped
metric depth and the maps are compared bit for bit. Maps are checked not to be degenerate.
"""

from __future__ import annotations

import os
import socket
import warnings
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: the oracle must never download

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

aux_zoe = pytest.importorskip("controlnet_aux.zoe")
timm_beit = pytest.importorskip("timm.models.beit")

from controlnet_aux.zoe.zoedepth.models.base_models import midas as aux_midas_core  # noqa: E402
from controlnet_aux.zoe.zoedepth.models.base_models.midas_repo.midas import blocks as aux_blocks  # noqa: E402
from controlnet_aux.zoe.zoedepth.models.base_models.midas_repo.midas import dpt_depth as aux_dpt  # noqa: E402
from controlnet_aux.zoe.zoedepth.models.base_models.midas_repo.midas.backbones import beit as aux_beit  # noqa: E402
from controlnet_aux.zoe.zoedepth.models.zoedepth.zoedepth_v1 import ZoeDepth  # noqa: E402
from controlnet_aux.zoe.zoedepth.utils.config import get_config  # noqa: E402

from annotators.image import resize_for_detection  # noqa: E402
from annotators.weights import BadWeightsError  # noqa: E402
from annotators.zoe import (NETWORK_INPUT_SIZE, ZOE_WEIGHTS, depth_to_map, load_zoe,  # noqa: E402
                            metric_depth, network_input, network_input_size, zoe_depth)
from annotators.zoe_network import (HOOKS, PATCH_SIZE, ZOE_LARGE, ZoeDepthNetwork, ZoeSize,  # noqa: E402
                                    relative_position_index)
from tests.annotators.random_learned import ZOE_TEST_WIDTHS, adjust, assert_loaded, random_state_dict  # noqa: E402

SEED = 3
NARROW = ZoeSize(**ZOE_TEST_WIDTHS)
MODEL_TYPE = "DPT_BEiT_L_384"             # config_zoedepth.json midas_model_type
INDEX_BUFFERS = 24                        # one relative_position_index per BEiT block
# A 3:2 crop of the astronaut at 384 x 256: detected as it is at resolution 256 (a multiple of
# 64 already), so the peer's resize_image and ours leave it alone.
PHOTO = cv2.resize(data.astronaut()[:, 85:427], (256, 384), interpolation=cv2.INTER_AREA)
DETECT = 256
MIN_MAP_LEVELS = 64
BLACK_SHARE = 1 - 85 / 100                # the pixels beyond the 85th percentile of depth
# (image height, width, the network's input size): 384 x 512 as it is (24 x 32 tokens: the bias
# tables widened); 320 x 448 scaled by 512 / 448 (nearer 1 than 384 / 320), 365.7 rounded to 352
# (22 x 32 tokens: both axes of the tables resized); the trained 24 x 24 grid.
SIZES = [(384, 512, (384, 512)), (320, 448, (352, 512)), (384, 384, (384, 384))]


def _no_network(*args, **kwargs):
    raise AssertionError("the test tried to open a network connection")


@pytest.fixture(autouse=True, scope="module")
def no_sockets():
    with mock.patch.object(socket.socket, "connect", _no_network):
        yield


def narrow_encoder(backbone, features, use_pretrained, groups=1, expand=False, exportable=True, hooks=None,
                   use_vit_only=False, use_readout="ignore", in_features=None):
    """dpt_depth._make_encoder for "beitl16_384" with NARROW's widths, built from the peer's parts."""
    assert backbone == "beitl16_384" and not use_pretrained and hooks == list(HOOKS)  # the peer's, ours
    beit = timm_beit.Beit(img_size=NARROW.window * PATCH_SIZE, patch_size=PATCH_SIZE, embed_dim=NARROW.embed_dim,
                          depth=24, num_heads=NARROW.heads, use_abs_pos_emb=False, use_rel_pos_bias=True,
                          init_values=1e-5)  # beit_large_patch16_384's arguments but the widths
    channels = list(NARROW.reassemble_channels)
    pretrained = aux_beit._make_beit_backbone(beit, features=channels, hooks=hooks, vit_features=NARROW.embed_dim,
                                              use_readout=use_readout)
    return pretrained, aux_blocks._make_scratch(channels, features, groups=groups, expand=expand)


def narrow_hub_load(repo, model, pretrained, **kwargs):
    assert model == MODEL_TYPE and pretrained is False and kwargs.get("source") == "local"
    with mock.patch.object(aux_dpt, "_make_encoder", narrow_encoder):
        return aux_dpt.DPTDepthModel(path=None, backbone="beitl16_384", non_negative=True, features=NARROW.features)


def build_oracle() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script deprecation in the attractors
        with mock.patch("torch.hub.load", narrow_hub_load), \
                mock.patch.dict(aux_midas_core.MIDAS_SETTINGS, {MODEL_TYPE: [NARROW.features] * 5}):
            return ZoeDepth.build_from_config(get_config("zoedepth", "infer"))


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """Random weights in the published layout (the oracle's keys plus the index buffers). The index
    buffers hold zeros (random_state_dict's integer tensors): nothing may read them, which the
    trained-grid case of the network test would show (the grid's own index is all but zeros)."""
    with torch.device("meta"):
        template = ZoeDepthNetwork(NARROW).state_dict()
    return adjust("zoe", random_state_dict(template, SEED))


@pytest.fixture(scope="module")
def oracle(weights) -> torch.nn.Module:
    network = build_oracle()
    published = {key: value for key, value in weights.items() if "relative_position_index" not in key}
    # nn.Module's strict load, not ZoeDepth's override (which would load non-strictly)
    torch.nn.Module.load_state_dict(network, published, strict=True)
    return network.eval()


@pytest.fixture(scope="module")
def ours(weights, tmp_path_factory) -> ZoeDepthNetwork:
    """Our network, loaded from the weights saved as the published checkpoint (under "model")."""
    folder = tmp_path_factory.mktemp("annotators")
    torch.save({"model": weights, "optimizer": None, "epoch": 5}, folder / ZOE_WEIGHTS)
    return load_zoe([str(folder)])


def as_input(rgb: np.ndarray) -> torch.Tensor:
    """ZoeDetector's tensor: RGB / 255 in float32, 1 x 3 x H x W."""
    return (torch.from_numpy(rgb).float() / 255.0).permute(2, 0, 1)[None]


# --- the published layout --------------------------------------------------------------------------

def test_full_size_keys_shapes_and_dtypes_are_the_published_layout():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.device("meta"):  # the full 345 M-parameter oracle, shapes only
            oracle = ZoeDepth.build_from_config(get_config("zoedepth", "infer"))
            ours = ZoeDepthNetwork()
    expected = {key: (tuple(value.shape), value.dtype) for key, value in oracle.state_dict().items()}
    got = {key: (tuple(value.shape), value.dtype) for key, value in ours.state_dict().items()}
    grid_tokens = (384 // PATCH_SIZE) ** 2 + 1
    index_keys = {f"core.core.pretrained.model.blocks.{i}.attn.relative_position_index" for i in range(INDEX_BUFFERS)}
    assert set(got) - set(expected) == index_keys and set(expected) <= set(got)
    for key in index_keys:
        assert got.pop(key) == ((grid_tokens, grid_tokens), torch.int64)
    assert got == expected
    assert ours.size == ZOE_LARGE


def test_relative_position_index_equals_timms():
    for grid in [(24, 24), (24, 32), (20, 28), (3, 5)]:
        assert torch.equal(relative_position_index(*grid), timm_beit.gen_relative_position_index(grid))


# --- the network -----------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, network_size", SIZES)
def test_network_is_bit_equal_to_the_oracle(oracle, ours, height, width, network_size):
    """The oracle's forward (its prep included) and ours on our prep of the same image."""
    x = as_input(cv2.resize(PHOTO, (width, height), interpolation=cv2.INTER_AREA))
    prepared = network_input(x, NETWORK_INPUT_SIZE)
    assert prepared.shape[-2:] == network_size
    with torch.no_grad():
        expected = oracle(x)["metric_depth"]
        got = ours(prepared)
    assert got.shape == expected.shape == (1, 1) + network_size
    assert torch.equal(got, expected)
    assert float(expected.std()) > 0.1 * float(expected.abs().mean())


def test_metric_depth_and_map_are_bit_equal_to_zoedetectors(oracle, ours):
    """ZoeDetector on the oracle (its infer's padded and flipped runs, its normalisation) and ours:
    the metric depth it computes (caught on its way) and the map."""
    caught = []
    infer = oracle.infer

    def spy(x, **kwargs):
        depth = infer(x, **kwargs)
        caught.append(depth.clone())  # the detector normalises its numpy view of `depth` in place
        return depth

    detector = aux_zoe.ZoeDetector(oracle)
    with mock.patch.object(oracle, "infer", spy):
        expected_map = detector(PHOTO, detect_resolution=DETECT, image_resolution=DETECT)
    expected_depth = caught[0][0, 0].numpy()
    depth = metric_depth(PHOTO, ours)
    assert depth.shape == PHOTO.shape[:2] and depth.dtype == np.float32
    np.testing.assert_array_equal(depth, expected_depth)
    got = zoe_depth(PHOTO, ours, resolution=DETECT)
    np.testing.assert_array_equal(got, expected_map)
    assert np.array_equal(got, depth_to_map(depth)[..., None].repeat(3, axis=2))
    assert len(np.unique(got)) > MIN_MAP_LEVELS and got.max() == 255
    assert np.mean(got[..., 0] == 0) == pytest.approx(BLACK_SHARE, abs=0.01)


# --- the pipeline around the network ---------------------------------------------------------------

class FixedDepth(torch.nn.Module):
    """A stand-in model for ZoeDetector whose infer returns a given depth (for its normalisation)."""

    def __init__(self, depth: np.ndarray):
        super().__init__()
        self.depth = torch.nn.Parameter(torch.from_numpy(depth)[None, None], requires_grad=False)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        return self.depth.clone()


@pytest.mark.parametrize("gamma_corrected", [False, True])
def test_depth_to_map_is_zoedetectors_normalisation(gamma_corrected):
    depth = np.random.default_rng(0).gamma(2.0, 1.5, (64, 128)).astype(np.float32)
    image = np.zeros(depth.shape + (3,), np.uint8)  # a detect size already: no resize either way
    with np.errstate(invalid="ignore"):  # the peer's power of negative values
        expected = aux_zoe.ZoeDetector(FixedDepth(depth))(image, 64, 64, gamma_corrected=gamma_corrected)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ours makes no NaN on the way (the peer's cast of NaN gives 0 here)
        got = depth_to_map(depth, gamma_corrected)
    np.testing.assert_array_equal(got, expected[..., 0])
    assert len(np.unique(got)) > MIN_MAP_LEVELS


def test_flat_depth_gives_the_peers_black_and_white():
    """p2 == p85 (the peer divides by zero): nearer pixels white, the others black."""
    depth = np.full((64, 128), 3.0, np.float32)
    depth[0, :10] = 1.0
    image = np.zeros(depth.shape + (3,), np.uint8)  # a detect size already: no resize either way
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = aux_zoe.ZoeDetector(FixedDepth(depth))(image, 64, 64)
    got = depth_to_map(depth)
    np.testing.assert_array_equal(got, expected[..., 0])
    assert got[0, :10].min() == 255 and got[1:].max() == 0


@pytest.mark.parametrize("height, width", [(384, 512), (512, 384), (100, 1000), (1000, 100), (333, 777),
                                           (48, 64), (13, 29), (2000, 2000), (400, 500), (256, 1024)])
def test_network_input_size_is_the_peers_minimal_resize(height, width):
    """(256, 1024): 384 / 256 and 512 / 1024 are equally far from 1, and the height's scale wins."""
    expected_width, expected_height = aux_midas_core.Resize(
        NETWORK_INPUT_SIZE[1], NETWORK_INPUT_SIZE[0], keep_aspect_ratio=True, ensure_multiple_of=32,
        resize_method="minimal").get_size(width, height)
    assert network_input_size(height, width, NETWORK_INPUT_SIZE) == (expected_height, expected_width)


def test_detect_resolution_resizes_first_and_brings_the_map_back(ours):
    """resolution=64 on the 384 x 256 photo: detected on the 128 x 64 resize (96 rounds half to
    even to 2 x 64), the map bilinearly back to 384 x 256 (the network still sees about 384 x 512)."""
    detect = resize_for_detection(PHOTO, 64)
    assert detect.shape[:2] == (128, 64)
    at_detect = depth_to_map(metric_depth(detect, ours))
    expected = cv2.resize(np.repeat(at_detect[..., None], 3, axis=2), (256, 384), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(zoe_depth(PHOTO, ours, resolution=64), expected)


def test_tiny_and_elongated_images_are_refused(ours):
    with pytest.raises(ValueError) as error:
        zoe_depth(np.zeros((4, 30, 3), np.uint8), ours, resolution=None)
    assert str(error.value) == ("ZoeDepth needs an image of at least 5x5 pixels, got 4x30; "
                                "upscale it or pass a detect resolution")
    with pytest.raises(ValueError) as error:
        network_input_size(10, 5000, NETWORK_INPUT_SIZE)
    assert str(error.value) == ("ZoeDepth cannot run a 10x5000 image: scaled for its 384x512 input, one side "
                                "would round to 0 pixels; crop the image to a less elongated shape")


# --- loading ---------------------------------------------------------------------------------------

def test_loader_reads_the_nested_checkpoint_strictly_and_the_widths_from_it(ours, weights, tmp_path):
    assert ours.size == NARROW
    assert_loaded(ours, weights)
    folder = tmp_path / "annotators"
    folder.mkdir()
    missing = {k: v for k, v in weights.items() if k != "attractors.3._net.2.bias"}
    torch.save({"model": missing}, folder / ZOE_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "attractors\.3\._net\.2\.bias"'):
        load_zoe([str(folder)])
    torch.save({"model": dict(weights, **{"core.core.pretrained.model.norm.weight": torch.ones(32)})},
               folder / ZOE_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "core\.core\.pretrained\.model\.norm\.weight"'):
        load_zoe([str(folder)])


def test_controlnet_aux_layout_is_found_and_half_precision_files_load(weights, tmp_path):
    folder = tmp_path / "ckpts" / "lllyasviel" / "Annotators"
    folder.mkdir(parents=True)
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    torch.save({"model": half}, folder / ZOE_WEIGHTS)
    network = load_zoe([str(tmp_path / "elsewhere"), str(tmp_path)])
    assert network.size == NARROW
    assert_loaded(network, {k: v.float() if v.is_floating_point() else v for k, v in half.items()})


def test_another_checkpoint_is_refused_by_name(tmp_path):
    torch.save({"model": {"pretrained.model.cls_token": torch.zeros(1, 1, 8)}}, tmp_path / ZOE_WEIGHTS)
    with pytest.raises(BadWeightsError) as error:
        load_zoe([str(tmp_path)])
    assert str(error.value) == (
        "'ZoeD_M12_N.pt' is not a ZoeDepth checkpoint (it has no "
        "'core.core.pretrained.model.blocks.0.attn.relative_position_bias_table'); download ZoeD_M12_N.pt "
        "again from https://huggingface.co/lllyasviel/Annotators")
