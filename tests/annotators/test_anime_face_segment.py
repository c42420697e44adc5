"""Anime face segmentation against an oracle built from torchvision's MobileNetV2 and a functional
write-up of A1111's U-Net decoder (annotator/anime_face_segment, which comfyui_controlnet_aux
copies), in float64, with identical random weights; the map against A1111's per-pixel palette
lookup (`[[PALETTE[np.argmax(val)] for val in buf] for buf in img]`).

Background removal: ISNet against U^2-Net's residual U-blocks from the `backgroundremover` package
(RSU7..RSU4F, the same modules and parameter names as anime-segmentation's isnet.py), composed as
ISNetDIS.forward composes them; the whitening and the mask against comfyui_controlnet_aux's
AnimeSegmentation (`mask * image + 255 * (1 - mask)`, truncated).

Random weights: random_learned's He-scaled state dict. ReLU6 bounds the U-Net encoder's activations;
ISNet's BatchNorms are calibrated on photos (random_learned.calibrate_batch_norms), so that its mask
spreads over 0..1 instead of saturating. Each comparison checks that several classes appear.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

torchvision = pytest.importorskip("torchvision")
u2net = pytest.importorskip("backgroundremover.u2net.u2net")

from annotators.anime_face_segment import (ANIME_FACE_WEIGHTS, ISNET_WEIGHTS,  # noqa: E402
                                           AnimeFaceSegmenter, AnimeFaceSegmentNetwork, anime_face_segment,
                                           anime_face_segment_with_mask, load_anime_face_segment)
from annotators.isnet import ISNet  # noqa: E402
from annotators.image import resize_for_detection  # noqa: E402

from .random_learned import (assert_loaded, calibrate_batch_norms, random_state_dict,  # noqa: E402
                             run_in_a_fresh_interpreter, template_of)

SEED = 5
RAW_TOLERANCE = 1e-5  # class probabilities, float32 against the float64 oracle
FLOAT32_MASK_TOLERANCE = 5e-3  # ISNet's mask in float32 against float64 (see the background test)
MIN_CLASSES = 3       # a map with fewer would hide a wrong colour or class order
# A1111's PALETTE, in its order, written out again (RGB).
A1111_PALETTE = [(255, 255, 0), (0, 0, 255), (255, 0, 0), (255, 255, 255), (0, 255, 0), (0, 255, 255),
                 (255, 0, 255)]
LAST_FEATURE = 16  # the U-Net uses torchvision's features[0..16]
LEVELS = ((0, 2), (2, 4), (4, 7), (7, 14), (14, 17))  # features slices of en_block0..4

PHOTO_256 = cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)
CAT = cv2.resize(data.chelsea()[:, :450], (192, 128), interpolation=cv2.INTER_AREA)  # a detect size
ODD = cv2.resize(data.chelsea(), (91, 67), interpolation=cv2.INTER_AREA)


class Oracle:
    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.w = {key: value.double() for key, value in state_dict.items()}
        features = torchvision.models.mobilenet_v2(weights=None).features[:LAST_FEATURE + 1]
        renamed = {}
        for level, (start, _) in enumerate(LEVELS):
            prefix = f"en_block{level}."
            for key, value in state_dict.items():
                if key.startswith(prefix):
                    index, rest = key[len(prefix):].split(".", 1)
                    renamed[f"{start + int(index)}.{rest}"] = value
        features.load_state_dict(renamed, strict=True)
        self.levels = [features[start:end].double().eval() for start, end in LEVELS]

    def conv(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.conv2d(x, self.w[f"{name}.1.weight"], self.w[f"{name}.1.bias"], padding=1)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 RGB (even sides) -> 7xHxW class probabilities, as A1111's UNet.forward (its input
        from ToTensor: float32 / 255)."""
        x = torch.from_numpy((rgb / 255).astype(np.float32).transpose(2, 0, 1)).double()[None]
        with torch.no_grad():
            skips = []
            for level in self.levels:
                x = level(x)
                skips.append(x)
            for block in (4, 3, 2, 1):
                x = F.interpolate(x, scale_factor=2, mode="nearest")
                x = F.leaky_relu(F.instance_norm(self.conv(x, f"de_block{block}"), eps=1e-5), 0.1)
                x = F.interpolate(x, size=skips[block - 1].shape[-2:], mode="bilinear", align_corners=True)
                x = torch.cat([x, skips[block - 1]], dim=1)
            x = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"), "de_block0")
            return torch.softmax(x, dim=1)[0].numpy()


