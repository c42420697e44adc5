"""Depth Anything V2 against transformers' DepthAnythingForDepthEstimation (with its Dinov2Backbone),
with identical random weights, and the pipeline against a numpy / OpenCV write-up of the original
`infer_image` (DepthAnything/Depth-Anything-V2 depth_anything_v2/dpt.py) followed by
comfyui_controlnet_aux's normalisation (DepthAnythingV2Detector.__call__).

The oracle is built from tiny configs (DepthAnythingConfig around a Dinov2Config), never
from_pretrained, with HF_HUB_OFFLINE=1. Our network gets a tiny state dict in the original
layout (`pretrained.*`, `depth_head.*`); the oracle gets the same tensors under transformers'
names, by `to_transformers`, whose mapping comes from two places:
  1. transformers' conversion script src/transformers/models/depth_anything/
     convert_depth_anything_to_hf.py (read from huggingface/transformers at commit 23925e16; the
     installed wheel does not ship it): `create_rename_keys` (refinenet i -> fusion_stage layer
     4 - i, output_conv2.0 / .2 -> head.conv2 / conv3, ...), `read_in_q_k_v` (qkv split in
     thirds: query, key, value), and `get_dpt_config` (V2 out_indices = intermediate_layer_idx
     + 1: hidden state 0 is the embeddings). The SwiGLU feed-forward of vitg is not in that
     script; src/transformers/models/dinov2/convert_dinov2_to_hf.py renames w12 -> weights_in
     and w3 -> weights_out;
  2. the renames transformers 5 applies when it loads such converted checkpoints
     (transformers/conversion_mapping.py, "Dinov2Model"): attention.attention.{query,key,value}
     -> attention.{q,k,v}_proj, attention.output.dense -> attention.o_proj, weights_in chunked
     in two along dim 0 -> gate_proj, up_proj, weights_out -> down_proj.

Position embeddings: the original resizes the trained s x s grid with
F.interpolate(scale_factor=((h + 0.1) / s, (w + 0.1) / s), bicubic) -- DINOv2's
interpolate_offset=0.1 -- while transformers' Dinov2Embeddings.interpolate_pos_encoding resizes
to size=(h, w). Both give h x w embeddings, but with scale factors PyTorch maps output pixel i
to source (i + 0.5) * s / (h + 0.1) - 0.5 instead of (i + 0.5) * s / h - 0.5, so the
embeddings differ wherever the grid is resized (by a few percent of their spread here). At the
native grid (square, s x s tokens) neither resizes and the oracle is compared as it is. Where
the grid is resized, the oracle runs with its interpolate_pos_encoding replaced by
`original_position_rule`, a numpy write-up of the original rule (bicubic weights written out,
Keys' kernel with a = -0.75 as PyTorch's), which is also checked to give transformers' own
embeddings with the offset set to 0.

Random weights are fan-in scaled (He) so activations stay of order one (test_midas.py's recipe;
the x4 / x2 transposed convolutions, whose stride equals their kernel, have their input channels
as fan-in); the position embeddings are drawn at the scale of the patch tokens so that the
interpolation rule shows in the output, and the last convolution is scaled down around a
positive bias so that the final ReLU keeps most pixels. Maps are checked not to be degenerate.
"""

from __future__ import annotations

import math
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces: the oracle must never reach the hub

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from skimage import data  # noqa: E402

transformers = pytest.importorskip("transformers")
dinov2_modeling = pytest.importorskip("transformers.models.dinov2.modeling_dinov2")

from annotators.depth_anything import (DEPTH_ANYTHING_V2_LARGE, DEPTH_ANYTHING_V2_SMALL,  # noqa: E402
                                       depth_anything, depth_to_map, encoder_from_weights,
                                       load_depth_anything, network_input_size, relative_depth)
from annotators.depth_anything_network import (ENCODERS, PATCH_SIZE,  # noqa: E402
                                               DepthAnythingV2Network, EncoderSize,
                                               interpolate_position_embedding)
from annotators.image import resize_for_detection  # noqa: E402
from annotators.weights import BadWeightsError  # noqa: E402

