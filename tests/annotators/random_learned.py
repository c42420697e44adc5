"""Learned annotator networks with random weights, for tests that check the plumbing around a
network (folders, input handling) rather than its numbers, which the parity tests cover.

Weights are He-scaled (fan-in) so activations neither vanish nor blow up through the depth, and
HED / PiDiNet get the same two adjustments as test_learned_edges.py (a plausible mean colour for
HED's 0..255 input; smaller PiDiNet read-outs), and TEED those of test_teed.py (its first conv
brought to the 0..255 input, larger side read-outs), so the maps are not all one value; ZoeDepth's
binomial buffers get the constants they hold in the published file.
`assert_loaded` is the loader tests' check that a file's weights arrived whole.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import typing
from pathlib import Path
import torch

from annotators.rtmpose_network import CSPNEXT_P5

HED_MEAN_COLOUR = (123.0, 117.0, 104.0)  # a typical photo mean (the ImageNet one, x255)
HED_INPUT_SCALE = 64.0                   # 0..255 minus the mean is about +-64 on a photo
PIDINET_READOUT_SCALE = 0.01             # as test_learned_edges.py: keeps the fused sigmoid off 0/1
TEED_INPUT_SCALE = 64.0                  # as test_teed.py: TEED takes 0..255, unnormalised
TEED_READOUT_SCALE = 30.0                # as test_teed.py: spreads the mean logit over all safe levels
TEED_READOUTS = ("up_block_1.features.2.weight", "up_block_2.features.2.weight", "up_block_3.features.5.weight")
NOISE = 0.1                              # biases, norm shifts; norm scales are 1 +- this
BN_MEAN_JITTER = 0.1        # calibrate_batch_norms: running mean = batch mean + this x std x N(0, 1)
BN_VAR_JITTER = (0.5, 1.5)  # calibrate_batch_norms: running var = batch var x U(0.5, 1.5)
ZOE_BIN_INDEX = "conditional_log_binomial.log_binomial_transform.k_idx"
ZOE_LAST_BIN = "conditional_log_binomial.log_binomial_transform.K_minus_1"
# Narrow ZoeDepth widths (annotators.zoe_network.ZoeSize fields) for tests: BEiT 32 wide with 2
# heads on the published 24 x 24 trained grid and all 24 blocks, reassembled maps and decoder
# narrow too; the metric head is the published one (its widths are fixed).
ZOE_TEST_WIDTHS = dict(embed_dim=32, heads=2, window=24, reassemble_channels=(8, 16, 24, 32), features=16)
# A tiny Depth Anything encoder (annotators.depth_anything_network.EncoderSize fields) on a 4 x 4
# trained grid (56 pixels), whose readout blocks are not simply the last four.
DEPTH_ANYTHING_TEST_WIDTHS = dict(embed_dim=32, depth=6, heads=2, swiglu=False, layers=(1, 2, 4, 5), features=16,
                                  out_channels=(8, 16, 24, 32))
DEPTH_ANYTHING_TEST_GRID = 4
# DWPose's two networks (tests/annotators/test_dwpose.py): YOLOX's stem brought to 0..255 input;
# its box deltas kept small (exp stays finite) with boxes a few strides wide, so that they overlap
# for NMS; its person and objectness read-outs damped and the objectness biased down, so that tens
# rather than thousands of grid points score as people; RTMPose's SimCC read-outs sharpened, so
# that keypoints score above the 0.3 that DWPose draws.
DWPOSE_DETECTOR_INPUT_SCALE = 1 / 64.0
DWPOSE_BOX_READOUT_SCALE = 0.003
DWPOSE_LOG_SIZE_BIAS = 1.5
DWPOSE_SCORE_READOUT_SCALE = 0.05
DWPOSE_PERSON_BIAS = 0.5
DWPOSE_OBJECTNESS_BIAS = -4.0
DWPOSE_SIMCC_READOUT_SCALE = 20.0
DWPOSE_DETECTOR_LEVELS = 3
# Narrow DWPose networks for tests: YOLOX at mmdet's widen and deepen factors 0.125 and 0.33
# (YoloxConfig.scaled), RTMPose (RtmposeConfig fields) at an eighth of RTMPose-l's widths with
# one block per stage, on small crops for the tests that run the whole annotator.
YOLOX_TEST_FACTORS = (0.125, 0.33)
RTMPOSE_TEST_WIDTHS = dict(stem_channels=8, hidden=32, attention_dim=16,
                           stages=tuple((i // 8, o // 8, 1, identity, spp) for i, o, _, identity, spp in CSPNEXT_P5))
RTMPOSE_TEST_CROP = (64, 96)
# Animal Pose's AP-10K RTMPose on a small square crop (the published file's is 256 x 256; the
# annotator reads the crop size from the file).
AP10K_TEST_CROP = (64, 64)


def random_state_dict(template: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """`template`'s keys and shapes with random values: weights N(0, 2/fan_in), 1-D weights
    (norm scales) 1 + N(0, 0.1), running variances in 0.5..1.5, everything else N(0, 0.1)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in template.items():
        if not value.is_floating_point():  # num_batches_tracked
            state[key] = torch.zeros(value.shape, dtype=value.dtype)
            continue
        noise = torch.randn(value.shape, generator=generator)
        if key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(value.shape, generator=generator)
        elif value.ndim >= 2 and value[0].numel() > 1:
            state[key] = noise * math.sqrt(2.0 / value[0].numel())
        elif key.endswith("weight") and value.ndim == 1:
            state[key] = 1.0 + NOISE * noise
        else:
            state[key] = NOISE * noise
    return state