def a1111_map(probabilities: np.ndarray) -> np.ndarray:
    pixels = probabilities.transpose(1, 2, 0)
    return np.array([[A1111_PALETTE[np.argmax(val)] for val in row] for row in pixels]).astype(np.uint8)


# ISNetDIS.__init__'s RSU stages (name, class, in, mid, out), written out again.
ISNET_STAGES = (("stage1", "RSU7", 64, 32, 64), ("stage2", "RSU6", 64, 32, 128), ("stage3", "RSU5", 128, 64, 256),
                ("stage4", "RSU4", 256, 128, 512), ("stage5", "RSU4F", 512, 256, 512), ("stage6", "RSU4F", 512, 256, 512),
                ("stage5d", "RSU4F", 1024, 256, 512), ("stage4d", "RSU4", 1024, 128, 256), ("stage3d", "RSU5", 512, 64, 128),
                ("stage2d", "RSU6", 256, 32, 64), ("stage1d", "RSU7", 128, 16, 64))


class IsnetOracle:
    """ISNetDIS.forward's first side output, from backgroundremover's RSU modules, in float64."""

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        self.w = {key: value.double() for key, value in state_dict.items()}
        self.stages = {}
        for name, cls, *channels in ISNET_STAGES:
            stage = getattr(u2net, cls)(*channels)
            stage.load_state_dict({key[len(name) + 1:]: value for key, value in state_dict.items()
                                   if key.startswith(name + ".")}, strict=True)
            self.stages[name] = stage.double().eval()

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        # the input as AnimeSegmentation.get_mask makes it: (image / 255).astype(np.float32)
        x = torch.from_numpy((rgb / 255).astype(np.float32).transpose(2, 0, 1)).double()[None]

        def up(a, b):
            return F.interpolate(a, size=b.shape[2:], mode="bilinear", align_corners=False)

        def pool(a):
            return F.max_pool2d(a, 2, stride=2, ceil_mode=True)

        with torch.no_grad():
            hxin = F.conv2d(x, self.w["conv_in.weight"], self.w["conv_in.bias"], stride=2, padding=1)
            hx1 = self.stages["stage1"](hxin)  # not the pooled hxin: ISNetDIS pools it and never reads it
            hx2 = self.stages["stage2"](pool(hx1))
            hx3 = self.stages["stage3"](pool(hx2))
            hx4 = self.stages["stage4"](pool(hx3))
            hx5 = self.stages["stage5"](pool(hx4))
            hx6 = self.stages["stage6"](pool(hx5))
            hx5d = self.stages["stage5d"](torch.cat((up(hx6, hx5), hx5), 1))
            hx4d = self.stages["stage4d"](torch.cat((up(hx5d, hx4), hx4), 1))
            hx3d = self.stages["stage3d"](torch.cat((up(hx4d, hx3), hx3), 1))
            hx2d = self.stages["stage2d"](torch.cat((up(hx3d, hx2), hx2), 1))
            hx1d = self.stages["stage1d"](torch.cat((up(hx2d, hx1), hx1), 1))
            d1 = F.conv2d(hx1d, self.w["side1.weight"], self.w["side1.bias"], padding=1)
            return up(d1, x)[0, 0].numpy()