from .parity import assert_levels_within_rounding  # noqa: E402
from .random_learned import DEPTH_ANYTHING_TEST_GRID, DEPTH_ANYTHING_TEST_WIDTHS  # noqa: E402

SEED = 0
# Raw outputs: equal within this, relative to the output's largest magnitude. Measured here:
# 0 at the native grid (bit-equal), ~2e-6 where the grid is resized (float64 write-up of the
# position rule), ~1e-5 through the whole pipeline (float64 bilinear write-up).
RAW_TOLERANCE = 5e-5
# Tiny configurations: 4 x 4 trained grid (56 pixels); blocks read out not simply the last four.
TINY_GRID = DEPTH_ANYTHING_TEST_GRID
TINY = EncoderSize("tiny", **DEPTH_ANYTHING_TEST_WIDTHS)
TINY_SWIGLU = EncoderSize("tiny-swiglu", embed_dim=48, depth=4, heads=3, swiglu=True, layers=(0, 1, 2, 3),
                          features=16, out_channels=(8, 16, 24, 32))
NOISE = 0.1                    # biases, norm shifts; norm and layer scales are 1 +- this
TOKEN_SCALE = 1.0              # class token, mask token and position embeddings: N(0, 1)
# The last 1x1 conv's output before the final ReLU: He-scaled it swings by about +-10 around an
# input-dependent mean, so the ReLU zeroes most of some maps. Scaled down around a positive
# bias, most pixels stay positive and the maps keep their spread.
HEAD_OUTPUT_SCALE = 0.05
HEAD_OUTPUT_BIAS = 1.0
HEAD_OUTPUT = "depth_head.scratch.output_conv2.2"
# PyTorch's bicubic interpolation: Keys' cubic convolution kernel with a = -0.75
# (aten/src/ATen/native/UpSample.h, cubic_convolution1 / 2).
CUBIC_A = -0.75
ORIGINAL_OFFSET = 0.1          # dinov2.py DINOv2(interpolate_offset=0.1)
# The original's preprocessing constants, written out again (dpt.py image2tensor).
INPUT_SIZE = 518
MULTIPLE = 14
MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

PHOTO = data.astronaut()[:, 85:427]  # a 3:2 crop, 512 x 342
# The network sees both at 784 x 518: one enlarged (cubic overshoot), one shrunk.
PHOTO_96 = cv2.resize(PHOTO, (64, 96), interpolation=cv2.INTER_AREA)
PHOTO_900 = cv2.resize(PHOTO, (600, 900), interpolation=cv2.INTER_CUBIC)
MIN_MAP_LEVELS = 64
MIN_POSITIVE_SHARE = 0.25


# --- weights ---------------------------------------------------------------------------------------

def template(size: EncoderSize | str, grid: int = TINY_GRID) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only
        return DepthAnythingV2Network(size, position_grid=grid).state_dict()


TRANSPOSED_CONVS = ("depth_head.resize_layers.0.weight", "depth_head.resize_layers.1.weight")
TOKENS = ("pretrained.cls_token", "pretrained.mask_token", "pretrained.pos_embed")