def adjust(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-network fixes that keep random maps from saturating (see the module docstring)."""
    if name == "hed":
        state["norm"] = torch.tensor(HED_MEAN_COLOUR).view(1, 3, 1, 1)
        state["block1.convs.0.weight"] = state["block1.convs.0.weight"] / HED_INPUT_SCALE
    if name == "pidinet":
        for key in [k for k in state if k.startswith("conv_reduces.") and k.endswith("weight")]:
            state[key] = state[key] * PIDINET_READOUT_SCALE
    if name == "teed":
        state["block_1.conv1.weight"] = state["block_1.conv1.weight"] / TEED_INPUT_SCALE
        for key in TEED_READOUTS:
            state[key] = state[key] * TEED_READOUT_SCALE
    if name == "dwpose" and "backbone.stem.conv.conv.weight" in state:  # YOLOX
        state["backbone.stem.conv.conv.weight"] = state["backbone.stem.conv.conv.weight"] * DWPOSE_DETECTOR_INPUT_SCALE
        for level in range(DWPOSE_DETECTOR_LEVELS):
            head = "bbox_head.multi_level_conv_"
            state[f"{head}reg.{level}.weight"] = state[f"{head}reg.{level}.weight"] * DWPOSE_BOX_READOUT_SCALE
            state[f"{head}reg.{level}.bias"][2:] += DWPOSE_LOG_SIZE_BIAS
            for kind in ("cls", "obj"):
                state[f"{head}{kind}.{level}.weight"] = state[f"{head}{kind}.{level}.weight"] * DWPOSE_SCORE_READOUT_SCALE
            state[f"{head}cls.{level}.bias"][0] += DWPOSE_PERSON_BIAS
            state[f"{head}obj.{level}.bias"].fill_(DWPOSE_OBJECTNESS_BIAS)
    if name == "dwpose" and "head.cls_x.weight" in state:  # RTMPose
        for key in ("head.cls_x.weight", "head.cls_y.weight"):
            state[key] = state[key] * DWPOSE_SIMCC_READOUT_SCALE
    if name == "zoe":
        # The binomial's buffers hold constants in the published file (0..K-1 and K-1), which the
        # network reads; random values would make no distribution at all.
        classes = state[ZOE_BIN_INDEX].numel()
        state[ZOE_BIN_INDEX] = torch.arange(classes).view(state[ZOE_BIN_INDEX].shape)
        state[ZOE_LAST_BIN] = torch.full(state[ZOE_LAST_BIN].shape, classes - 1.0)
    return state


def network_class(module_name: str, loader_name: str) -> type[torch.nn.Module]:
    """The class a loader returns, from its return annotation (every `load_*` is annotated)."""
    module = importlib.import_module(f"annotators.{module_name}")
    return typing.get_type_hints(getattr(module, loader_name))["return"]


def template_of(cls: type[torch.nn.Module], *arguments: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: skips the default initialisation
        return cls(*arguments).state_dict()


def random_network(module_name: str, loader_name: str, seed: int, *arguments: object) -> torch.nn.Module:
    """An eval-mode network of the class `annotators.<module_name>.<loader_name>` returns, built
    with `arguments` (none: the published widths; narrow ones such as ZOE_TEST_WIDTHS for the
    networks too slow for tests at theirs), holding random weights."""
    cls = network_class(module_name, loader_name)
    state = adjust(module_name, random_state_dict(template_of(cls, *arguments), seed))
    network = cls(*arguments)
    network.load_state_dict(state, strict=True)
    return network.eval().requires_grad_(False)


def random_openpose(seed: int, hands: bool = False, face: bool = False):
    """OpenPoseNetworks with random body (and hand / face) networks."""
    from annotators.openpose.networks import (BodyPoseNetwork, FaceNetwork, HandPoseNetwork,
                                              OpenPoseNetworks)

    def make(cls: type[torch.nn.Module], offset: int) -> torch.nn.Module:
        network = cls()
        network.load_state_dict(random_state_dict(template_of(cls), seed + offset), strict=True)
        return network.eval().requires_grad_(False)

    return OpenPoseNetworks(body=make(BodyPoseNetwork, 0),
                            hand=make(HandPoseNetwork, 1) if hands else None,
                            face=make(FaceNetwork, 2) if face else None)


def save_published(network: torch.nn.Module, folder: Path, file_name: str) -> Path:
    """The network's weights as `folder/file_name`, in float16 (half the disk traffic; every
    loader casts to its parameters' dtype, so loading it back gives the float16 values)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / file_name
    torch.save({key: value.half() if value.is_floating_point() else value
                for key, value in network.state_dict().items()}, path)
    return path


def assert_loaded(network: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """A loader's result holds exactly `weights` (the same keys, equal values) and is in eval mode."""
    loaded = network.state_dict()
    assert set(loaded) == set(weights)
    for key, value in weights.items():
        assert torch.equal(loaded[key], value), key
    assert not network.training


def calibrate_batch_norms(network: torch.nn.Module, images: torch.Tensor, seed: int) -> None:
    """Give every BatchNorm the (jittered) statistics of the activations it sees on `images`,
    in one eval-mode pass: each is set just before it runs, so later layers see normalised
    inputs, as in a trained network."""
    generator = torch.Generator().manual_seed(seed)

    def set_statistics(module: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        mean, var = inputs[0].mean((0, 2, 3)), inputs[0].var((0, 2, 3))
        noise = torch.randn(mean.shape, generator=generator)
        module.running_mean.copy_(mean + BN_MEAN_JITTER * var.sqrt() * noise)
        low, high = BN_VAR_JITTER
        module.running_var.copy_(var * (low + (high - low) * torch.rand(var.shape,
                                                                         generator=generator)))

    handles = [m.register_forward_pre_hook(set_statistics) for m in network.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            network(images)
    finally:
        for handle in handles:
            handle.remove()


def run_in_a_fresh_interpreter(code: str) -> None:
    """Run Python `code` in a new interpreter at the repository root (so nothing a test module
    imported, such as an oracle package, is loaded there); fails if it raises."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=120)
