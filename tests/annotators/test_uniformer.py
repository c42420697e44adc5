"""UniFormer ADE20K segmentation (`upernet_global_small.pth`, ControlNet 1.0 "seg").

No package implements the UniFormer backbone, so it is checked block by block (and as a whole)
against torch.nn.functional compositions written here from the original source, and its key
names and shapes against a list derived from the original module tree. The decode head, the
test-time glue (logits resized to the input, then to the image) and the preprocessing have an
oracle: mmsegmentation 1.2.2 (UPerHead, FCNHead, EncoderDecoder) with mmcv-lite 2.1.0 (imrescale,
imnormalize), which run on CPU without mmcv's compiled ops. Those tests skip when mmseg is not
installed; the others do not need it. Images are small, but the pipeline always rescales to a
short side of 512, so the end-to-end tests use a narrow decode head (a tiny config).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from annotators.image import resize_for_detection
from annotators.palettes import ADE20K_PALETTE
from annotators.uniformer import (UNIFORMER_WEIGHTS, UniFormerSegmentationNetwork, UPerHead,
                                  load_uniformer, network_input, rescaled_size, segment_labels,
                                  uniformer_segmentation, uniformer_state_dict)
from annotators.uniformer_backbone import (AttentionBlock, ConvBlock, PatchEmbed,
                                           UniFormerBackbone)

from .openmmlab import import_openmmlab
from .random_learned import assert_loaded

PHOTO = data.astronaut()  # 512x512 RGB, shipped with scikit-image
# 100x70: the pipeline rescales it by min(2048/100, 512/70) to 731x512, not a whole factor.
SMALL_PHOTO = cv2.resize(PHOTO, (70, 100), interpolation=cv2.INTER_AREA)
TINY_HEAD = 32  # decode-head width for the end-to-end tests (the published one is 512)
RAW_TOLERANCE = 1e-4  # relative to the largest magnitude

# The original config (exp/upernet_global_small/config.py + configs/_base_/models/upernet_uniformer.py)
EMBED = (64, 128, 320, 512)
LAYERS = (3, 4, 8, 3)
HEAD_DIM = 64
CLASSES = 150
UPER_CHANNELS = 512
AUX_IN, AUX_CHANNELS = 320, 256
PAPER_PARAMETER_MILLIONS = 52  # UniFormer paper, UperNet + UniFormer-S (training model)


# --- random weights ------------------------------------------------------------------------------

def random_weights(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Conv/linear weights He-scaled, norm scales 1 + N(0, 0.1), shifts N(0, 0.1), BN running
    variances in 0.5..1.5, means N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, value in template.items():
        if not value.is_floating_point():
            weights[key] = value.clone()
        elif key.endswith("running_var"):
            weights[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif value.ndim >= 2:
            weights[key] = torch.randn(value.shape, generator=generator) * math.sqrt(
                2.0 / value[0].numel())
        else:
            offset = 1.0 if key.endswith("weight") else 0.0
            weights[key] = offset + 0.1 * torch.randn(value.shape, generator=generator)
    return weights


def randomised(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    module.load_state_dict(random_weights(module.state_dict(), seed), strict=True)
    return module.eval()


# --- key names and shapes, derived from the original module tree --------------------------------

def batch_norm_keys(prefix: str, channels: int) -> dict:
    return {f"{prefix}.weight": (channels,), f"{prefix}.bias": (channels,),
            f"{prefix}.running_mean": (channels,), f"{prefix}.running_var": (channels,),
            f"{prefix}.num_batches_tracked": ()}


def conv_module_keys(prefix: str, in_channels: int, out_channels: int, kernel: int) -> dict:
    """mmcv ConvModule with a BN norm_cfg: conv without bias (bias='auto'), then bn."""
    return {f"{prefix}.conv.weight": (out_channels, in_channels, kernel, kernel),
            **batch_norm_keys(f"{prefix}.bn", out_channels)}


def backbone_keys() -> dict:
    """uniformer.py UniFormer(windows=False, hybrid=False): PatchEmbed (proj conv + LayerNorm),
    CBlock in blocks1-2, SABlock in blocks3-4, LayerNorm norm1..4; Mlp hidden = 4 x dim."""
    keys: dict = {}
    in_channels = 3
    for stage, (dim, depth) in enumerate(zip(EMBED, LAYERS), start=1):
        patch = 4 if stage == 1 else 2
        keys[f"patch_embed{stage}.proj.weight"] = (dim, in_channels, patch, patch)
        keys[f"patch_embed{stage}.proj.bias"] = (dim,)
        keys[f"patch_embed{stage}.norm.weight"] = (dim,)
        keys[f"patch_embed{stage}.norm.bias"] = (dim,)
        for i in range(depth):
            p = f"blocks{stage}.{i}"
            keys[f"{p}.pos_embed.weight"] = (dim, 1, 3, 3)
            keys[f"{p}.pos_embed.bias"] = (dim,)
            if stage <= 2:  # CBlock
                keys.update(batch_norm_keys(f"{p}.norm1", dim))
                keys.update(batch_norm_keys(f"{p}.norm2", dim))
                for conv in ("conv1", "conv2"):
                    keys[f"{p}.{conv}.weight"] = (dim, dim, 1, 1)
                    keys[f"{p}.{conv}.bias"] = (dim,)
                keys[f"{p}.attn.weight"] = (dim, 1, 5, 5)
                keys[f"{p}.attn.bias"] = (dim,)
                keys[f"{p}.mlp.fc1.weight"] = (4 * dim, dim, 1, 1)
                keys[f"{p}.mlp.fc2.weight"] = (dim, 4 * dim, 1, 1)
            else:  # SABlock
                for norm in ("norm1", "norm2"):
                    keys[f"{p}.{norm}.weight"] = (dim,)
                    keys[f"{p}.{norm}.bias"] = (dim,)
                keys[f"{p}.attn.qkv.weight"] = (3 * dim, dim)
                keys[f"{p}.attn.qkv.bias"] = (3 * dim,)
                keys[f"{p}.attn.proj.weight"] = (dim, dim)
                keys[f"{p}.attn.proj.bias"] = (dim,)
                keys[f"{p}.mlp.fc1.weight"] = (4 * dim, dim)
                keys[f"{p}.mlp.fc2.weight"] = (dim, 4 * dim)
            keys[f"{p}.mlp.fc1.bias"] = (4 * dim,)
            keys[f"{p}.mlp.fc2.bias"] = (dim,)
        keys[f"norm{stage}.weight"] = (dim,)
        keys[f"norm{stage}.bias"] = (dim,)
        in_channels = dim
    return keys


def decode_head_keys() -> dict:
    """uper_head.py UPerHead + psp_head.py PPM (Sequential(AdaptiveAvgPool2d, ConvModule))."""
    keys = {"conv_seg.weight": (CLASSES, UPER_CHANNELS, 1, 1), "conv_seg.bias": (CLASSES,)}
    for i in range(4):
        keys.update(conv_module_keys(f"psp_modules.{i}.1", EMBED[-1], UPER_CHANNELS, 1))
    keys.update(conv_module_keys("bottleneck", EMBED[-1] + 4 * UPER_CHANNELS, UPER_CHANNELS, 3))
    for i, channels in enumerate(EMBED[:-1]):
        keys.update(conv_module_keys(f"lateral_convs.{i}", channels, UPER_CHANNELS, 1))
        keys.update(conv_module_keys(f"fpn_convs.{i}", UPER_CHANNELS, UPER_CHANNELS, 3))
    keys.update(conv_module_keys("fpn_bottleneck", 4 * UPER_CHANNELS, UPER_CHANNELS, 3))
    return keys


def auxiliary_head_keys() -> dict:
    """fcn_head.py FCNHead(num_convs=1, concat_input=False) on stage 3."""
    return {**conv_module_keys("convs.0", AUX_IN, AUX_CHANNELS, 3),
            "conv_seg.weight": (CLASSES, AUX_CHANNELS, 1, 1), "conv_seg.bias": (CLASSES,)}


def prefixed(prefix: str, keys: dict) -> dict:
    return {prefix + key: value for key, value in keys.items()}


def published_keys(with_auxiliary: bool = True) -> dict:
    keys = {**prefixed("backbone.", backbone_keys()), **prefixed("decode_head.", decode_head_keys())}
    if with_auxiliary:
        keys.update(prefixed("auxiliary_head.", auxiliary_head_keys()))
    return keys


def learned_count(shapes: dict) -> int:
    """Parameters only: BN running statistics and batch counters are buffers."""
    return sum(math.prod(shape) for key, shape in shapes.items()
               if key.rsplit(".", 1)[1] not in ("running_mean", "running_var", "num_batches_tracked"))


def test_state_dict_matches_the_published_key_list():
    got = {k: tuple(v.shape) for k, v in UniFormerSegmentationNetwork().state_dict().items()}
    assert got == published_keys(with_auxiliary=False)


def test_parameter_count_is_the_papers():
    # The paper counts the training model, auxiliary head included; we leave that head out.
    assert round(learned_count(published_keys()) / 1e6) == PAPER_PARAMETER_MILLIONS
    ours = sum(p.numel() for p in UniFormerSegmentationNetwork().parameters())
    assert ours == learned_count(published_keys(with_auxiliary=False))


# --- backbone blocks against torch.nn.functional -----------------------------------------------

def batch_norm(x, state, prefix):
    return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                        state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)


def conv(x, state, prefix, **kwargs):
    return F.conv2d(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"], **kwargs)


def f_conv_block(x, state, p=""):
    """CBlock.forward: x + pos_embed(x); x + conv2(attn(conv1(norm1(x)))); x + mlp(norm2(x))."""
    dim = x.shape[1]
    x = x + conv(x, state, f"{p}pos_embed", padding=1, groups=dim)
    y = conv(batch_norm(x, state, f"{p}norm1"), state, f"{p}conv1")
    y = conv(conv(y, state, f"{p}attn", padding=2, groups=dim), state, f"{p}conv2")
    x = x + y
    y = conv(F.gelu(conv(batch_norm(x, state, f"{p}norm2"), state, f"{p}mlp.fc1")), state, f"{p}mlp.fc2")
    return x + y


def layer_norm(x, state, prefix, eps):
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"], eps)


def linear(x, state, prefix):
    return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])


def f_attention(tokens, state, p):
    """Attention.forward with the softmax written out: heads of 64, scale 64 ** -0.5."""
    b, n, c = tokens.shape
    heads = c // HEAD_DIM
    qkv = linear(tokens, state, f"{p}qkv").reshape(b, n, 3, heads, HEAD_DIM)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # b, heads, n, 64
    weights = torch.softmax(q @ k.transpose(-2, -1) * HEAD_DIM ** -0.5, dim=-1)
    return linear((weights @ v).transpose(1, 2).reshape(b, n, c), state, f"{p}proj")


def f_attention_block(x, state, p=""):
    """SABlock.forward: pos_embed residual, then tokens: + attn(norm1), + mlp(norm2)."""
    b, c, h, w = x.shape
    x = x + conv(x, state, f"{p}pos_embed", padding=1, groups=c)
    t = x.flatten(2).transpose(1, 2)
    t = t + f_attention(layer_norm(t, state, f"{p}norm1", 1e-6), state, f"{p}attn.")
    hidden = F.gelu(linear(layer_norm(t, state, f"{p}norm2", 1e-6), state, f"{p}mlp.fc1"))
    t = t + linear(hidden, state, f"{p}mlp.fc2")
    return t.transpose(1, 2).reshape(b, c, h, w)


def f_channel_norm(x, state, prefix, eps):
    return layer_norm(x.permute(0, 2, 3, 1), state, prefix, eps).permute(0, 3, 1, 2)


def f_patch_embed(x, state, p, patch):
    """PatchEmbed.forward: conv kernel = stride = patch; nn.LayerNorm(dim), default eps 1e-5."""
    return f_channel_norm(conv(x, state, f"{p}proj", stride=patch), state, f"{p}norm", 1e-5)


def f_backbone(x, state):
    """UniFormer.forward_features: each stage's output is norm_i(x); the next stage continues
    from the un-normalised x."""
    outputs = []
    for stage, depth in enumerate(LAYERS, start=1):
        x = f_patch_embed(x, state, f"patch_embed{stage}.", 4 if stage == 1 else 2)
        for i in range(depth):
            block = f_conv_block if stage <= 2 else f_attention_block
            x = block(x, state, f"blocks{stage}.{i}.")
        outputs.append(f_channel_norm(x, state, f"norm{stage}", 1e-6))
    return outputs


def assert_close_relative(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = max(1.0, float(expected.abs().max()))
    assert float((got - expected).abs().max()) <= RAW_TOLERANCE * scale


@pytest.mark.parametrize("block, functional, dim", [
    (ConvBlock, f_conv_block, 64), (AttentionBlock, f_attention_block, 128)])
def test_backbone_block_equals_functional(block, functional, dim):
    module = randomised(block(dim), seed=dim)
    x = torch.randn(1, dim, 9, 13, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = module(x)
    expected = functional(x, module.state_dict())
    assert_close_relative(got, expected)
    assert float((expected - x).std()) > 0.1  # the block changes its input


def test_patch_embed_drops_the_remainder_and_normalises_with_eps_1e5():
    module = randomised(PatchEmbed(3, 64, 4), seed=7)
    x = torch.randn(1, 3, 30, 23, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = module(x)
    assert got.shape == (1, 64, 7, 5)  # floor(30 / 4), floor(23 / 4)
    assert_close_relative(got, f_patch_embed(x, module.state_dict(), "", 4))


@pytest.fixture(scope="module")
def backbone() -> UniFormerBackbone:
    return randomised(UniFormerBackbone(), seed=3)


def test_backbone_equals_functional_composition(backbone):
    x = torch.randn(1, 3, 100, 140, generator=torch.Generator().manual_seed(4))  # not /32
    with torch.no_grad():
        got = backbone(x)
    expected = f_backbone(x, backbone.state_dict())
    assert [tuple(g.shape) for g in got] == [(1, 64, 25, 35), (1, 128, 12, 17),
                                             (1, 320, 6, 8), (1, 512, 3, 4)]
    for g, e in zip(got, expected):
        assert_close_relative(g, e)
        assert float(e.std()) > 0.5  # layer-normalised maps: far from flat


# --- decode head and pipeline against mmsegmentation --------------------------------------------

def import_mmseg():
    """mmseg with mmcv-lite (see tests/annotators/openmmlab.py)."""
    return import_openmmlab("mmseg.models")


BN = dict(type="BN", requires_grad=True)
UPER_CFG = dict(type="UPerHead", in_channels=list(EMBED), in_index=[0, 1, 2, 3],
                pool_scales=(1, 2, 3, 6), channels=UPER_CHANNELS, dropout_ratio=0.1,
                num_classes=CLASSES, norm_cfg=BN, align_corners=False)
AUX_CFG = dict(type="FCNHead", in_channels=AUX_IN, in_index=2, channels=AUX_CHANNELS, num_convs=1,
               concat_input=False, dropout_ratio=0.1, num_classes=CLASSES, norm_cfg=BN,
               align_corners=False)


def test_decode_head_equals_mmseg_uperhead(backbone):
    mmseg_models = import_mmseg()
    from mmseg.registry import MODELS

    oracle = MODELS.build(UPER_CFG).eval()
    assert isinstance(oracle, mmseg_models.decode_heads.UPerHead)
    weights = random_weights(oracle.state_dict(), seed=5)
    oracle.load_state_dict(weights, strict=True)
    ours = UPerHead().eval()
    ours.load_state_dict(weights, strict=True)
    assert {k: tuple(v.shape) for k, v in weights.items()} == decode_head_keys()
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 100, 140, generator=torch.Generator().manual_seed(6)))
        expected, got = oracle(features), ours(features)
    assert expected.shape == (1, CLASSES, 25, 35)
    assert_close_relative(got, expected)
    assert float(expected.std()) > 0.1


def test_auxiliary_head_keys_are_mmseg_fcnhead_keys():
    import_mmseg()
    from mmseg.registry import MODELS

    oracle = MODELS.build(AUX_CFG)
    assert {k: tuple(v.shape) for k, v in oracle.state_dict().items()} == auxiliary_head_keys()


def mmseg_segmentor(head_channels: int):
    """mmseg's EncoderDecoder (whole-image test mode) around our backbone; the heads are
    mmseg's own."""
    import_mmseg()
    from mmseg.registry import MODELS

    from mmengine.config import ConfigDict

    name = "ControlNetSuiteTestUniFormer"
    if name not in MODELS.module_dict:
        MODELS.register_module(name=name, module=UniFormerBackbone)
    return MODELS.build(dict(
        type="EncoderDecoder", backbone=dict(type=name),
        decode_head={**UPER_CFG, "channels": head_channels},
        auxiliary_head=AUX_CFG, test_cfg=ConfigDict(mode="whole"))).eval()


