"""YOLOX (annotators/yolox_network.py) against its oracle, mmdet 3.3.0 (CSPDarknet, YOLOXPAFPN,
YOLOXHead and the YOLOX detector, built from the config files mmdet ships).

Numbers: a narrow YOLOX (widen 0.125, deepen 0.33, as mmdet scales its models; a head narrower
than the neck and five classes so that no two widths coincide) with random weights and random
BatchNorm statistics, in float64, part by part and whole, on a square and a non-square input.
Decoding is compared with YOLOXHead.predict_by_feat itself, with its score threshold off and no
NMS. Layout: the published YOLOX-L and mmdet's other YOLOX configs are built on the meta device
(no memory, no time) and compared key by key, shape by shape, and by parameter count.
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from annotators.yolox_network import Yolox, YoloxConfig, decode_detections, level_priors

from .openmmlab import import_openmmlab
from .random_learned import YOLOX_TEST_FACTORS, random_state_dict

WIDEN, DEEPEN = YOLOX_TEST_FACTORS  # stem 8 channels; 1, 3, 3, 1 bottlenecks per stage
TINY_NECK_BLOCKS = 2              # unlike any stage's count
TINY_HEAD_CHANNELS = 24           # unlike the neck's 32
TINY_CLASSES = 5                  # unlike the 4 box deltas and the 1 objectness
# Inputs: batch 2, a square and a non-square size, multiples of 32 (mmdet pads to them).
INPUT_SIZES = [(96, 96), (64, 128)]
BATCH = 2
PIXEL_MAX = 255.0
# Random weights are He-scaled for unit inputs: the stem conv is divided by the pixel range, and
# the 1x1 predictors shrunk so that the logits and deltas stay within a few units (sigmoid and
# exp neither saturate nor overflow, so the decoded numbers mean something).
READOUT_SCALE = 0.1
PREDICTOR_PREFIXES = ("bbox_head.multi_level_conv_cls.", "bbox_head.multi_level_conv_reg.",
                      "bbox_head.multi_level_conv_obj.")
# float64. Not bit-equal: our SiLU is F.silu, mmcv's Swish x * sigmoid(x) (about 1e-15 apart).
RELATIVE_TOLERANCE = 1e-9
LARGE_CONFIG = "yolox_l_8xb8-300e_coco.py"  # the published detector's config
# mmdet's other YOLOX configs, whose backbones set their widen and deepen factors.
# yolox_nano uses depthwise-separable convs, a different layout, and is not built here.
OTHER_CONFIGS = ["yolox_tiny_8xb8-300e_coco.py", "yolox_s_8xb8-300e_coco.py",
                 "yolox_m_8xb8-300e_coco.py", "yolox_x_8xb8-300e_coco.py"]


# --- the oracle ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mmdet_configs() -> str:
    """The folder of mmdet's shipped YOLOX config files (skips without mmdet or them)."""
    import_openmmlab("mmdet.models.detectors.yolox")  # registers the detector and its parts
    import mmdet

    folder = os.path.join(os.path.dirname(mmdet.__file__), ".mim", "configs", "yolox")
    if not os.path.isdir(folder):
        pytest.skip("mmdet's config files are not installed")
    return folder


def model_config(folder: str, config_file: str):
    from mmengine.config import Config

    return Config.fromfile(os.path.join(folder, config_file)).model


def build_mmdet(config) -> torch.nn.Module:
    """mmdet's YOLOX detector from a model config."""
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    # The detector builds its data preprocessor through mmengine's registry, which finds mmdet's
    # only within mmdet's scope.
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(config)


def tiny_weights(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    weights = random_state_dict(template, seed)
    weights["backbone.stem.conv.conv.weight"] /= PIXEL_MAX
    for key in weights:
        if key.startswith(PREDICTOR_PREFIXES) and key.endswith("weight"):
            weights[key] *= READOUT_SCALE
    return weights


@pytest.fixture(scope="module")
def tiny_pair(mmdet_configs):
    """mmdet's narrow YOLOX and ours, both float64 in eval mode with the same random weights."""
    large = model_config(mmdet_configs, LARGE_CONFIG)
    neck_width = int(large.neck.out_channels * WIDEN)
    oracle = build_mmdet(dict(
        large,
        backbone=dict(large.backbone, widen_factor=WIDEN, deepen_factor=DEEPEN),
        neck=dict(large.neck, in_channels=[int(c * WIDEN) for c in large.neck.in_channels],
                  out_channels=neck_width, num_csp_blocks=TINY_NECK_BLOCKS),
        bbox_head=dict(large.bbox_head, in_channels=neck_width, feat_channels=TINY_HEAD_CHANNELS,
                       num_classes=TINY_CLASSES)))
    oracle.load_state_dict(tiny_weights(oracle.state_dict(), seed=0), strict=True)
    ours = Yolox(tiny_config())
    ours.load_state_dict(oracle.state_dict(), strict=True)
    return oracle.double().eval(), ours.double().eval()


def tiny_config() -> YoloxConfig:
    return dataclasses.replace(YoloxConfig.scaled(WIDEN, DEEPEN), neck_blocks=TINY_NECK_BLOCKS,
                               head_channels=TINY_HEAD_CHANNELS, num_classes=TINY_CLASSES)


def image_batch(size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((BATCH, 3) + size, generator=generator, dtype=torch.float64) * PIXEL_MAX


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape and got.dtype == expected.dtype
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((got - expected).abs().max()) <= RELATIVE_TOLERANCE * scale


def shapes(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, tuple[int, ...]]]:
    return [(key, tuple(value.shape)) for key, value in state_dict.items()]


# --- configuration and layout --------------------------------------------------------------------

def test_tiny_config_is_read_from_mmdet_weights(tiny_pair):
    oracle, ours = tiny_pair
    assert YoloxConfig.from_state_dict(oracle.state_dict()) == tiny_config()
    assert YoloxConfig.from_state_dict(ours.state_dict()) == tiny_config()
    assert shapes(ours.state_dict()) == shapes(oracle.state_dict())


def test_large_has_the_published_layout(mmdet_configs):
    with torch.device("meta"):
        oracle = build_mmdet(model_config(mmdet_configs, LARGE_CONFIG))
        ours = Yolox(YoloxConfig.large())
    assert shapes(ours.state_dict()) == shapes(oracle.state_dict())
    assert {key.split(".")[0] for key in ours.state_dict()} == {"backbone", "neck", "bbox_head"}
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in oracle.parameters())
    assert YoloxConfig.from_state_dict(oracle.state_dict()) == YoloxConfig.large()
    assert YoloxConfig.from_state_dict(ours.state_dict()) == YoloxConfig.large()
    assert ours.strides == tuple(oracle.bbox_head.strides)


