"""RTMPose: the whole-body keypoint network of DWPose (`dw-ll_ucoco_384`).

DWPose (Yang et al. 2023) distils a large whole-body pose model into RTMPose-l (Jiang et al.
2023); the student's weights are what ControlNet users run. Given a person's box cropped and
warped to 288×384, it places 133 COCO-WholeBody keypoints (17 body, 6 feet, 68 face, 2×21 hands):

    features  = CSPNeXt(crop)                    # 1024 channels at 1/32: 9×12
    tokens    = Linear(ScaleNorm(flatten(Conv7×7(features))))   # one 256-vector per keypoint
    tokens    = GatedAttentionUnit(tokens)       # keypoints attend to each other
    x_logits  = Linear(tokens) over 2·288 bins,  y_logits over 2·384 bins   (SimCC)

SimCC reads each coordinate as a classification over sub-pixel bins (split ratio 2, so half a
pixel each): the keypoint is at the best bin in x and in y, its score the smaller of the two
maxima (`simcc_maximum`).

Key names and shapes are mmpose's `TopdownPoseEstimator` (`backbone.*`, `head.*`), as in the
published `dw-ll_ucoco_384.pth`. Sources: mmpose 1.3.2 `models/backbones/cspnext.py`,
`models/heads/coord_cls_heads/rtmcc_head.py`, `models/utils/rtmcc_block.py` (RTMCCBlock),
`models/utils/transformer.py` (ScaleNorm), `codecs/utils/post_processing.py`
(get_simcc_maximum), and DWPose's config `dwpose-l_384x288.py`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from .csp_blocks import TORCH_BN_EPS, ConvBnAct, CSPLayer, SPPBottleneck

# dwpose-l_384x288.py: input (width, height), SimCC bins per pixel, and the head's widths.
DWPOSE_INPUT_SIZE = (288, 384)
SIMCC_SPLIT_RATIO = 2.0
BACKBONE_STRIDE = 32
WHOLEBODY_KEYPOINTS = 133
FINAL_LAYER_KERNEL = 7
GAU_HIDDEN = 256
GAU_ATTENTION_DIM = 128  # the "s" of Hua et al.'s gated attention unit
GAU_EXPANSION = 2
SCALE_NORM_EPS = 1e-5

# CSPNeXt P5 at widen 1, deepen 1 (RTMPose-l): per stage (in, out, blocks, add_identity, spp).
CSPNEXT_P5 = ((64, 128, 3, True, False), (128, 256, 6, True, False),
              (256, 512, 6, True, False), (512, 1024, 3, False, True))


@dataclass(frozen=True)
class RtmposeConfig:
    stem_channels: int = 64
    stages: tuple[tuple[int, int, int, bool, bool], ...] = CSPNEXT_P5
    keypoints: int = WHOLEBODY_KEYPOINTS
    input_size: tuple[int, int] = DWPOSE_INPUT_SIZE  # (width, height)
    hidden: int = GAU_HIDDEN
    attention_dim: int = GAU_ATTENTION_DIM
    expansion: int = GAU_EXPANSION
    bn_eps: float = TORCH_BN_EPS

    @property
    def feature_size(self) -> tuple[int, int]:
        """(width, height) of the backbone's last map: the input over the stride."""
        return self.input_size[0] // BACKBONE_STRIDE, self.input_size[1] // BACKBONE_STRIDE

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "RtmposeConfig":
        """Read the widths and depths from a checkpoint's shapes (heads and eps are DWPose's)."""
        stem_channels = state_dict["backbone.stem.2.conv.weight"].shape[0]
        stage_count = len({match.group(1) for key in state_dict
                           if (match := re.match(r"backbone\.stage(\d+)\.", key))})
        stages = []
        for number in range(1, stage_count + 1):
            prefix = f"backbone.stage{number}."
            downsample = state_dict[prefix + "0.conv.weight"]
            has_spp = prefix + "1.conv1.conv.weight" in state_dict
            csp = f"{prefix}{2 if has_spp else 1}."
            blocks = len({key.split(".")[4] for key in state_dict if key.startswith(csp + "blocks.")})
            stages.append((downsample.shape[1], downsample.shape[0], blocks, number < stage_count, has_spp))
        hidden, _ = state_dict["head.mlp.1.weight"].shape
        bins_x = state_dict["head.cls_x.weight"].shape[0]
        bins_y = state_dict["head.cls_y.weight"].shape[0]
        attention_dim = state_dict["head.gau.gamma"].shape[1]
        expansion = (state_dict["head.gau.uv.weight"].shape[0] - attention_dim) // (2 * hidden)
        return cls(stem_channels=stem_channels, stages=tuple(stages),
                   keypoints=state_dict["head.final_layer.weight"].shape[0],
                   input_size=(round(bins_x / SIMCC_SPLIT_RATIO), round(bins_y / SIMCC_SPLIT_RATIO)),
                   hidden=hidden, attention_dim=attention_dim, expansion=expansion)


