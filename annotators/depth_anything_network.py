"""The Depth Anything V2 network (Yang et al., "Depth Anything V2", NeurIPS 2024), in plain torch:
a DINOv2 vision transformer (Oquab et al., 2023) read out at four depths by a DPT head
(Ranftl et al., 2021), giving relative inverse depth (near is large).

Published layout (DepthAnything/Depth-Anything-V2 `depth_anything_v2/dpt.py` `DepthAnythingV2`,
the files huggingface.co/depth-anything/Depth-Anything-V2-{Small,Base,Large} publish as
`depth_anything_v2_vit{s,b,l}.pth`):

* `pretrained`: DINOv2 ViT/14 (`dinov2.py` `DINOv2(model_name)`): a 14x14 stride-14 patch
  convolution, a class token, position embeddings trained on a 37 x 37 grid (518 pixels) and
  resized bicubically to other grids with DINOv2's +0.1 scale-factor rule (see
  `interpolate_position_embedding`), pre-norm blocks with LayerScale, a final norm. `mask_token`
  is published but only used in DINOv2's masked training.
* `depth_head` (`DPTHead`): the normed patch tokens after four blocks become feature maps
  (1x1 `projects`, then `resize_layers`: x4 and x2 transposed convolutions, identity, a 3x3
  stride-2 convolution), `scratch.layer{1..4}_rn` bring them to `features` channels, four
  RefineNet fusion blocks go coarse to fine, each upsampling to the next map's exact size, and
  the head upsamples to the input size and ends in a ReLU.

Module and parameter names mirror the published keys so the files load strictly. The size of
the encoder (vits / vitb / vitl, and vitg, whose weights are not published) is read from the
weights' shapes by `encoder_for_width`; `ENCODERS` holds the configurations of the original's
`model_configs` (run.py, app.py) and `intermediate_layer_idx` (dpt.py).

Depth Anything V1 (Yang et al., CVPR 2024; LiheYoung/Depth-Anything `depth_anything/dpt.py`
`DPT_DINOv2`, files `depth_anything_vit{s,b,l}14.pth`) is the same network with the same keys and
widths, except that its head reads the last four blocks (`V1_ENCODERS`). Its forward also resizes
the head's output bilinearly (align_corners=True) to the input size before a last ReLU; the head
already outputs that size (sides are multiples of 14), so both are no-ops, left out as for V2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .dpt_blocks import HEAD_HIDDEN, DPTFusion
from .networks_common import TokenMlp

# --- DINOv2 (depth_anything_v2/dinov2.py DINOv2(): img_size=518, patch_size=14, init_values=1.0,
# ffn_layer "mlp" except vitg "swiglufused", block_chunks=0, num_register_tokens=0,
# interpolate_antialias=False, interpolate_offset=0.1) -------------------------------------
PATCH_SIZE = 14
PRETRAINED_GRID = 518 // PATCH_SIZE  # pos_embed holds 1 + 37 * 37 positions
CLASS_TOKENS = 1                     # num_tokens = 1; no register tokens
MLP_RATIO = 4                        # vit_small / base / large / giant2: mlp_ratio=4
LAYER_NORM_EPS = 1e-6                # partial(nn.LayerNorm, eps=1e-6)
# "we add a small number to avoid floating point error in the interpolation" (DINO issue #8):
# the grid is resized by scale_factor (n + 0.1) / 37, not to size n, see interpolate_position_embedding.
POSITION_INTERPOLATION_OFFSET = 0.1
POSITION_INTERPOLATION_MODE = "bicubic"
# dinov2_layers/swiglu_ffn.py SwiGLUFFNFused keeps two thirds of the MLP width, rounded up to a
# multiple of 8: (int(hidden * 2 / 3) + 7) // 8 * 8.
SWIGLU_MULTIPLE = 8

# --- DPT head (depth_anything_v2/dpt.py DPTHead, util/blocks.py) --------------------------------
# resize_layers: ConvTranspose2d k=s=4, ConvTranspose2d k=s=2, Identity, Conv2d 3x3 stride 2:
# the four readouts at 4x, 2x, 1x and 1/2 of the token grid.
UPSAMPLE_FACTORS = (4, 2)
DOWNSAMPLE_STRIDE = 2


@dataclass(frozen=True)
class EncoderSize:
    """One Depth Anything V2 configuration: the DINOv2 encoder (width, depth, heads, feed-forward
    kind), the blocks the head reads (0-based), and the head's widths."""

    name: str
    embed_dim: int
    depth: int
    heads: int
    swiglu: bool                          # vitg: SwiGLU feed-forward (w12, w3) instead of fc1, fc2
    layers: tuple[int, int, int, int]     # dpt.py intermediate_layer_idx
    features: int                         # DPTHead features
    out_channels: tuple[int, int, int, int]


