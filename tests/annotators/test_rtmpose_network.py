"""RTMPose (DWPose's keypoint network) against mmpose 1.3.2, its reference implementation.

diffusers-style: mmpose's CSPNeXt and RTMCCHead are built at a tiny width with random weights
and random BatchNorm statistics, the same state dict is loaded strictly into ours, and the two
compute in float64. The full-size network (dw-ll_ucoco_384) is compared by keys, shapes and
parameter count on the meta device. mmpose runs over mmcv-lite (tests/annotators/openmmlab.py);
these tests skip when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from annotators.rtmpose_network import (CSPNEXT_P5, DWPOSE_INPUT_SIZE, SIMCC_SPLIT_RATIO, ChannelScale,
                                        GatedAttentionUnit, Rtmpose, RtmposeConfig, ScaleNorm,
                                        simcc_maximum)

from .openmmlab import import_openmmlab

TINY_WIDEN = 0.125
TINY_DEEPEN = 0.33
TINY_KEYPOINTS = 17
TINY_INPUT = (64, 96)  # (width, height): a 2×3 map at 1/32, not square
TINY_GAU = dict(hidden_dims=32, s=16, expansion_factor=2, dropout_rate=0., drop_path=0., act_fn="SiLU",
                use_rel_bias=False, pos_enc=False)
TOLERANCE = 1e-9  # float64, relative to the largest magnitude


def mmpose_parts(widen: float, deepen: float, keypoints: int, input_size: tuple[int, int], gau: dict):
    """mmpose's backbone and head as DWPose's config builds them, at the given size."""
    import_openmmlab("mmpose.models")
    from mmpose.models.backbones.cspnext import CSPNeXt
    from mmpose.models.heads.coord_cls_heads.rtmcc_head import RTMCCHead
    backbone = CSPNeXt(arch="P5", expand_ratio=0.5, deepen_factor=deepen, widen_factor=widen, out_indices=(4,),
                       channel_attention=True, norm_cfg=dict(type="BN"), act_cfg=dict(type="SiLU"))
    head = RTMCCHead(in_channels=int(1024 * widen), out_channels=keypoints, input_size=input_size,
                     in_featuremap_size=(input_size[0] // 32, input_size[1] // 32),
                     simcc_split_ratio=SIMCC_SPLIT_RATIO, final_layer_kernel_size=7, gau_cfg=gau,
                     loss=dict(type="KLDiscretLoss", use_target_weight=True, beta=10., label_softmax=True))
    return backbone, head


def expected_config(widen: float, deepen: float, keypoints: int, input_size: tuple[int, int],
                    gau: dict) -> RtmposeConfig:
    """The config mmpose's arch table and factors imply, written out independently."""
    stages = tuple((int(i * widen), int(o * widen), max(round(n * deepen), 1), identity, spp)
                   for i, o, n, identity, spp in CSPNEXT_P5)
    return RtmposeConfig(stem_channels=int(64 * widen), stages=stages, keypoints=keypoints, input_size=input_size,
                         hidden=gau["hidden_dims"], attention_dim=gau["s"], expansion=gau["expansion_factor"])


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights and BatchNorm statistics, so no layer is an identity or a zero. Not
    random_learned's recipe: there ScaleNorm's gain and the attention unit's γ, β get small noise,
    which leaves every token with nearly the same q and k (often a negative q·k, so the squared-ReLU
    attention is all zero and its mistakes invisible); here gains sit near 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                scale = 1.0 / max(tensor[0].numel(), 1) ** 0.5 if tensor.dim() > 1 else 0.5
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale
                             + (1.0 if name.endswith((".g", "gamma", "scale", "bn.weight")) else 0.0))


@pytest.fixture(scope="module")
def tiny():
    backbone, head = mmpose_parts(TINY_WIDEN, TINY_DEEPEN, TINY_KEYPOINTS, TINY_INPUT, TINY_GAU)
    reference = torch.nn.ModuleDict({"backbone": backbone, "head": head}).double().eval()
    randomise(reference, seed=0)
    state_dict = reference.state_dict()
    ours = Rtmpose(RtmposeConfig.from_state_dict(state_dict)).double().eval()
    ours.load_state_dict(state_dict, strict=True)
    return reference, ours


def crops(seed: int, size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, size[1], size[0], generator=generator, dtype=torch.float64)


def assert_close_relative(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = TOLERANCE) -> None:
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    assert scale > 0
    assert float((actual - expected).abs().max()) <= tolerance * scale


def test_config_recovered_from_state_dict(tiny):
    reference, ours = tiny
    assert ours.config == expected_config(TINY_WIDEN, TINY_DEEPEN, TINY_KEYPOINTS, TINY_INPUT, TINY_GAU)