class CSPNeXt(nn.Module):
    """RTMDet's backbone: a 3-conv stem at 1/2, then four stride-2 stages of CSP layers whose
    blocks use 5×5 depthwise convolutions and channel attention; SPP before the last one."""

    def __init__(self, config: RtmposeConfig) -> None:
        super().__init__()
        eps = config.bn_eps
        half = config.stem_channels // 2
        self.stem = nn.Sequential(ConvBnAct(3, half, 3, stride=2, eps=eps), ConvBnAct(half, half, 3, eps=eps),
                                  ConvBnAct(half, config.stem_channels, 3, eps=eps))
        # Named stage1..stage4, as in the checkpoints.
        self.stage_names = [f"stage{number}" for number in range(1, len(config.stages) + 1)]
        for name, (in_channels, out_channels, blocks, add_identity, spp) in zip(self.stage_names, config.stages):
            layers = [ConvBnAct(in_channels, out_channels, 3, stride=2, eps=eps)]
            if spp:
                layers.append(SPPBottleneck(out_channels, out_channels, eps=eps))
            layers.append(CSPLayer(out_channels, out_channels, blocks, add_identity, cspnext_blocks=True,
                                   channel_attention=True, eps=eps))
            self.add_module(name, nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x  # DWPose's out_indices=(4,): only the last stage's map is used


class ScaleNorm(nn.Module):
    """x / max(‖x‖·d^-½, eps) · g: one learned gain, no centring (Nguyen & Salazar 2019)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=SCALE_NORM_EPS) * self.g


class ChannelScale(nn.Module):
    """x times a learned per-channel scale (mmpose's Scale: the shortcut's weight)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class GatedAttentionUnit(nn.Module):
    """RTMCCBlock as DWPose configures it: Hua et al.'s gated attention unit over the keypoint
    tokens, with squared-ReLU attention, no relative-position bias, and a scaled shortcut:

        u, v, z = split(SiLU(W_uv · ScaleNorm(x)));  q, k = z·γ + β
        out = x·res_scale + W_o (u ⊙ (relu(q kᵀ / √s)² v))
    """

    def __init__(self, dim: int, attention_dim: int, expansion: int) -> None:
        super().__init__()
        self.expanded = dim * expansion
        self.attention_dim = attention_dim
        self.ln = ScaleNorm(dim)
        self.uv = nn.Linear(dim, 2 * self.expanded + attention_dim, bias=False)
        self.gamma = nn.Parameter(torch.ones(2, attention_dim))
        self.beta = nn.Parameter(torch.zeros(2, attention_dim))
        self.o = nn.Linear(self.expanded, dim, bias=False)
        self.res_scale = ChannelScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v, base = nn.functional.silu(self.uv(self.ln(x))).split(
            [self.expanded, self.expanded, self.attention_dim], dim=-1)
        q, k = (base.unsqueeze(2) * self.gamma + self.beta).unbind(dim=2)
        kernel = torch.relu(q @ k.transpose(1, 2) / math.sqrt(self.attention_dim)).square()
        return self.res_scale(x) + self.o(u * (kernel @ v))


class SimCCHead(nn.Module):
    """RTMCCHead: keypoint maps from a 7×7 conv, flattened to one token per keypoint, mixed by
    the gated attention unit, then read as x and y bin logits."""

    def __init__(self, config: RtmposeConfig) -> None:
        super().__init__()
        in_channels = config.stages[-1][1]
        width, height = config.feature_size
        self.final_layer = nn.Conv2d(in_channels, config.keypoints, FINAL_LAYER_KERNEL,
                                     padding=FINAL_LAYER_KERNEL // 2)
        self.mlp = nn.Sequential(ScaleNorm(width * height), nn.Linear(width * height, config.hidden, bias=False))
        self.gau = GatedAttentionUnit(config.hidden, config.attention_dim, config.expansion)
        self.cls_x = nn.Linear(config.hidden, int(config.input_size[0] * SIMCC_SPLIT_RATIO), bias=False)
        self.cls_y = nn.Linear(config.hidden, int(config.input_size[1] * SIMCC_SPLIT_RATIO), bias=False)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.gau(self.mlp(self.final_layer(features).flatten(2)))
        return self.cls_x(tokens), self.cls_y(tokens)


class Rtmpose(nn.Module):
    """Crops (B, 3, height, width), normalised as mmpose does, to SimCC logits (B, K, bins)."""

    def __init__(self, config: RtmposeConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = CSPNeXt(config)
        self.head = SimCCHead(config)

    @property
    def input_size(self) -> tuple[int, int]:
        """The crop (width, height) it takes."""
        return self.config.input_size

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(crops))


def simcc_maximum(x_logits: torch.Tensor, y_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints (..., K, 2) in crop pixels and scores (..., K) from SimCC logits (..., K, bins).

    The location is the best bin in x and in y over the split ratio; the score is the smaller
    of the two maxima. A keypoint whose score is not positive gets the location -1 (in bins, so
    -1/split ratio in pixels), as mmpose's get_simcc_maximum and SimCCLabel.decode do."""
    x_best, x_bins = x_logits.max(dim=-1)
    y_best, y_bins = y_logits.max(dim=-1)
    scores = torch.minimum(x_best, y_best)
    bins = torch.stack((x_bins, y_bins), dim=-1).to(x_logits.dtype)
    bins = torch.where((scores > 0).unsqueeze(-1), bins, torch.full_like(bins, -1))
    return bins / SIMCC_SPLIT_RATIO, scores