# dinov2.py vit_small / vit_base / vit_large / vit_giant2 (embed_dim, depth, num_heads) and
# run.py / app.py model_configs (features, out_channels), dpt.py intermediate_layer_idx.
ENCODERS = {
    size.name: size for size in (
        EncoderSize("vits", 384, 12, 6, False, (2, 5, 8, 11), 64, (48, 96, 192, 384)),
        EncoderSize("vitb", 768, 12, 12, False, (2, 5, 8, 11), 128, (96, 192, 384, 768)),
        EncoderSize("vitl", 1024, 24, 16, False, (4, 11, 17, 23), 256, (256, 512, 1024, 1024)),
        EncoderSize("vitg", 1536, 40, 24, True, (9, 19, 29, 39), 384, (1536, 1536, 1536, 1536)),
    )
}


# Depth Anything V1's DPT_DINOv2.forward reads get_intermediate_layers(x, 4): the last four blocks
# (dinov2 vision_transformer.py: "If n is an int, take the n last blocks"). Its configurations
# (dpt.py, and comfyui_controlnet_aux's DPT_CONFIGS) are V2's otherwise; V1 published vits, vitb
# and vitl only (DPT_DINOv2 asserts encoder in ['vits', 'vitb', 'vitl']).
V1_READOUT_BLOCKS = 4


def last_blocks_readout(size: EncoderSize) -> EncoderSize:
    """`size` with its head reading the last four blocks, as Depth Anything V1's does."""
    return replace(size, layers=tuple(range(size.depth - V1_READOUT_BLOCKS, size.depth)))


V1_ENCODERS = {name: last_blocks_readout(ENCODERS[name]) for name in ("vits", "vitb", "vitl")}


def encoder_for_width(embed_dim: int) -> EncoderSize | None:
    """The configuration whose encoder is `embed_dim` wide (each size has its own width)."""
    return next((size for size in ENCODERS.values() if size.embed_dim == embed_dim), None)


# --- DINOv2 --------------------------------------------------------------------------------------

class PatchEmbedding(nn.Module):
    """Non-overlapping square patches (14x14 here) -> tokens (B, grid_h * grid_w, D), row-major."""

    def __init__(self, embed_dim: int, patch_size: int = PATCH_SIZE):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention, one qkv projection (with bias), softmax(q k^T / sqrt(d)) v."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, width))


def swiglu_hidden(dim: int) -> int:
    two_thirds = int(MLP_RATIO * dim * 2 / 3)  # this order of operations, as swiglu_ffn.py
    return (two_thirds + SWIGLU_MULTIPLE - 1) // SWIGLU_MULTIPLE * SWIGLU_MULTIPLE


class SwiGLUFeedForward(nn.Module):
    """vitg's feed-forward: w12 gives (gate, value) halves; w3(silu(gate) * value)."""

    def __init__(self, dim: int):
        super().__init__()
        hidden = swiglu_hidden(dim)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (Touvron et al., CaiT)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class TransformerBlock(nn.Module):
    """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, size: EncoderSize):
        super().__init__()
        dim = size.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, size.heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = SwiGLUFeedForward(dim) if size.swiglu else TokenMlp(dim, MLP_RATIO * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_position_embedding(position_embedding: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[1, 1 + s*s, D] -> [1, 1 + h*w, D] for an image of height x width pixels (h, w = sides // 14),
    with DINOv2's rule (dinov2.py interpolate_pos_encoding, interpolate_offset=0.1):

    * kept as it is when the token count is the trained one and the image is square;
    * otherwise the s x s grid is resized bicubically (half-pixel centres, no antialiasing) by
      scale factors ((h + 0.1) / s, (w + 0.1) / s) in float32. The output is h x w (the floor of
      s times the factor), but the source position of output pixel i is (i + 0.5) * s / (h + 0.1)
      - 0.5, not (i + 0.5) * s / h - 0.5 as resizing to size (h, w) would give (what
      transformers' Dinov2 does): the samples are spread over slightly more than the grid.
    """
    grid_height, grid_width = height // PATCH_SIZE, width // PATCH_SIZE
    positions = position_embedding.shape[1] - CLASS_TOKENS
    if grid_height * grid_width == positions and height == width:
        return position_embedding
    dim = position_embedding.shape[-1]
    side = math.sqrt(positions)
    grid = position_embedding[:, CLASS_TOKENS:].float()
    grid = grid.reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
    scale = ((grid_height + POSITION_INTERPOLATION_OFFSET) / side,
             (grid_width + POSITION_INTERPOLATION_OFFSET) / side)
    grid = F.interpolate(grid, scale_factor=scale, mode=POSITION_INTERPOLATION_MODE,
                         align_corners=False, antialias=False)
    if grid.shape[-2:] != (grid_height, grid_width):  # dinov2.py asserts the same
        raise RuntimeError(f"position embeddings resized to {tuple(grid.shape[-2:])}, "
                           f"not the {grid_height}x{grid_width} token grid")
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)
    return torch.cat([position_embedding[:, :CLASS_TOKENS].float(), grid], dim=1)


