"""YOLOX (Ge et al., "YOLOX: Exceeding YOLO Series in 2021", arXiv 2107.08430), the person detector
DWPose runs before its pose model, as mmdet 3.3.0 builds it, in plain torch.

Published layout (`yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth`, mmdet's YOLOX-L trained on
COCO, config `configs/yolox/yolox_l_8xb8-300e_coco.py`), keys under three prefixes:

* `backbone.` (`models/backbones/csp_darknet.py`, CSPDarknet arch P5): a Focus stem (space to
  depth, then a 3x3 conv) and four stages, each a stride-2 3x3 conv and a CSPLayer; the last stage
  has an SPPBottleneck between the two and no identity shortcuts in its bottlenecks. The last three
  stages (strides 8, 16, 32) are the outputs.
* `neck.` (`models/necks/yolox_pafpn.py`, YOLOXPAFPN): a path aggregation network. Top-down, each
  coarser map is narrowed (`reduce_layers`), upsampled 2x (nearest) and fused with the next finer
  map (`top_down_blocks`); bottom-up, each map is downsampled by a stride-2 conv (`downsamples`)
  and fused with the narrowed coarser map (`bottom_up_blocks`); 1x1 `out_convs` bring all three to
  the head's width.
* `bbox_head.` (`models/dense_heads/yolox_head.py`, YOLOXHead): per level, a stack of 3x3 convs
  for classes and another for boxes (not shared between levels), then 1x1 convs to the class
  logits, the four box deltas and the objectness logit (the last two from the box branch).

The convolution blocks are the shared ones of `csp_blocks.py` (mmdet's `models/layers/
csp_layer.py`). The network takes the image batch as mmdet's `DetDataPreprocessor` hands it over
for this config: float pixel values 0..255 in the channel order the image was read in (BGR, as
mmcv loads it; the config sets no mean, std or bgr_to_rgb). Its test pipeline resizes the image to
fit 640x640, pads it to a square with the value 114 and the preprocessor pads the batch with 0 to
a multiple of 32, always on the right and bottom. `decode_detections` turns the raw outputs into
one box and score per grid point as `YOLOXHead.predict_by_feat` does before its score threshold
and NMS; it does no NMS (mmcv's compiled op is not used here), which is left to the caller.
Widths and depths are read from the weights (`YoloxConfig.from_state_dict`). BatchNorm runs in
eval mode only; its momentum (0.03 in mmdet) matters for training alone and is not reproduced.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .csp_blocks import YOLOX_BN_EPS, ConvBnAct, CSPLayer, SPPBottleneck

IN_CHANNELS = 3
DOWNSAMPLE = 2           # the Focus stem and each stage's first conv halve the map
DOWNSAMPLE_KERNEL = 3    # stage and PAFPN downsampling convs, and the Focus conv
HEAD_CONV_KERNEL = 3     # YOLOXHead's stacked convs
UPSAMPLE_FACTOR = 2      # YOLOXPAFPN upsample_cfg=dict(scale_factor=2, mode='nearest')
NECK_LEVELS = 3          # CSPDarknet out_indices (2, 3, 4): the last three stages feed the neck
BOX_DELTAS = 4           # centre x, y offsets and log width, height, in units of the stride
PRIOR_OFFSET = 0.0       # YOLOXHead's MlvlPointGenerator(strides, offset=0): priors on the grid corners

# CSPDarknet arch_settings['P5'] and the YOLOX configs' neck, before widen/deepen factors.
P5_STEM_CHANNELS = 64
P5_STAGE_CHANNELS = (128, 256, 512, 1024)
P5_STAGE_BLOCKS = (3, 9, 9, 3)
BASE_NECK_CHANNELS = 256  # YOLOXPAFPN out_channels = YOLOXHead in/feat_channels, x widen_factor
BASE_NECK_BLOCKS = 3      # YOLOXPAFPN num_csp_blocks, x deepen_factor
HEAD_STACKED_CONVS = 2    # YOLOXHead stacked_convs, the same in every YOLOX config
COCO_CLASSES = 80

# YOLOX-L (yolox_l_8xb8-300e_coco.py): both factors 1.
LARGE_WIDEN_FACTOR = 1.0
LARGE_DEEPEN_FACTOR = 1.0

BACKBONE_PREFIX = "backbone."
NECK_PREFIX = "neck."
HEAD_PREFIX = "bbox_head."


@dataclass(frozen=True)
class YoloxConfig:
    stem_channels: int                # Focus output
    stage_channels: tuple[int, ...]   # each stage's output; the last NECK_LEVELS feed the neck
    stage_blocks: tuple[int, ...]     # DarknetBottlenecks in each stage's CSPLayer
    neck_channels: int                # YOLOXPAFPN out_channels, the head's in_channels
    neck_blocks: int                  # YOLOXPAFPN num_csp_blocks
    head_channels: int                # YOLOXHead feat_channels
    head_convs: int                   # YOLOXHead stacked_convs
    num_classes: int

    @classmethod
    def scaled(cls, widen_factor: float, deepen_factor: float, num_classes: int = COCO_CLASSES) -> "YoloxConfig":
        """The numbers mmdet's YOLOX configs give for these factors: CSPDarknet's rounding
        (int(channels x widen), max(round(blocks x deepen), 1)), applied to the neck as well."""

        def widen(channels: int) -> int:
            return int(channels * widen_factor)

        def deepen(blocks: int) -> int:
            return max(round(blocks * deepen_factor), 1)

        return cls(
            stem_channels=widen(P5_STEM_CHANNELS),
            stage_channels=tuple(widen(c) for c in P5_STAGE_CHANNELS),
            stage_blocks=tuple(deepen(n) for n in P5_STAGE_BLOCKS),
            neck_channels=widen(BASE_NECK_CHANNELS),
            neck_blocks=deepen(BASE_NECK_BLOCKS),
            head_channels=widen(BASE_NECK_CHANNELS),
            head_convs=HEAD_STACKED_CONVS,
            num_classes=num_classes,
        )

    @classmethod
    def large(cls) -> "YoloxConfig":
        """YOLOX-L, the published DWPose detector."""
        return cls.scaled(LARGE_WIDEN_FACTOR, LARGE_DEEPEN_FACTOR)

    @classmethod
    def from_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> "YoloxConfig":
        """The widths and counts of a YOLOX checkpoint (mmdet key names), read from its shapes and keys."""

        def indices(pattern: str) -> set[int]:
            return {int(m.group(1)) for key in state_dict if (m := re.fullmatch(pattern, key))}

        def count(pattern: str) -> int:  # modules numbered from 0
            return max(indices(pattern), default=-1) + 1

        stages = max(indices(re.escape(BACKBONE_PREFIX) + r"stage(\d+)\.0\.conv\.weight"))  # numbered from 1
        stage_range = range(1, stages + 1)
        csp_block = r"\d+\.blocks\.(\d+)\.conv1\.conv\.weight"  # stage{i}.<CSPLayer>.blocks.<j>
        cls_conv = state_dict[HEAD_PREFIX + "multi_level_conv_cls.0.weight"]
        return cls(
            stem_channels=state_dict[BACKBONE_PREFIX + "stem.conv.conv.weight"].shape[0],
            stage_channels=tuple(state_dict[f"{BACKBONE_PREFIX}stage{i}.0.conv.weight"].shape[0]
                                 for i in stage_range),
            # The CSPLayer is the stage's last module: index 1, or 2 behind the last stage's SPP.
            stage_blocks=tuple(count(re.escape(f"{BACKBONE_PREFIX}stage{i}.") + csp_block)
                               for i in stage_range),
            neck_channels=state_dict[NECK_PREFIX + "out_convs.0.conv.weight"].shape[0],
            neck_blocks=count(re.escape(NECK_PREFIX) + r"top_down_blocks\.0\.blocks\.(\d+)\.conv1\.conv\.weight"),
            head_channels=cls_conv.shape[1],
            head_convs=count(re.escape(HEAD_PREFIX) + r"multi_level_cls_convs\.0\.(\d+)\.conv\.weight"),
            num_classes=cls_conv.shape[0],
        )

    @property
    def strides(self) -> tuple[int, ...]:
        """The neck levels' strides in input pixels ((8, 16, 32) for P5)."""
        # The stem halves the image and every stage halves again: stage i (from 0) is at 2 ** (i + 2).
        all_strides = [DOWNSAMPLE ** (stage + 2) for stage in range(len(self.stage_channels))]
        return tuple(all_strides[-NECK_LEVELS:])