@pytest.mark.parametrize("config_file", OTHER_CONFIGS)
def test_scaled_matches_mmdet_configs(mmdet_configs, config_file):
    config = model_config(mmdet_configs, config_file)
    backbone = config.backbone
    with torch.device("meta"):
        oracle = build_mmdet(config)
        ours = Yolox(YoloxConfig.scaled(backbone.widen_factor, backbone.deepen_factor))
    assert YoloxConfig.from_state_dict(oracle.state_dict()) == ours.config
    assert shapes(ours.state_dict()) == shapes(oracle.state_dict())


# --- numbers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", INPUT_SIZES)
def test_backbone_matches_mmdet(tiny_pair, size):
    oracle, ours = tiny_pair
    x = image_batch(size)
    with torch.no_grad():
        expected, got = oracle.backbone(x), ours.backbone(x)
    assert len(got) == len(expected)
    for got_map, expected_map in zip(got, expected):
        assert_close(got_map, expected_map)


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_neck_matches_mmdet(tiny_pair, size):
    oracle, ours = tiny_pair
    with torch.no_grad():
        features = oracle.backbone(image_batch(size))
        expected, got = oracle.neck(features), ours.neck(features)
    assert len(got) == len(expected)
    for got_map, expected_map in zip(got, expected):
        assert_close(got_map, expected_map)


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_head_matches_mmdet(tiny_pair, size):
    oracle, ours = tiny_pair
    with torch.no_grad():
        features = oracle.neck(oracle.backbone(image_batch(size)))
        expected, got = oracle.bbox_head(features), ours.bbox_head(features)
    for level, outputs in enumerate(got):  # ours per level, mmdet per kind of output
        for kind, output in enumerate(outputs):
            assert_close(output, expected[kind][level])


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_whole_network_matches_mmdet(tiny_pair, size):
    oracle, ours = tiny_pair
    x = image_batch(size)
    with torch.no_grad():
        expected, got = oracle._forward(x), ours(x)
    assert len(got) == len(ours.strides)
    for level, (outputs, stride) in enumerate(zip(got, ours.strides)):
        assert outputs[0].shape[-2:] == (size[0] // stride, size[1] // stride)
        for kind, output in enumerate(outputs):
            assert_close(output, expected[kind][level])


def test_sides_must_be_multiples_of_the_coarsest_stride(tiny_pair):
    _, ours = tiny_pair
    with pytest.raises(ValueError, match="multiples of 32"):
        ours(image_batch((96, 80)))


def test_priors_match_mmdet(tiny_pair):
    oracle, _ = tiny_pair
    height, width = INPUT_SIZES[1]
    for level, stride in enumerate(oracle.bbox_head.prior_generator.strides):  # (w, h) pairs
        expected = oracle.bbox_head.prior_generator.single_level_grid_priors(
            (height // stride[1], width // stride[0]), level, dtype=torch.float64, device="cpu")
        got = level_priors(height // stride[1], width // stride[0], stride[0], torch.float64, torch.device("cpu"))
        assert torch.equal(got, expected)


@pytest.mark.parametrize("size", INPUT_SIZES)
def test_decoding_matches_mmdet_before_nms(tiny_pair, size):
    from mmengine.config import ConfigDict

    oracle, ours = tiny_pair
    with torch.no_grad():
        levels = ours(image_batch(size))
    got = decode_detections(levels, ours.strides)
    cls_scores, bbox_preds, objectnesses = (list(kind) for kind in zip(*levels))
    expected = oracle.bbox_head.predict_by_feat(
        cls_scores, bbox_preds, objectnesses, batch_img_metas=[{}] * BATCH,
        cfg=ConfigDict(score_thr=-math.inf), rescale=False, with_nms=False)  # every prior kept
    for image, result in enumerate(expected):
        assert_close(got.boxes[image], result.bboxes)
        assert_close(got.scores[image], result.scores)
        assert torch.equal(got.labels[image], result.labels)
        # Every class's score (class-aware NMS reads them): the best of them is mmdet's score.
        best, best_class = got.class_scores[image].max(dim=-1)
        assert_close(best, result.scores)
        assert torch.equal(best_class, result.labels)
    # The comparison means something: scores spread out, several classes win, boxes finite.
    assert 0.0 < float(got.scores.min()) and float(got.scores.max()) < 1.0
    assert len(got.labels.unique()) > 1
    assert bool(torch.isfinite(got.boxes).all())