class DinoVisionTransformer(nn.Module):
    """`pretrained`. `forward` returns the patch tokens (class token dropped) after the given
    blocks, each passed through the final norm (get_intermediate_layers(norm=True))."""

    def __init__(self, size: EncoderSize, position_grid: int = PRETRAINED_GRID):
        super().__init__()
        dim = size.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, CLASS_TOKENS, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, CLASS_TOKENS + position_grid ** 2, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # published, unused at inference
        self.patch_embed = PatchEmbedding(dim)
        self.blocks = nn.ModuleList([TransformerBlock(size) for _ in range(size.depth)])
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, layers: tuple[int, ...]) -> list[torch.Tensor]:
        batch, _, height, width = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + interpolate_position_embedding(self.pos_embed, height, width).to(tokens.dtype)
        outputs = []
        for index, block in enumerate(self.blocks[:max(layers) + 1]):
            tokens = block(tokens)
            if index in layers:
                outputs.append(self.norm(tokens)[:, CLASS_TOKENS:])
        return outputs


# --- DPT head ------------------------------------------------------------------------------------

class Scratch(DPTFusion):
    """`depth_head.scratch`: MiDaS's fusion stage (dpt_blocks.DPTFusion), then the depth head
    (3x3 conv, bilinear to the input size, 3x3 conv, ReLU, 1x1 conv, ReLU: non-negative relative
    inverse depth). The head is not dpt_blocks.DPTDecoder's: the finest fused map is 8/14 of the
    input here (1/2 in MiDaS), so it resizes to the input size rather than x2, and it is
    published as output_conv1 + output_conv2, not one output_conv."""

    def __init__(self, size: EncoderSize):
        super().__init__(size.out_channels, size.features)
        features = size.features
        self.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_HIDDEN, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN, 1, 1),
            nn.ReLU(),
        )

    def forward(self, levels: list[torch.Tensor], output_size: tuple[int, int]) -> torch.Tensor:
        _, fused = self.fuse(levels)
        out = self.output_conv1(fused[-1])
        out = F.interpolate(out, output_size, mode="bilinear", align_corners=True)
        return self.output_conv2(out)


class DPTHead(nn.Module):
    """`depth_head`: token sequences -> feature maps at 4x, 2x, 1x, 1/2 of the token grid ->
    scratch. Depth Anything V2 reads no class token (use_clstoken=False: no readout_projects),
    and its 1x1 convs and resizes are published as two lists (projects.<i>, resize_layers.<i>),
    so dpt_blocks.Reassemble (readout, then act_postprocess<i>.3 and .4) does not fit them."""

    def __init__(self, size: EncoderSize):
        super().__init__()
        channels = size.out_channels
        self.projects = nn.ModuleList([nn.Conv2d(size.embed_dim, c, 1) for c in channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(channels[0], channels[0], UPSAMPLE_FACTORS[0], stride=UPSAMPLE_FACTORS[0]),
            nn.ConvTranspose2d(channels[1], channels[1], UPSAMPLE_FACTORS[1], stride=UPSAMPLE_FACTORS[1]),
            nn.Identity(),
            nn.Conv2d(channels[3], channels[3], 3, stride=DOWNSAMPLE_STRIDE, padding=1),
        ])
        self.scratch = Scratch(size)

    def forward(self, tokens: list[torch.Tensor], grid_height: int, grid_width: int) -> torch.Tensor:
        levels = []
        for sequence, project, resize in zip(tokens, self.projects, self.resize_layers):
            x = sequence.transpose(1, 2).reshape(sequence.shape[0], sequence.shape[2], grid_height, grid_width)
            levels.append(resize(project(x)))
        return self.scratch(levels, (grid_height * PATCH_SIZE, grid_width * PATCH_SIZE))


class DepthAnythingV2Network(nn.Module):
    """Depth Anything V2 of one encoder size ("vits", "vitb", "vitl", "vitg" or an EncoderSize);
    Depth Anything V1 given one of V1_ENCODERS.
    Input Bx3xHxW, RGB normalised with the ImageNet mean and std, H and W multiples of 14; output
    BxHxW relative inverse depth (>= 0, larger is nearer, arbitrary scale)."""

    def __init__(self, encoder: str | EncoderSize = "vitl", position_grid: int = PRETRAINED_GRID):
        super().__init__()
        self.encoder_size = ENCODERS[encoder] if isinstance(encoder, str) else encoder
        self.pretrained = DinoVisionTransformer(self.encoder_size, position_grid)
        self.depth_head = DPTHead(self.encoder_size)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        height, width = rgb.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(
                f"Depth Anything V2 needs sides that are multiples of {PATCH_SIZE}, got {height}x{width}; "
                "resize the image (annotators.depth_anything does this for you)")
        tokens = self.pretrained(rgb, self.encoder_size.layers)
        # dpt.py applies F.relu once more after the head's own final ReLU: a no-op, left out.
        return self.depth_head(tokens, height // PATCH_SIZE, width // PATCH_SIZE).squeeze(1)
