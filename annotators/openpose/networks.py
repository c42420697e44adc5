"""The three OpenPose networks and their loader.

Architectures are CMU OpenPose's Caffe models as ported to PyTorch by Hzzone/pytorch-openpose and
shipped by ControlNet v1.1 (`annotator/openpose/model.py`, `face.py`): a VGG-19 front end, then six
refinement stages that each see the previous stage's maps plus the front-end features.
  body  Cao et al. 2017, "Realtime Multi-Person 2D Pose Estimation using Part Affinity Fields":
        two branches per stage, 38 PAF channels (19 limbs x (x, y)) and 19 heatmaps (18 + background).
  hand  Simon et al. 2017, "Hand Keypoint Detection in Single Images using Multiview Bootstrapping":
        one branch, 22 heatmaps (21 + background).
  face  the same layout as the hand network with 71 heatmaps (70 + background).

Every conv is registered directly on the network under its Caffe layer name, because the files
lllyasviel/Annotators publishes use exactly those names as keys (`conv1_1.weight`,
`Mconv7_stage6_L2.bias`, ...), so they load with strict=True and no renaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..networks_common import max_pool_2x2
from ..weights import BadWeightsError, find_weights, load_state_dict

BODY_WEIGHTS = "body_pose_model.pth"  # lllyasviel/Annotators file names
HAND_WEIGHTS = "hand_pose_model.pth"
FACE_WEIGHTS = "facenet.pth"

PAF_CHANNELS = 38          # 19 limbs, an (x, y) field each
BODY_HEATMAP_CHANNELS = 19  # 18 COCO keypoints + background
HAND_HEATMAP_CHANNELS = 22  # 21 hand keypoints + background
FACE_HEATMAP_CHANNELS = 71  # 70 face landmarks + background
FRONT_END_CHANNELS = 128    # conv4_4_CPM / conv5_3_CPM output, fed to every stage
REFINEMENT_STAGES = range(2, 7)  # stages 2..6 (stage 1 has its own layer names)

POOL = "pool"  # a 2x2 max pool, stride 2, in a layer list

# (name, in channels, out channels, kernel); every conv has stride 1 and "same" padding.
Layer = tuple[str, int, int, int] | str


def vgg_front_end(extra: list[Layer]) -> list[Layer]:
    """VGG-19's first ten convs (three pools: stride 8), then the network-specific tail."""
    return [
        ("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), POOL,
        ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), POOL,
        ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3),
        ("conv3_4", 256, 256, 3), POOL,
        ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3),
    ] + extra


def refinement_stage(suffix: str, in_channels: int, out_channels: int) -> list[Layer]:
    """Stages 2-6: five 7x7 convs, one 1x1, one 1x1 to the output maps. `suffix` is e.g.
    `stage3_L1` (body) or `stage3` (hand, face)."""
    return ([(f"Mconv1_{suffix}", in_channels, 128, 7)]
            + [(f"Mconv{i}_{suffix}", 128, 128, 7) for i in range(2, 6)]
            + [(f"Mconv6_{suffix}", 128, 128, 1), (f"Mconv7_{suffix}", 128, out_channels, 1)])


class LayerChains(nn.Module):
    """Base class: convs registered flat under their names; `run` applies a chain of them."""

    def add_chain(self, layers: list[Layer]) -> list[Layer]:
        for layer in layers:
            if layer != POOL:
                name, in_channels, out_channels, kernel = layer
                self.add_module(name, nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2))
        return layers

    def run(self, layers: list[Layer], x: torch.Tensor, relu_after_last: bool = False) -> torch.Tensor:
        """ReLU after every conv except the chain's last (the output maps), unless asked."""
        for index, layer in enumerate(layers):
            if layer == POOL:
                x = max_pool_2x2(x)
                continue
            x = getattr(self, layer[0])(x)
            if index < len(layers) - 1 or relu_after_last:
                x = F.relu(x, inplace=True)  # the conv's fresh output: no copy
        return x