def mmseg_v1_labels(segmentor, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ControlNet 1.0's inference_segmentor, in mmseg 1.x terms: mmcv.imread passes the RGB
    array through as "BGR"; Resize(keep_ratio) = mmcv.imrescale(img, (2048, 512));
    Normalize(to_rgb=True) = mmcv.imnormalize; whole inference; logits resized to the input,
    then to ori_shape; argmax. Returns (labels, top-2 logit margin)."""
    import mmcv
    from mmseg.structures import SegDataSample

    resized = mmcv.imrescale(rgb, (2048, 512))
    normalised = mmcv.imnormalize(resized, np.array([123.675, 116.28, 103.53]),
                                  np.array([58.395, 57.12, 57.375]), to_rgb=True)
    inputs = torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))[None].float()
    sample = SegDataSample(metainfo=dict(img_shape=resized.shape[:2], ori_shape=rgb.shape[:2]))
    with torch.no_grad():
        result = segmentor.predict(inputs, [sample])[0]
    logits = result.seg_logits.data
    top2 = logits.topk(2, dim=0).values
    return result.pred_sem_seg.data[0].numpy(), (top2[0] - top2[1]).numpy()


MIN_CLASSES = 5
MIN_DECIDED_FRACTION = 0.99
DECIDED_MARGIN = 1e-3  # pixels whose top two logits differ by less may go either way


@pytest.fixture(scope="module")
def published_pair(tmp_path_factory):
    """(mmseg segmentor, our network filled by the loader's reading of a file in the published
    layout: {'meta': ..., 'state_dict': ...} with backbone./decode_head./auxiliary_head. keys)."""
    segmentor = mmseg_segmentor(TINY_HEAD)
    weights = random_weights(segmentor.state_dict(), seed=8)
    segmentor.load_state_dict(weights, strict=True)
    folder = tmp_path_factory.mktemp("annotators")
    meta = {"CLASSES": tuple(f"class {i}" for i in range(CLASSES)), "PALETTE": ADE20K_PALETTE}
    torch.save({"meta": meta, "state_dict": weights}, folder / UNIFORMER_WEIGHTS)
    network = UniFormerSegmentationNetwork(head_channels=TINY_HEAD)
    network.load_state_dict(uniformer_state_dict([str(folder)]), strict=True)
    return segmentor.eval(), network.eval()


@pytest.fixture(scope="module")
def narrow_network() -> UniFormerSegmentationNetwork:
    return randomised(UniFormerSegmentationNetwork(head_channels=TINY_HEAD), seed=11)


def test_labels_equal_mmseg_pipeline(published_pair):
    segmentor, network = published_pair
    expected, margin = mmseg_v1_labels(segmentor, SMALL_PHOTO)
    got = segment_labels(SMALL_PHOTO, network)
    assert got.shape == expected.shape == (100, 70)
    assert len(np.unique(expected)) >= MIN_CLASSES
    decided = margin > DECIDED_MARGIN
    assert float(np.mean(decided)) > MIN_DECIDED_FRACTION
    np.testing.assert_array_equal(got[decided], expected[decided])


def test_preprocessing_equals_mmcv():
    import_mmseg()
    import mmcv

    for shape in ((100, 70), (64, 64), (300, 2000), (700, 900)):
        rgb = cv2.resize(PHOTO, shape[::-1], interpolation=cv2.INTER_AREA)
        expected = mmcv.imrescale(rgb, (2048, 512))
        assert rescaled_size(*shape) == expected.shape[:2]
        resized = cv2.resize(rgb, expected.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(resized, expected)
    expected = mmcv.imnormalize(SMALL_PHOTO, np.array([123.675, 116.28, 103.53]),
                                np.array([58.395, 57.12, 57.375]), to_rgb=True)
    np.testing.assert_allclose(network_input(SMALL_PHOTO), expected, rtol=0, atol=1e-5)


# --- pipeline properties without mmseg ---------------------------------------------------------

def test_network_sees_bgr_normalised_with_rgb_statistics():
    # Written out from ade20k.py img_norm_cfg and ControlNet passing RGB where mmcv expects BGR.
    rgb = SMALL_PHOTO[:4, :5]
    expected = np.stack([(rgb[:, :, 2] - 123.675) / 58.395, (rgb[:, :, 1] - 116.28) / 57.12,
                         (rgb[:, :, 0] - 103.53) / 57.375], axis=2)
    np.testing.assert_allclose(network_input(rgb), expected, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape, expected", [
    ((512, 512), (512, 512)),     # the default detect size is already at the limits
    ((100, 70), (731, 512)),      # 100 * 512/70 = 731.43: short side to 512
    ((300, 2000), (307, 2048)),   # long side to 2048 first: 300 * 1.024 = 307.2
    ((1024, 1536), (512, 768)),   # shrinks too
])
def test_rescaled_size(shape, expected):
    assert rescaled_size(*shape) == expected


def test_network_logits_come_back_at_input_size(narrow_network):
    network = narrow_network
    with torch.no_grad():
        logits = network(torch.zeros(1, 3, 70, 90))
    assert logits.shape == (1, CLASSES, 70, 90)


# A smaller stand-in for the (2048, 512) rescale limits where only the glue around the network
# is under test: the pipeline would otherwise run the network at a short side of 512.
SMALL_LIMITS = (256, 64)


def test_map_is_the_palette_at_the_image_size(narrow_network, monkeypatch):
    import annotators.uniformer as module

    monkeypatch.setattr(module, "RESCALE_LIMITS", SMALL_LIMITS)
    network = narrow_network
    image = PHOTO[:300, :210]
    got = uniformer_segmentation(image, network, resolution=128)
    # resolution 128: 300x210 -> 192x128 (multiples of 64) -> labels -> colours -> nearest back.
    at_detect = resize_for_detection(image, 128)
    assert at_detect.shape[:2] == (192, 128)
    labels = segment_labels(at_detect, network)
    palette = np.asarray(ADE20K_PALETTE, dtype=np.uint8)
    expected = cv2.resize(palette[labels], (210, 300), interpolation=cv2.INTER_NEAREST)
    assert got.dtype == np.uint8 and got.shape == (300, 210, 3)
    np.testing.assert_array_equal(got, expected)
    colours = {tuple(c) for c in got.reshape(-1, 3)}
    assert len(colours) >= MIN_CLASSES and colours <= {tuple(c) for c in ADE20K_PALETTE}


def test_labels_at_the_rescaled_size_come_back_at_the_image_size(narrow_network, monkeypatch):
    import annotators.uniformer as module

    monkeypatch.setattr(module, "RESCALE_LIMITS", SMALL_LIMITS)
    rgb = SMALL_PHOTO  # 100x70 -> 91x64 at these limits: min(256/100, 64/70)
    resized = cv2.resize(rgb, (64, 91), interpolation=cv2.INTER_LINEAR)
    batch = torch.from_numpy(network_input(resized)).permute(2, 0, 1)[None]
    with torch.no_grad():
        logits = narrow_network(batch)
    expected = F.interpolate(logits, size=(100, 70), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(segment_labels(rgb, narrow_network),
                                  expected.argmax(dim=1)[0].numpy())


# --- loading ------------------------------------------------------------------------------------

def distinct_weights(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Cheap, different per key (the full network has 50M values; random draws are slow)."""
    return {key: torch.full_like(value, float(index % 97)) if value.is_floating_point()
            else value.clone() for index, (key, value) in enumerate(network.state_dict().items())}


def test_loader_drops_only_the_auxiliary_head(tmp_path):
    weights = distinct_weights(UniFormerSegmentationNetwork())
    auxiliary = {k: torch.zeros(shape) for k, shape in prefixed("auxiliary_head.", auxiliary_head_keys()).items()}
    torch.save({"state_dict": {**weights, **auxiliary}}, tmp_path / UNIFORMER_WEIGHTS)
    network = load_uniformer([str(tmp_path / "elsewhere"), str(tmp_path)], dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in network.parameters())
    assert_loaded(network.float(), weights)


def test_loader_is_strict(tmp_path):
    weights = distinct_weights(UniFormerSegmentationNetwork())
    del weights["backbone.blocks3.7.attn.qkv.bias"]
    torch.save({"state_dict": weights}, tmp_path / UNIFORMER_WEIGHTS)
    with pytest.raises(RuntimeError,
                       match=r'Missing key\(s\) in state_dict: "backbone\.blocks3\.7\.attn\.qkv\.bias"'):
        load_uniformer([str(tmp_path)])