def test_backbone_equals_mmpose(tiny):
    reference, ours = tiny
    image = crops(1, TINY_INPUT)
    with torch.no_grad():
        expected, = reference["backbone"](image)
        actual = ours.backbone(image)
    assert expected.shape[2:] == (TINY_INPUT[1] // 32, TINY_INPUT[0] // 32)
    assert float(expected.std()) > 0.05
    assert_close_relative(actual, expected)


def test_head_equals_mmpose(tiny):
    reference, ours = tiny
    features = crops(2, (2, 3), batch=3).repeat(1, 128 // 3 + 1, 1, 1)[:, :128]
    with torch.no_grad():
        expected_x, expected_y = reference["head"]((features,))
        actual_x, actual_y = ours.head(features)
    assert expected_x.shape == (3, TINY_KEYPOINTS, TINY_INPUT[0] * SIMCC_SPLIT_RATIO)
    assert expected_y.shape == (3, TINY_KEYPOINTS, TINY_INPUT[1] * SIMCC_SPLIT_RATIO)
    assert_close_relative(actual_x, expected_x)
    assert_close_relative(actual_y, expected_y)


def test_whole_network_equals_mmpose(tiny):
    reference, ours = tiny
    image = crops(3, TINY_INPUT)
    with torch.no_grad():
        expected = reference["head"](reference["backbone"](image))
        actual = ours(image)
    for a, e in zip(actual, expected):
        assert_close_relative(a, e)


def test_gated_attention_unit_equals_mmpose_block():
    import_openmmlab("mmpose.models")
    from mmpose.models.utils.rtmcc_block import RTMCCBlock
    reference = RTMCCBlock(7, 24, 24, expansion_factor=2, s=8, attn_type="self-attn", act_fn="SiLU",
                           use_rel_bias=False, pos_enc=False).double().eval()
    randomise(reference, seed=4)
    ours = GatedAttentionUnit(24, 8, 2).double().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    tokens = torch.randn(2, 7, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert_close_relative(ours(tokens), reference(tokens))
    assert isinstance(ours.res_scale, ChannelScale)


def test_scale_norm_clamps_small_norms_like_mmpose():
    import_openmmlab("mmpose.models")
    from mmpose.models.utils.transformer import ScaleNorm as ReferenceScaleNorm
    reference, ours = ReferenceScaleNorm(6), ScaleNorm(6)
    with torch.no_grad():
        reference.g.fill_(1.7)
        ours.g.fill_(1.7)
    x = torch.tensor([[3.0, -1.0, 0.5, 0.0, 2.0, 1.0], [1e-7, 0.0, 0.0, 0.0, 0.0, -1e-7]], dtype=torch.float64)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-12, atol=0)


def test_simcc_maximum_equals_mmpose_decoder():
    import_openmmlab("mmpose.codecs")
    from mmpose.codecs import SimCCLabel
    codec = SimCCLabel(input_size=DWPOSE_INPUT_SIZE, sigma=(6., 6.93), simcc_split_ratio=SIMCC_SPLIT_RATIO,
                       normalize=False, use_dark=False)
    generator = torch.Generator().manual_seed(6)
    x_logits = torch.randn(3, 11, 576, generator=generator, dtype=torch.float64)
    y_logits = torch.randn(3, 11, 768, generator=generator, dtype=torch.float64)
    x_logits[0, :4] -= 10.0  # some keypoints with no positive bin: their location becomes -1 bin
    y_logits[1, 2:6] -= 10.0
    expected_keypoints, expected_scores = codec.decode(x_logits.numpy(), y_logits.numpy())
    keypoints, scores = simcc_maximum(x_logits, y_logits)
    assert (expected_scores <= 0).sum() >= 6 and (expected_scores > 0).sum() >= 6
    np.testing.assert_array_equal(keypoints.numpy(), expected_keypoints)
    np.testing.assert_array_equal(scores.numpy(), expected_scores)


def test_full_size_layout_equals_mmpose():
    """dw-ll_ucoco_384: RTMPose-l (widen 1, deepen 1), 133 keypoints, 288×384 crops, GAU 256/128."""
    gau = dict(TINY_GAU, hidden_dims=256, s=128)
    with torch.device("meta"):
        backbone, head = mmpose_parts(1.0, 1.0, 133, DWPOSE_INPUT_SIZE, gau)
        reference = torch.nn.ModuleDict({"backbone": backbone, "head": head})
        ours = Rtmpose(RtmposeConfig())
    expected = {name: tuple(tensor.shape) for name, tensor in reference.state_dict().items()}
    actual = {name: tuple(tensor.shape) for name, tensor in ours.state_dict().items()}
    assert actual == expected
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    assert RtmposeConfig.from_state_dict(reference.state_dict()) == RtmposeConfig()
    assert RtmposeConfig() == expected_config(1.0, 1.0, 133, DWPOSE_INPUT_SIZE, gau)