def random_original_weights(shapes: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for key, value in shapes.items():
        noise = torch.randn(value.shape, generator=generator)
        if key in TOKENS:
            weights[key] = TOKEN_SCALE * noise
        elif key in TRANSPOSED_CONVS:  # [in, out, k, k], stride k: each output sees `in` inputs
            weights[key] = noise * math.sqrt(2.0 / value.shape[0])
        elif value.ndim >= 2:
            weights[key] = noise * math.sqrt(2.0 / value[0].numel())
        elif key.endswith("weight") or key.endswith("gamma"):
            weights[key] = 1.0 + NOISE * noise
        else:
            weights[key] = NOISE * noise
    weights[f"{HEAD_OUTPUT}.weight"] = weights[f"{HEAD_OUTPUT}.weight"] * HEAD_OUTPUT_SCALE
    weights[f"{HEAD_OUTPUT}.bias"] = torch.full_like(weights[f"{HEAD_OUTPUT}.bias"], HEAD_OUTPUT_BIAS)
    return weights


def to_transformers(original: dict[str, torch.Tensor], size: EncoderSize) -> dict[str, torch.Tensor]:
    """The original-layout tensors under transformers 5's names (module docstring, 1 then 2)."""
    renamed = {
        "pretrained.cls_token": "backbone.embeddings.cls_token",
        "pretrained.mask_token": "backbone.embeddings.mask_token",
        "pretrained.pos_embed": "backbone.embeddings.position_embeddings",
        "pretrained.patch_embed.proj.weight": "backbone.embeddings.patch_embeddings.projection.weight",
        "pretrained.patch_embed.proj.bias": "backbone.embeddings.patch_embeddings.projection.bias",
        "pretrained.norm.weight": "backbone.layernorm.weight",
        "pretrained.norm.bias": "backbone.layernorm.bias",
        "depth_head.scratch.output_conv1.weight": "head.conv1.weight",
        "depth_head.scratch.output_conv1.bias": "head.conv1.bias",
        "depth_head.scratch.output_conv2.0.weight": "head.conv2.weight",
        "depth_head.scratch.output_conv2.0.bias": "head.conv2.bias",
        "depth_head.scratch.output_conv2.2.weight": "head.conv3.weight",
        "depth_head.scratch.output_conv2.2.bias": "head.conv3.bias",
    }
    for i in range(size.depth):
        block, layer = f"pretrained.blocks.{i}", f"backbone.encoder.layer.{i}"
        renamed[f"{block}.ls1.gamma"] = f"{layer}.layer_scale1.lambda1"
        renamed[f"{block}.ls2.gamma"] = f"{layer}.layer_scale2.lambda1"
        for part in ("weight", "bias"):
            renamed[f"{block}.norm1.{part}"] = f"{layer}.norm1.{part}"
            renamed[f"{block}.norm2.{part}"] = f"{layer}.norm2.{part}"
            renamed[f"{block}.attn.proj.{part}"] = f"{layer}.attention.o_proj.{part}"
            if size.swiglu:
                renamed[f"{block}.mlp.w3.{part}"] = f"{layer}.mlp.down_proj.{part}"
            else:
                renamed[f"{block}.mlp.fc1.{part}"] = f"{layer}.mlp.fc1.{part}"
                renamed[f"{block}.mlp.fc2.{part}"] = f"{layer}.mlp.fc2.{part}"
    for i in range(4):
        for part in ("weight", "bias"):
            renamed[f"depth_head.projects.{i}.{part}"] = f"neck.reassemble_stage.layers.{i}.projection.{part}"
            if i != 2:  # resize_layers.2 is an identity
                renamed[f"depth_head.resize_layers.{i}.{part}"] = f"neck.reassemble_stage.layers.{i}.resize.{part}"
        renamed[f"depth_head.scratch.layer{i + 1}_rn.weight"] = f"neck.convs.{i}.weight"
    refinenet_to_fusion_layer = {1: 3, 2: 2, 3: 1, 4: 0}  # the script's "tricky" mapping
    for refinenet, layer in refinenet_to_fusion_layer.items():
        source, target = f"depth_head.scratch.refinenet{refinenet}", f"neck.fusion_stage.layers.{layer}"
        for part in ("weight", "bias"):
            renamed[f"{source}.out_conv.{part}"] = f"{target}.projection.{part}"
            for unit in (1, 2):
                for conv in (1, 2):
                    renamed[f"{source}.resConfUnit{unit}.conv{conv}.{part}"] = (
                        f"{target}.residual_layer{unit}.convolution{conv}.{part}")

    converted = {}
    for key, value in original.items():
        if key in renamed:
            converted[renamed[key]] = value
            continue
        if ".attn.qkv." in key:  # read_in_q_k_v: query, key, value thirds
            block, _, rest = key.rpartition(".attn.qkv.")
            layer = block.replace("pretrained.blocks.", "backbone.encoder.layer.")
            for name, third in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                converted[f"{layer}.attention.{name}.{rest}"] = third
            continue
        if ".mlp.w12." in key:  # w12 -> weights_in -> chunk(dim=0) -> gate_proj, up_proj
            block, _, rest = key.rpartition(".mlp.w12.")
            layer = block.replace("pretrained.blocks.", "backbone.encoder.layer.")
            gate, up = value.chunk(2, dim=0)
            converted[f"{layer}.mlp.gate_proj.{rest}"] = gate
            converted[f"{layer}.mlp.up_proj.{rest}"] = up
            continue
        raise AssertionError(f"{key} has no transformers counterpart")
    return converted


def transformers_config(size: EncoderSize, grid: int = TINY_GRID):
    """get_dpt_config's recipe for one of our sizes (relative depth: max_depth 1, ReLU head)."""
    backbone = transformers.Dinov2Config(
        hidden_size=size.embed_dim, num_hidden_layers=size.depth, num_attention_heads=size.heads,
        mlp_ratio=4, use_swiglu_ffn=size.swiglu, image_size=grid * PATCH_SIZE, patch_size=PATCH_SIZE,
        layer_norm_eps=1e-6, layerscale_value=1.0, qkv_bias=True, hidden_act="gelu",
        out_indices=[layer + 1 for layer in size.layers], apply_layernorm=True, reshape_hidden_states=False)
    return transformers.DepthAnythingConfig(
        backbone_config=backbone, reassemble_hidden_size=size.embed_dim, patch_size=PATCH_SIZE,
        neck_hidden_sizes=list(size.out_channels), fusion_hidden_size=size.features,
        reassemble_factors=[4, 2, 1, 0.5], head_hidden_size=32, depth_estimation_type="relative", max_depth=1)


def build_pair(size: EncoderSize, seed: int):
    """(ours, oracle, the original-layout weights) with the same random weights."""
    weights = random_original_weights(template(size), seed)
    ours = DepthAnythingV2Network(size, position_grid=TINY_GRID)
    ours.load_state_dict(weights, strict=True)
    oracle = transformers.DepthAnythingForDepthEstimation(transformers_config(size))
    oracle.load_state_dict(to_transformers(weights, size), strict=True)
    return ours.eval(), oracle.eval(), weights


@pytest.fixture(scope="module")
def tiny():
    return build_pair(TINY, SEED)


# --- the position-embedding rule, written out ------------------------------------------------------

def cubic_weights(t: float) -> np.ndarray:
    """Keys' kernel at the four taps around a source position with fraction t."""
    def near(x):  # |x| <= 1
        return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A

    return np.array([far(t + 1), near(t), near(1 - t), far(2 - t)])


def bicubic_axis(array: np.ndarray, axis: int, size: int, source_per_output: float) -> np.ndarray:
    """Resample one axis: output pixel i reads source (i + 0.5) * source_per_output - 0.5 (half-pixel
    centres, not clamped for cubic), taps outside the array clamped to its edge."""
    count = array.shape[axis]
    rows = []
    for i in range(size):
        source = (i + 0.5) * source_per_output - 0.5
        base = math.floor(source)
        taps = [min(max(base - 1 + k, 0), count - 1) for k in range(4)]
        weights = cubic_weights(source - base)
        rows.append(sum(w * np.take(array, tap, axis=axis) for w, tap in zip(weights, taps)))
    return np.stack(rows, axis=axis)


def original_position_rule(embedding: np.ndarray, grid_height: int, grid_width: int,
                           offset: float = ORIGINAL_OFFSET) -> np.ndarray:
    """[1, 1 + s*s, D] -> [1, 1 + h*w, D]: dinov2.py interpolate_pos_encoding in float64. The scale
    factor (h + offset) / s makes PyTorch read source pixels s / (h + offset) apart; offset 0 is
    transformers' size=(h, w)."""
    positions = embedding.shape[1] - 1
    side = math.isqrt(positions)
    grid = embedding[0, 1:].reshape(side, side, -1)
    grid = bicubic_axis(grid, 0, grid_height, side / (grid_height + offset))
    grid = bicubic_axis(grid, 1, grid_width, side / (grid_width + offset))
    return np.concatenate([embedding[:, :1], grid.reshape(1, grid_height * grid_width, -1)], axis=1)


def with_original_rule(oracle):
    """The oracle's embeddings resized by original_position_rule (for the patch below)."""
    def interpolate_pos_encoding(self, embeddings, height, width):
        table = self.position_embeddings.detach().double().numpy()
        resized = original_position_rule(table, height // PATCH_SIZE, width // PATCH_SIZE)
        return torch.from_numpy(resized).to(embeddings.dtype)
    return interpolate_pos_encoding


def raw(network, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = network(x)
    return out.predicted_depth if hasattr(out, "predicted_depth") else out


def assert_raw_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= RAW_TOLERANCE * scale


def assert_not_degenerate_raw(depth: torch.Tensor) -> None:
    """ReLU'd depth that varies: a good share positive, clearly spread."""
    assert float((depth > 0).float().mean()) > MIN_POSITIVE_SHARE
    assert float(depth.std()) > 0.05 * float(depth.abs().max())


def random_input(height: int, width: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- the network -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["vits", "vitb", "vitl"])
def test_published_sizes_have_transformers_keys_and_shapes(name):
    """At the published sizes (37 x 37 grid), every key maps onto a transformers key of the
    same shape and none is left over: the layout the conversion script reads from the files."""
    size = ENCODERS[name]
    ours = template(name, grid=37)
    with torch.device("meta"):
        oracle = transformers.DepthAnythingForDepthEstimation(transformers_config(size, grid=37))
    expected = {key: value.shape for key, value in oracle.state_dict().items()}
    got = {key: value.shape for key, value in to_transformers(ours, size).items()}
    assert got == expected


def test_raw_output_equals_oracle_at_the_native_grid(tiny):
    ours, oracle, _ = tiny
    x = random_input(TINY_GRID * PATCH_SIZE, TINY_GRID * PATCH_SIZE)
    expected = raw(oracle, x)
    assert expected.shape == (1, 56, 56)
    assert_not_degenerate_raw(expected)
    assert_raw_close(raw(ours, x), expected)


@pytest.mark.parametrize("grid_height, grid_width", [(5, 7), (3, 2), (4, 6), (6, 6)])
def test_position_rule_is_the_written_out_original(tiny, grid_height, grid_width):
    """Ours equals the write-up with the +0.1 offset; the write-up with offset 0 equals
    transformers' own interpolation, and the two rules differ clearly."""
    _, oracle, weights = tiny
    table = weights["pretrained.pos_embed"]
    height, width = grid_height * PATCH_SIZE, grid_width * PATCH_SIZE
    got = interpolate_position_embedding(table, height, width).double().numpy()
    expected = original_position_rule(table.double().numpy(), grid_height, grid_width)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    embeddings = oracle.backbone.embeddings
    with torch.no_grad():
        tokens = torch.zeros(1, 1 + grid_height * grid_width, TINY.embed_dim)
        theirs = embeddings.interpolate_pos_encoding(tokens, height, width).double().numpy()
    np.testing.assert_allclose(theirs, original_position_rule(table.double().numpy(), grid_height,
                                                              grid_width, offset=0.0), rtol=0, atol=1e-5)
    assert np.abs(got - theirs).max() > 0.01


def test_the_trained_square_grid_is_not_resized(tiny):
    _, _, weights = tiny
    table = weights["pretrained.pos_embed"]
    side = TINY_GRID * PATCH_SIZE
    assert interpolate_position_embedding(table, side, side) is table
    # The trained token count (16) from a 2 x 8 grid: the original resizes, since the sides differ.
    resized = interpolate_position_embedding(table, 2 * PATCH_SIZE, 8 * PATCH_SIZE)
    assert resized.shape == table.shape and not torch.equal(resized, table)


@pytest.mark.parametrize("height, width", [(70, 98), (42, 28)])
def test_raw_output_equals_oracle_where_the_grid_is_resized(tiny, monkeypatch, height, width):
    """Enlarged (5 x 7 tokens) and shrunk (3 x 2): the oracle with the original rule matches;
    with transformers' own rule it does not."""
    ours, oracle, _ = tiny
    x = random_input(height, width, seed=2)
    got = raw(ours, x)
    theirs = raw(oracle, x)
    monkeypatch.setattr(dinov2_modeling.Dinov2Embeddings, "interpolate_pos_encoding", with_original_rule(oracle))
    expected = raw(oracle, x)
    assert expected.shape == (1, height, width)
    assert_not_degenerate_raw(expected)
    assert_raw_close(got, expected)
    scale = float(expected.abs().max())
    assert float((theirs - expected).abs().max()) > 100 * RAW_TOLERANCE * scale


def test_swiglu_encoder_equals_oracle(monkeypatch):
    """vitg's feed-forward (w12 / w3), at a resized grid."""
    ours, oracle, _ = build_pair(TINY_SWIGLU, SEED + 1)
    monkeypatch.setattr(dinov2_modeling.Dinov2Embeddings, "interpolate_pos_encoding", with_original_rule(oracle))
    x = random_input(70, 56, seed=3)
    expected = raw(oracle, x)
    assert_not_degenerate_raw(expected)
    assert_raw_close(raw(ours, x), expected)


def test_network_refuses_sides_that_are_not_multiples_of_14(tiny):
    ours, _, _ = tiny
    with pytest.raises(ValueError) as error:
        ours(torch.zeros(1, 3, 56, 60))
    assert str(error.value) == ("Depth Anything V2 needs sides that are multiples of 14, got 56x60; "
                                "resize the image (annotators.depth_anything does this for you)")


# --- the pipeline ------------------------------------------------------------------------------------

def original_size(height: int, width: int, input_size: int = INPUT_SIZE) -> tuple[int, int]:
    """util/transform.py Resize.get_size (keep_aspect_ratio, lower_bound, multiple of 14)."""
    scale_height, scale_width = input_size / height, input_size / width
    if scale_width > scale_height:
        scale_height = scale_width
    else:
        scale_width = scale_height

    def constrain(x):
        y = (np.round(x / MULTIPLE) * MULTIPLE).astype(int)
        if y < input_size:
            y = (np.ceil(x / MULTIPLE) * MULTIPLE).astype(int)
        return int(y)

    return constrain(scale_height * height), constrain(scale_width * width)


def bilinear_align_corners(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """F.interpolate(mode="bilinear", align_corners=True) in float64: corners onto corners."""
    def axis(count, size):
        position = np.arange(size) * ((count - 1) / (size - 1)) if size > 1 else np.zeros(1)
        low = np.clip(np.floor(position).astype(int), 0, count - 1)
        high = np.minimum(low + 1, count - 1)
        return low, high, position - low

    top, bottom, dy = axis(depth.shape[0], height)
    left, right, dx = axis(depth.shape[1], width)
    rows = depth[top] * (1 - dy)[:, None] + depth[bottom] * dy[:, None]
    return rows[:, left] * (1 - dx) + rows[:, right] * dx


def infer_image_write_up(rgb: np.ndarray, network, input_size: int = INPUT_SIZE) -> np.ndarray:
    """The peer's call (RGB -> BGR) into the original infer_image (BGR -> RGB, / 255, Resize,
    NormalizeImage, PrepareForNet, network, bilinear back): float64 relative depth at rgb's size."""
    height, width = rgb.shape[:2]
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) / 255.0
    new_height, new_width = original_size(height, width, input_size)
    image = cv2.resize(image, (new_width, new_height), interpolation=cv2.INTER_CUBIC)
    image = (image - MEAN) / STD
    x = torch.from_numpy(np.ascontiguousarray(np.transpose(image, (2, 0, 1))).astype(np.float32))[None]
    depth = raw(network, x)[0].double().numpy()
    return bilinear_align_corners(depth, height, width)


def peer_map(depth: np.ndarray) -> np.ndarray:
    """DepthAnythingV2Detector: (d - min) / (max - min) * 255, uint8, in float32 (infer_image
    returns float32)."""
    depth = depth.astype(np.float32)
    return ((depth - depth.min()) / (depth.max() - depth.min()) * 255.0).astype(np.uint8)


@pytest.mark.parametrize("height, width, expected", [
    (518, 518, (518, 518)),
    (480, 640, (518, 686)),   # the conversion script's test image: predicted depth 518 x 686
    (96, 64, (784, 518)),     # 777 / 14 = 55.5 rounds half to even: 56 x 14
    (600, 400, (784, 518)),
    (300, 1000, (518, 1722)),
    (1000, 509, (1022, 518)),  # round-half-even and the lower bound agree with the write-up
])
def test_network_input_size_is_the_original_resize(height, width, expected):
    assert network_input_size(height, width, INPUT_SIZE) == expected == original_size(height, width)


@pytest.fixture
def original_rule_oracle(tiny, monkeypatch):
    _, oracle, _ = tiny
    monkeypatch.setattr(dinov2_modeling.Dinov2Embeddings, "interpolate_pos_encoding", with_original_rule(oracle))
    return oracle


@pytest.mark.parametrize("photo", [PHOTO_96, PHOTO_900], ids=["enlarged", "shrunk"])
def test_relative_depth_and_map_equal_the_original_pipeline(tiny, original_rule_oracle, photo):
    """resolution=None: the original infer_image at 518 and the peer's normalisation, around
    the oracle network; ours around ours."""
    ours, _, _ = tiny
    expected_depth = infer_image_write_up(photo, original_rule_oracle)
    depth = relative_depth(photo, ours)
    assert depth.dtype == np.float32 and depth.shape == photo.shape[:2]
    scale = np.abs(expected_depth).max()
    assert np.abs(depth - expected_depth).max() <= RAW_TOLERANCE * scale
    expected_map = peer_map(expected_depth)
    assert len(np.unique(expected_map)) > MIN_MAP_LEVELS and expected_map.min() == 0 and expected_map.max() == 255
    got = depth_anything(photo, ours, resolution=None)
    assert got.shape == photo.shape and got.dtype == np.uint8
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2])
    assert_levels_within_rounding(got[..., 0], expected_map, RAW_TOLERANCE)


def test_detect_resolution_resizes_first_and_brings_the_map_back(tiny):
    """resolution=128 on a 900 x 600 photo: detected on the 192 x 128 resize (which the network
    sees at 784 x 518), the map bilinearly back to 900 x 600."""
    ours, _, _ = tiny
    detect = resize_for_detection(PHOTO_900, 128)
    assert detect.shape[:2] == (192, 128)
    at_detect = depth_to_map(relative_depth(detect, ours))
    expected = cv2.resize(np.repeat(at_detect[..., None], 3, axis=2), (600, 900), interpolation=cv2.INTER_LINEAR)
    got = depth_anything(PHOTO_900, ours, resolution=128)
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(got)) > MIN_MAP_LEVELS