def aux_background_removal(rgb: np.ndarray, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """comfyui_controlnet_aux AnimeSegmentation.__call__ (image size 0: no resize): (whitened image,
    mask), the mask kept in float (that pack then stores it as bytes)."""
    mask = (1.0 / (1.0 + np.exp(-logits)))[:, :, None].astype(np.float32)
    return (mask * rgb + 255 * (1 - mask)).astype(np.uint8), mask[:, :, 0]


@pytest.fixture(scope="module")
def networks() -> tuple[Oracle, AnimeFaceSegmenter, AnimeFaceSegmenter]:
    """(oracle, our U-Net, the same in float64), with the same random weights; the U-Net alone."""
    unet = AnimeFaceSegmentNetwork().eval()
    unet.load_state_dict(random_state_dict(template_of(AnimeFaceSegmentNetwork), SEED), strict=True)
    ours = AnimeFaceSegmenter().eval()
    ours.unet = unet
    return Oracle(unet.state_dict()), ours, copy.deepcopy(ours).double()


@pytest.fixture(scope="module")
def with_background_removal(networks) -> tuple[IsnetOracle, AnimeFaceSegmenter, AnimeFaceSegmenter]:
    """(ISNet oracle, our U-Net and ISNet, the same in float64)."""
    isnet = ISNet().eval()
    isnet.load_state_dict(random_state_dict(template_of(ISNet), SEED + 1), strict=True)
    photos = torch.cat([torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
                        for image in (CAT[:, :128], CAT[:, -128:], PHOTO_256[::2, ::2])])
    calibrate_batch_norms(isnet, photos, seed=SEED + 2)
    ours = AnimeFaceSegmenter(remove_background=True).eval()
    ours.unet, ours.isnet = networks[1].unet, isnet
    return IsnetOracle(isnet.state_dict()), ours, copy.deepcopy(ours).double()


def assert_several_classes(segmentation_map: np.ndarray) -> None:
    colours = np.unique(segmentation_map.reshape(-1, 3), axis=0)
    assert len(colours) >= MIN_CLASSES, colours


def test_network_equals_oracle(networks):
    oracle, ours, _ = networks
    expected = oracle(CAT)
    with torch.no_grad():
        got = ours.unet(torch.from_numpy(CAT.transpose(2, 0, 1).astype(np.float32) / 255.0)[None])[0].double().numpy()
    assert got.shape == expected.shape == (7, 128, 192)
    np.testing.assert_allclose(got, expected, rtol=0, atol=RAW_TOLERANCE)


MAP_CASES = {
    # at a detect size: nothing resized
    "detect size": (lambda net: anime_face_segment(CAT, net, resolution=128), lambda oracle: a1111_map(oracle(CAT))),
    # detected at 128, brought back to 256 with nearest-neighbour sampling
    "resized": (lambda net: anime_face_segment(PHOTO_256, net, resolution=128),
                lambda oracle: cv2.resize(a1111_map(oracle(resize_for_detection(PHOTO_256, 128))), (256, 256),
                                          interpolation=cv2.INTER_NEAREST)),
    # odd sides at the image's own size: the last row and column repeated, then cropped off
    "odd size": (lambda net: anime_face_segment(ODD, net, resolution=None),
                 lambda oracle: a1111_map(oracle(np.pad(ODD, ((0, 1), (0, 1), (0, 0)), mode="edge")))[:67, :91]),
}


@pytest.mark.parametrize("case", list(MAP_CASES))
def test_map_equals_a1111s_palette_lookup(networks, case):
    oracle, ours, ours_float64 = networks
    ours_call, oracle_call = MAP_CASES[case]
    expected = oracle_call(oracle)
    assert_several_classes(expected)
    np.testing.assert_array_equal(ours_call(ours_float64), expected)
    # float32 can tip a near-tie between two classes; only there
    assert np.mean(np.any(ours_call(ours) != expected, axis=2)) < 0.001


def test_loader_reads_the_published_file_and_is_strict(tmp_path, networks):
    weights = networks[1].unet.state_dict()
    # A1111 strips a DataParallel prefix before loading; a plain state dict is the published layout.
    torch.save({f"module.{key}": value for key, value in weights.items()}, tmp_path / ANIME_FACE_WEIGHTS)
    loaded = load_anime_face_segment([str(tmp_path)])
    assert loaded.isnet is None
    assert_loaded(loaded.unet, weights)
    torch.save({key: value for key, value in weights.items() if not key.startswith("de_block0.")},
               tmp_path / ANIME_FACE_WEIGHTS)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "de_block0\.1\.weight"'):
        load_anime_face_segment([str(tmp_path)])


@pytest.mark.parametrize("layout", ["anime-segmentation module", "lightning checkpoint", "bare ISNet"])
def test_loader_reads_isnet_from_anime_segmentations_files(tmp_path, networks, with_background_removal, layout):
    # AnimeSegmentation holds ISNet as `net` beside its training-only ground-truth encoder; its
    # try_load reads such a state dict, a Lightning checkpoint of it, or a bare ISNet state dict.
    isnet = with_background_removal[1].isnet.state_dict()
    module = {**{f"net.{key}": value for key, value in isnet.items()},
              "gt_encoder.conv_in.weight": torch.zeros(16, 1, 3, 3)}
    content = {"anime-segmentation module": module, "lightning checkpoint": {"state_dict": module, "epoch": 3},
               "bare ISNet": isnet}[layout]
    torch.save(networks[1].unet.state_dict(), tmp_path / ANIME_FACE_WEIGHTS)
    torch.save(content, tmp_path / ISNET_WEIGHTS)
    loaded = load_anime_face_segment([str(tmp_path)], remove_background=True)
    assert_loaded(loaded.isnet, isnet)


def test_runs_without_torchvision():
    code = (
        "import sys\n"
        "sys.modules['torchvision'] = None  # any import of it now fails\n"
        "import numpy as np\n"
        "from annotators.anime_face_segment import AnimeFaceSegmenter, anime_face_segment\n"
        "anime_face_segment(np.zeros((40, 50, 3), np.uint8), AnimeFaceSegmenter(True).eval(), resolution=None)\n")
    run_in_a_fresh_interpreter(code)


def test_isnet_equals_u2net_blocks_composed_as_isnetdis(with_background_removal):
    oracle, ours, ours_float64 = with_background_removal
    expected = oracle(ODD)  # odd sides: ceil-mode pooling and upsampling to each skip's size
    for network, tolerance in ((ours_float64.isnet, 1e-9), (ours.isnet, 1e-4)):
        x = torch.from_numpy((ODD / 255).astype(np.float32).transpose(2, 0, 1))[None]
        x = x.to(next(network.parameters()).dtype)
        with torch.no_grad():
            got = network(x)[0, 0].double().numpy()
        assert got.shape == expected.shape == ODD.shape[:2]
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=0, atol=tolerance * scale)
    mask = 1 / (1 + np.exp(-expected))
    assert 0.1 < float(mask.mean()) < 0.9 and float(mask.std()) > 0.05, (mask.mean(), mask.std())