# --- backbone: CSPDarknet -------------------------------------------------------------------------

class Focus(nn.Module):
    """Space to depth: each 2x2 pixel block becomes four channel groups, then a 3x3 ConvBnAct."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBnAct(IN_CHANNELS * DOWNSAMPLE ** 2, out_channels, DOWNSAMPLE_KERNEL, eps=YOLOX_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mmdet's order: top-left, bottom-left, top-right, bottom-right (the column offset varies
        # slowest), each group all input channels.
        blocks = [x[..., row::DOWNSAMPLE, column::DOWNSAMPLE] for column in range(DOWNSAMPLE)
                  for row in range(DOWNSAMPLE)]
        return self.conv(torch.cat(blocks, dim=1))


def darknet_stage(in_channels: int, out_channels: int, blocks: int, last: bool) -> nn.Sequential:
    """Stride-2 3x3 conv, SPP in the last stage only, then a CSPLayer (whose bottlenecks add their
    input except in the last stage)."""
    layers: list[nn.Module] = [ConvBnAct(in_channels, out_channels, DOWNSAMPLE_KERNEL, DOWNSAMPLE, eps=YOLOX_BN_EPS)]
    if last:
        layers.append(SPPBottleneck(out_channels, out_channels, eps=YOLOX_BN_EPS))
    layers.append(CSPLayer(out_channels, out_channels, blocks, add_identity=not last, cspnext_blocks=False,
                           channel_attention=False, eps=YOLOX_BN_EPS))
    return nn.Sequential(*layers)


class CSPDarknet(nn.Module):
    """Focus stem and stages `stage1`..`stageN`; returns the last NECK_LEVELS stages' maps."""

    def __init__(self, config: YoloxConfig) -> None:
        super().__init__()
        self.stem = Focus(config.stem_channels)
        in_widths = (config.stem_channels,) + config.stage_channels[:-1]
        self.stage_names = []
        for index, (in_channels, out_channels, blocks) in enumerate(
                zip(in_widths, config.stage_channels, config.stage_blocks), start=1):
            name = f"stage{index}"
            self.add_module(name, darknet_stage(in_channels, out_channels, blocks,
                                                last=index == len(config.stage_channels)))
            self.stage_names.append(name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        maps = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            maps.append(x)
        return maps[-NECK_LEVELS:]


# --- neck: YOLOXPAFPN -----------------------------------------------------------------------------

def neck_csp_layer(in_channels: int, out_channels: int, blocks: int) -> CSPLayer:
    """The PAFPN's fusing CSPLayer: no identity shortcuts in its bottlenecks."""
    return CSPLayer(in_channels, out_channels, blocks, add_identity=False, cspnext_blocks=False,
                    channel_attention=False, eps=YOLOX_BN_EPS)


class YoloxPafpn(nn.Module):
    """Top-down then bottom-up path aggregation over maps of widths `in_channels` (finest first)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, blocks: int) -> None:
        super().__init__()
        levels = len(in_channels)
        coarse_to_fine = range(levels - 1, 0, -1)
        self.reduce_layers = nn.ModuleList(ConvBnAct(in_channels[level], in_channels[level - 1], 1, eps=YOLOX_BN_EPS)
                                           for level in coarse_to_fine)
        self.top_down_blocks = nn.ModuleList(neck_csp_layer(2 * in_channels[level - 1], in_channels[level - 1], blocks)
                                             for level in coarse_to_fine)
        self.downsamples = nn.ModuleList(ConvBnAct(in_channels[level], in_channels[level], DOWNSAMPLE_KERNEL,
                                                   DOWNSAMPLE, eps=YOLOX_BN_EPS) for level in range(levels - 1))
        self.bottom_up_blocks = nn.ModuleList(neck_csp_layer(2 * in_channels[level], in_channels[level + 1], blocks)
                                              for level in range(levels - 1))
        self.out_convs = nn.ModuleList(ConvBnAct(channels, out_channels, 1, eps=YOLOX_BN_EPS)
                                       for channels in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        levels = len(features)
        # Top-down. What the bottom-up path later joins at a coarse level is that level's
        # narrowed map (after reduce_layers), not its fused one: mmdet keeps it in `inner_outs`.
        narrowed: dict[int, torch.Tensor] = {}
        fused = features[-1]
        for step, level in enumerate(range(levels - 1, 0, -1)):
            narrowed[level] = self.reduce_layers[step](fused)
            upsampled = F.interpolate(narrowed[level], scale_factor=UPSAMPLE_FACTOR, mode="nearest")
            fused = self.top_down_blocks[step](torch.cat((upsampled, features[level - 1]), dim=1))
        # Bottom-up, from the finest fused map.
        outputs = [fused]
        for level in range(levels - 1):
            downsampled = self.downsamples[level](outputs[-1])
            outputs.append(self.bottom_up_blocks[level](torch.cat((downsampled, narrowed[level + 1]), dim=1)))
        return [conv(x) for conv, x in zip(self.out_convs, outputs)]


# --- head: YOLOXHead ------------------------------------------------------------------------------

LevelOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # class logits, box deltas, objectness logits


def stacked_convs(in_channels: int, channels: int, count: int) -> nn.Sequential:
    """`count` 3x3 ConvBnActs, the first from `in_channels`."""
    widths = [in_channels] + [channels] * count
    return nn.Sequential(*[ConvBnAct(a, b, HEAD_CONV_KERNEL, eps=YOLOX_BN_EPS)
                           for a, b in zip(widths[:-1], widths[1:])])


class YoloxHead(nn.Module):
    """Decoupled head, separate weights per level: class branch -> class logits; box branch -> box
    deltas and objectness logit."""

    def __init__(self, in_channels: int, channels: int, convs: int, num_classes: int, levels: int) -> None:
        super().__init__()
        self.multi_level_cls_convs = nn.ModuleList(stacked_convs(in_channels, channels, convs) for _ in range(levels))
        self.multi_level_reg_convs = nn.ModuleList(stacked_convs(in_channels, channels, convs) for _ in range(levels))
        self.multi_level_conv_cls = nn.ModuleList(nn.Conv2d(channels, num_classes, 1) for _ in range(levels))
        self.multi_level_conv_reg = nn.ModuleList(nn.Conv2d(channels, BOX_DELTAS, 1) for _ in range(levels))
        self.multi_level_conv_obj = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in range(levels))

    def forward(self, features: Sequence[torch.Tensor]) -> list[LevelOutput]:
        outputs = []
        for level, x in enumerate(features):
            class_features = self.multi_level_cls_convs[level](x)
            box_features = self.multi_level_reg_convs[level](x)
            outputs.append((self.multi_level_conv_cls[level](class_features),
                            self.multi_level_conv_reg[level](box_features),
                            self.multi_level_conv_obj[level](box_features)))
        return outputs


# --- the detector ---------------------------------------------------------------------------------

class Yolox(nn.Module):
    """CSPDarknet -> YOLOXPAFPN -> YOLOXHead, with mmdet's YOLOX key names."""

    def __init__(self, config: YoloxConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = CSPDarknet(config)
        self.neck = YoloxPafpn(config.stage_channels[-NECK_LEVELS:], config.neck_channels, config.neck_blocks)
        self.bbox_head = YoloxHead(config.neck_channels, config.head_channels, config.head_convs,
                                   config.num_classes, NECK_LEVELS)

    @property
    def strides(self) -> tuple[int, ...]:
        return self.config.strides

    def forward(self, image_batch: torch.Tensor) -> list[LevelOutput]:
        """Bx3xHxW float pixels 0..255 (BGR), H and W multiples of the coarsest stride ->
        per level, finest first: (class logits BxCxhxw, box deltas Bx4xhxw, objectness logits Bx1xhxw)."""
        height, width = image_batch.shape[-2:]
        coarsest = max(self.strides)
        if height % coarsest or width % coarsest:
            # The PAFPN's 2x upsampled maps would not match the finer ones (mmdet pads to 32).
            raise ValueError(f"YOLOX needs image sides that are multiples of {coarsest}, "
                             f"got {height}x{width}; pad first")
        return self.bbox_head(self.neck(self.backbone(image_batch)))


class Detections(NamedTuple):
    boxes: torch.Tensor   # BxNx4, x1 y1 x2 y2 in input pixels, one box per grid point of every level
    scores: torch.Tensor  # BxN, best class probability x objectness probability
    labels: torch.Tensor  # BxN, the best class
    class_scores: torch.Tensor  # BxNxC, every class's probability x objectness (class-aware NMS reads these)


def level_priors(height: int, width: int, stride: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A level's grid points (x, y) in input pixels, row by row (mmdet MlvlPointGenerator.grid_priors)."""
    xs = (torch.arange(width, device=device, dtype=dtype) + PRIOR_OFFSET) * stride
    ys = (torch.arange(height, device=device, dtype=dtype) + PRIOR_OFFSET) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1)


def decode_detections(levels: Sequence[LevelOutput], strides: Sequence[int]) -> Detections:
    """Every grid point's box and score, as YOLOXHead.predict_by_feat computes them before its
    score threshold and NMS (neither is done here): box centre = prior + delta x stride, box size =
    exp(delta) x stride; score = max over classes of sigmoid(class logit), times sigmoid(objectness).
    Points are ordered level by level (finest first), row by row within a level."""
    if len(levels) != len(strides):
        raise ValueError(f"{len(levels)} levels but {len(strides)} strides")
    class_logits, deltas, objectness = [], [], []
    for level_classes, level_deltas, level_objectness in levels:
        batch, num_classes = level_classes.shape[:2]
        class_logits.append(level_classes.permute(0, 2, 3, 1).reshape(batch, -1, num_classes))
        deltas.append(level_deltas.permute(0, 2, 3, 1).reshape(batch, -1, BOX_DELTAS))
        objectness.append(level_objectness.permute(0, 2, 3, 1).reshape(batch, -1))
    sizes = [tuple(level_classes.shape[-2:]) for level_classes, _, _ in levels]
    return _detections(torch.cat(deltas, dim=1), torch.cat(objectness, dim=1).sigmoid(),
                       torch.cat(class_logits, dim=1).sigmoid(), sizes, strides)


def decode_exported(rows: torch.Tensor, strides: Sequence[int], input_size: tuple[int, int]) -> Detections:
    """`decode_detections` for YOLOX as Megvii's `tools/export_onnx.py` exports it (DWPose's
    `yolox_l.onnx`): one Bx(points)x(5 + classes) output, points as above, each row the four box
    deltas, then the objectness and class probabilities (already through the sigmoid).
    `input_size` is the network input's (height, width)."""
    sizes = [(input_size[0] // stride, input_size[1] // stride) for stride in strides]
    points = sum(height * width for height, width in sizes)
    if rows.dim() != 3 or rows.shape[1] != points or rows.shape[2] <= BOX_DELTAS + 1:
        raise ValueError(f"expected YOLOX's exported output of shape (batch, {points}, 5 + classes) for a "
                         f"{input_size[0]}x{input_size[1]} input, got {tuple(rows.shape)}")
    return _detections(rows[..., :BOX_DELTAS], rows[..., BOX_DELTAS], rows[..., BOX_DELTAS + 1:], sizes, strides)


def _detections(deltas: torch.Tensor, object_probabilities: torch.Tensor, class_probabilities: torch.Tensor,
                level_sizes: Sequence[tuple[int, int]], strides: Sequence[int]) -> Detections:
    """Boxes and scores from every point's deltas (BxNx4) and probabilities (BxN, BxNxC)."""
    priors = torch.cat([level_priors(height, width, stride, deltas.dtype, deltas.device)
                        for (height, width), stride in zip(level_sizes, strides)])
    prior_strides = torch.cat([torch.full((height * width, 2), stride, dtype=deltas.dtype, device=deltas.device)
                               for (height, width), stride in zip(level_sizes, strides)])
    centres = deltas[..., :2] * prior_strides + priors
    sizes = deltas[..., 2:].exp() * prior_strides
    boxes = torch.cat((centres - sizes / 2, centres + sizes / 2), dim=-1)
    best, labels = class_probabilities.max(dim=-1)
    return Detections(boxes=boxes, scores=best * object_probabilities, labels=labels,
                      class_scores=class_probabilities * object_probabilities.unsqueeze(-1))