def test_depth_map_is_the_peer_normalisation_and_flat_depth_is_black():
    rng = np.random.default_rng(0)
    depth = rng.normal(3.0, 1.0, (20, 30)).astype(np.float32)
    np.testing.assert_array_equal(depth_to_map(depth), peer_map(depth))
    assert not depth_to_map(np.full((4, 5), 2.5, np.float32)).any()


def test_near_is_bright():
    """A larger network output (nearer) gives a brighter pixel: the map is not inverted."""
    depth = np.linspace(0.0, 4.0, 12, dtype=np.float32).reshape(3, 4)
    levels = depth_to_map(depth)
    assert levels[0, 0] == 0 and levels[-1, -1] == 255 and np.all(np.diff(levels.ravel().astype(int)) >= 0)


# --- structure from the weights and loading ------------------------------------------------------------

@pytest.mark.parametrize("name", ["vits", "vitb", "vitl", "vitg"])
def test_the_encoder_is_read_from_the_weights(name):
    assert encoder_from_weights(template(name, grid=37), "any.pth") == name


def test_unknown_width_and_foreign_files_are_refused():
    weights = {"pretrained.cls_token": torch.zeros(1, 1, 512)}
    with pytest.raises(BadWeightsError) as error:
        encoder_from_weights(weights, DEPTH_ANYTHING_V2_SMALL)
    assert str(error.value) == (
        "'depth_anything_v2_vits.pth' has a 512-wide encoder, which is none of Depth Anything V2's: "
        "vits (384), vitb (768), vitl (1024), vitg (1536)")
    with pytest.raises(BadWeightsError) as error:
        encoder_from_weights({"model.conv.weight": torch.zeros(1)}, DEPTH_ANYTHING_V2_SMALL)
    assert str(error.value) == (
        "'depth_anything_v2_vits.pth' is not a Depth Anything V2 checkpoint (it has no 'pretrained.cls_token'); "
        "download depth_anything_v2_vits.pth again from https://huggingface.co/depth-anything/Depth-Anything-V2-Small")