class BodyPoseNetwork(LayerChains):
    """Input: BGR / 256 - 0.5, sides a multiple of 8. Output: (PAFs [N,38,H/8,W/8],
    heatmaps [N,19,H/8,W/8])."""

    def __init__(self) -> None:
        super().__init__()
        self.front_end = self.add_chain(vgg_front_end(
            [("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, FRONT_END_CHANNELS, 3)]))
        self.stages: list[tuple[list[Layer], list[Layer]]] = []
        first = []  # stage 1: its own layer names (conv5_*_CPM_L1 / _L2)
        for branch, out_channels in (("L1", PAF_CHANNELS), ("L2", BODY_HEATMAP_CHANNELS)):
            first.append(self.add_chain([
                (f"conv5_1_CPM_{branch}", 128, 128, 3), (f"conv5_2_CPM_{branch}", 128, 128, 3),
                (f"conv5_3_CPM_{branch}", 128, 128, 3), (f"conv5_4_CPM_{branch}", 128, 512, 1),
                (f"conv5_5_CPM_{branch}", 512, out_channels, 1)]))
        self.stages.append((first[0], first[1]))
        stage_input = PAF_CHANNELS + BODY_HEATMAP_CHANNELS + FRONT_END_CHANNELS  # 185
        for stage in REFINEMENT_STAGES:
            self.stages.append((
                self.add_chain(refinement_stage(f"stage{stage}_L1", stage_input, PAF_CHANNELS)),
                self.add_chain(refinement_stage(f"stage{stage}_L2", stage_input, BODY_HEATMAP_CHANNELS))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.run(self.front_end, x, relu_after_last=True)
        stage_input = features
        last = len(self.stages) - 1
        for index, (paf_chain, heatmap_chain) in enumerate(self.stages):
            pafs = self.run(paf_chain, stage_input)
            # The PyTorch port ControlNet ships has a ReLU after the very last heatmap conv
            # (its no-ReLU list names Mconv7_stage6_L1 twice instead of ..._L2); kept so the
            # maps equal the ones ControlNet's pose models were trained on.
            heatmaps = self.run(heatmap_chain, stage_input, relu_after_last=index == last)
            stage_input = torch.cat([pafs, heatmaps, features], dim=1)
        return pafs, heatmaps


class KeypointHeatmapNetwork(LayerChains):
    """The hand / face layout: VGG front end, one branch, six stages. Input as the body
    network's; output: the last stage's heatmaps [N, out_channels, H/8, W/8]."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.front_end = self.add_chain(vgg_front_end([
            ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3), ("conv5_1", 512, 512, 3),
            ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, FRONT_END_CHANNELS, 3)]))
        self.stages = [self.add_chain([("conv6_1_CPM", 128, 512, 1),
                                       ("conv6_2_CPM", 512, out_channels, 1)])]
        stage_input = out_channels + FRONT_END_CHANNELS
        for stage in REFINEMENT_STAGES:
            self.stages.append(self.add_chain(refinement_stage(f"stage{stage}", stage_input, out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.run(self.front_end, x, relu_after_last=True)
        heatmaps = self.run(self.stages[0], features)
        for chain in self.stages[1:]:
            heatmaps = self.run(chain, torch.cat([heatmaps, features], dim=1))
        return heatmaps


class HandPoseNetwork(KeypointHeatmapNetwork):
    def __init__(self) -> None:
        super().__init__(HAND_HEATMAP_CHANNELS)


class FaceNetwork(KeypointHeatmapNetwork):
    def __init__(self) -> None:
        super().__init__(FACE_HEATMAP_CHANNELS)


@dataclass
class OpenPoseNetworks:
    """What `openpose()` runs; hand and face are None unless loaded."""
    body: BodyPoseNetwork
    hand: HandPoseNetwork | None = None
    face: FaceNetwork | None = None


def load_weights(network: nn.Module, path: str) -> None:
    """Strict load, with a message that names the file rather than PyTorch's key dump. The
    network may live on the meta device: the file's tensors are then assigned, not copied."""
    state_dict = load_state_dict(path)
    expected = set(network.state_dict())
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if missing or unexpected:
        raise BadWeightsError(
            f"'{path}' does not hold {type(network).__name__} weights: {len(missing)} keys missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}); "
            "use the file lllyasviel/Annotators publishes under this name")
    network.load_state_dict(state_dict, strict=True, assign=True)


def load_openpose(
    folders: Sequence[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    hands: bool = False,
    face: bool = False,
) -> OpenPoseNetworks:
    """Body network (always), plus the hand and face networks when asked, in eval mode."""
    wanted: list[tuple[str, type[nn.Module], str]] = [("body", BodyPoseNetwork, BODY_WEIGHTS)]
    if hands:
        wanted.append(("hand", HandPoseNetwork, HAND_WEIGHTS))
    if face:
        wanted.append(("face", FaceNetwork, FACE_WEIGHTS))
    # Find every file first, so a missing one is reported before minutes of loading.
    paths = {role: find_weights(file_name, folders) for role, _, file_name in wanted}
    loaded = {}
    for role, network_class, _ in wanted:
        with torch.device("meta"):  # no random initialisation (seconds for 50 M weights)
            network = network_class()
        load_weights(network, paths[role])
        loaded[role] = network.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return OpenPoseNetworks(**loaded)