BACKGROUND_CASES = {
    "detect size": (CAT, 128),
    "resized": (PHOTO_256, 128),
}


@pytest.mark.parametrize("case", list(BACKGROUND_CASES))
def test_background_removal_equals_comfyui_controlnet_aux(networks, with_background_removal, case):
    unet_oracle = networks[0]
    isnet_oracle, ours, ours_float64 = with_background_removal
    image, resolution = BACKGROUND_CASES[case]
    detected = resize_for_detection(image, resolution)
    whitened, expected_mask = aux_background_removal(detected, isnet_oracle(detected))
    assert (whitened != detected).any() and (whitened == detected).any()  # some whitened, some kept
    expected_map = a1111_map(unet_oracle(whitened))
    assert_several_classes(expected_map)
    height, width = image.shape[:2]
    if detected.shape[:2] != (height, width):
        expected_map = cv2.resize(expected_map, (width, height), interpolation=cv2.INTER_NEAREST)
        expected_mask = cv2.resize(expected_mask, (width, height), interpolation=cv2.INTER_LINEAR)
    got_map, got_mask = anime_face_segment_with_mask(image, ours_float64, resolution)
    # The whitening truncates to bytes: a float64 mask a hair off a byte boundary may move a pixel
    # by one level there, so the maps may differ only at a few pixels.
    assert np.mean(np.any(got_map != expected_map, axis=2)) < 0.002
    np.testing.assert_allclose(got_mask, expected_mask, rtol=0, atol=1e-6)
    # In float32, ISNet's rounding errors grow through its ~100 conv-BN layers in series (with
    # random weights up to 1.7e-3 of the mask here), and the map follows the whitened image.
    float32_map, float32_mask = anime_face_segment_with_mask(image, ours, resolution)
    assert np.mean(np.any(float32_map != expected_map, axis=2)) < 0.01
    np.testing.assert_allclose(float32_mask, expected_mask, rtol=0, atol=FLOAT32_MASK_TOLERANCE)


def test_without_background_removal_the_mask_is_all_ones(networks):
    segmentation, mask = anime_face_segment_with_mask(ODD, networks[1], resolution=None)
    np.testing.assert_array_equal(segmentation, anime_face_segment(ODD, networks[1], resolution=None))
    assert mask.dtype == np.float32 and mask.shape == ODD.shape[:2] and (mask == 1.0).all()