@pytest.fixture(scope="module")
def small_weights() -> dict[str, torch.Tensor]:
    """Random weights of the published small model, in float16 (half the disk traffic; the loader
    casts). 24,785,089 parameters: the 24.8 M the Depth-Anything-V2-Small model card gives."""
    shapes = template("vits", grid=37)
    assert sum(value.numel() for value in shapes.values()) == 24_785_089
    return {key: value.half() for key, value in random_original_weights(shapes, SEED + 2).items()}


def saved(folder, weights) -> str:
    """`weights` saved once as folder/depth_anything_v2_vits.pth (tests link to it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / DEPTH_ANYTHING_V2_SMALL
    if not path.exists():
        torch.save(weights, path)
    return str(path)


def test_loader_reads_the_published_keys_strictly(tmp_path, small_weights):
    folder = tmp_path / "annotators"
    folder.mkdir()
    incomplete = {k: v for k, v in small_weights.items() if k != "depth_head.scratch.output_conv2.2.bias"}
    torch.save(incomplete, folder / DEPTH_ANYTHING_V2_SMALL)
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "depth_head\.scratch\.output_conv2\.2\.bias"'):
        load_depth_anything([str(folder)], size="small")
    extra = dict(small_weights, **{"depth_head.readout_projects.0.0.weight": torch.zeros(384, 768)})
    torch.save(extra, folder / DEPTH_ANYTHING_V2_SMALL)
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "depth_head\.readout_projects\.0\.0\.weight"'):
        load_depth_anything([str(folder)], size="small")
    torch.save(small_weights, folder / DEPTH_ANYTHING_V2_SMALL)
    network = load_depth_anything([str(tmp_path / "elsewhere"), str(folder)], size="small")
    assert network.encoder_size is ENCODERS["vits"] and not network.training
    loaded = network.state_dict()
    assert set(loaded) == set(small_weights)
    for key, value in small_weights.items():
        assert loaded[key].dtype == torch.float32
        assert torch.equal(loaded[key], value.float()), key


def test_the_structure_comes_from_the_weights_not_the_name(tmp_path, small_weights):
    """Small weights under the large file's name load as the small network, and run (a real
    configuration: 12 blocks read out at 2, 5, 8, 11) at a reduced input size."""
    (tmp_path / DEPTH_ANYTHING_V2_LARGE).symlink_to(saved(tmp_path / "store", small_weights))
    network = load_depth_anything([str(tmp_path)], size="large")
    assert network.encoder_size is ENCODERS["vits"]
    depth_map = depth_anything(PHOTO_96, network, resolution=None, input_size=70)
    assert depth_map.shape == PHOTO_96.shape and len(np.unique(depth_map)) > 1


def test_controlnet_aux_layout_is_found(tmp_path, small_weights):
    """comfyui_controlnet_aux keeps the file as ckpts/<repo>/<file> below its models folder."""
    repo_folder = tmp_path / "ckpts" / "depth-anything" / "Depth-Anything-V2-Small"
    repo_folder.mkdir(parents=True)
    (repo_folder / DEPTH_ANYTHING_V2_SMALL).symlink_to(saved(tmp_path / "store", small_weights))
    assert load_depth_anything([str(tmp_path)], size="small").encoder_size is ENCODERS["vits"]


def test_unknown_model_size_is_refused():
    with pytest.raises(ValueError) as error:
        load_depth_anything([], size="giant")
    assert str(error.value) == "Depth Anything V2 model must be one of small, base, large, got 'giant'"
