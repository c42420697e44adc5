"""The ZoeDepth network (Bhat et al., "ZoeDepth: Zero-shot Transfer by Combining Relative and Metric
Depth", 2023) of the ZoeD_M12_N checkpoint, in plain torch: MiDaS v3.1's DPT on a BEiT-L/16 384
backbone (Ranftl et al. 2021; Bao et al., "BEiT", 2022) gives relative depth and decoder features,
and a metric-bins head turns them into metric depth (metres, far is large).

Published layout (isl-org/ZoeDepth `ZoeDepth.build(**get_config("zoedepth", "infer"))`, the file
lllyasviel/Annotators ships as `ZoeD_M12_N.pt`, weights under its "model" entry):

* `core.core.pretrained.model`: timm's `beit_large_patch16_384` (1024 wide, 24 blocks, 16 heads,
  no absolute position embeddings; every block has its own relative position bias table for the
  trained 24 x 24 token grid, layer scales `gamma_1/2`, q and v biases but no k bias). MiDaS patches
  its forward (backbones/beit.py) so that any grid works: each block's table is resized bilinearly
  to the grid's (2h-1) x (2w-1) relative offsets, and the index into it is rebuilt for the grid.
  The published `relative_position_index` buffers (the 24 x 24 grid's) are therefore never read;
  `fc_norm` and `head` (the ImageNet classifier) are unused too, but all are in the file.
* `core.core.pretrained.act_postprocess1..4`: the token sequences after blocks 6, 12, 18 and 24
  become maps at 1/4, 1/8, 1/16 and 1/32 (dpt_blocks.Reassemble).
* `core.core.scratch`: MiDaS's DPT decoder and relative-depth head (dpt_blocks.DPTDecoder).
* the metric head (zoedepth_v1.py ZoeDepth, bin_centers_type "softplus", attractor_type "inv",
  attractor_kind "mean"): seed bin centres regressed from the coarsest decoder map, moved by four
  attractor layers along the decoder's fusion outputs (coarse to fine), and a per-pixel
  distribution over the 64 bins (a binomial with a predicted probability and temperature, on the
  head's features and the relative depth); depth is the expected bin centre.

Module and parameter names mirror the published keys so the file loads strictly. The widths are
a `ZoeSize`, read from the weights by `annotators.zoe` (tests use narrow ones); the depth, the
blocks read out and the metric head are the published model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .depth_anything_network import MLP_RATIO, PatchEmbedding
from .dpt_blocks import HEAD_HIDDEN, DecodedLevels, DPTDecoder, Reassemble
from .networks_common import TokenMlp

# --- BEiT-L/16 (timm beit.py beit_large_patch16_384 and Beit defaults) --------------------------
PATCH_SIZE = 16
DEPTH = 24
LAYER_NORM_EPS = 1e-6           # Beit norm_layer = partial(LayerNorm, eps=1e-6)
IMAGENET_CLASSES = 1000         # the unused classifier head the published file still holds
# Relative position bias tables end in three rows for the class token: class -> patch,
# patch -> class, class -> class (timm gen_relative_position_index).
CLASS_TOKEN_RELATIONS = 3
# --- DPT on BEiT-L (MiDaS dpt_depth.py hooks["beitl16_384"], blocks.py _make_encoder) ---------
HOOKS = (5, 11, 17, 23)         # blocks read out for 1/4, 1/8, 1/16, 1/32 (0-based)
UPSAMPLE_FACTORS = (4, 2)       # act_postprocess1/2 end in ConvTranspose2d(k=s=4), (k=s=2)
DOWNSAMPLE_STRIDE = 2           # act_postprocess4 ends in a 3x3 stride-2 conv
# --- metric head (config_zoedepth.json "model", ZoeDepth.__init__ and layers/ defaults) --------
N_BINS = 64
BIN_EMBEDDING_DIM = 128
N_ATTRACTORS = (16, 8, 4, 1)
SEED_MLP_DIM = 256              # SeedBinRegressorUnnormed mlp_dim default
PROJECTOR_MLP_DIM = 128         # Projector mlp_dim default
ATTRACTOR_MLP_DIM = 128         # AttractorLayerUnnormed mlp_dim default
# AttractorLayerUnnormed calls inv_attractor(dx) without its alpha and gamma, so the function's
# defaults apply (300, 2), not the config's attractor_alpha 1000: the checkpoint was trained so.
ATTRACTOR_ALPHA = 300.0
ATTRACTOR_GAMMA = 2
MIN_TEMPERATURE = 0.0212        # config "min_temp"
MAX_TEMPERATURE = 50.0          # config "max_temp"
PROBABILITY_EPS = 1e-4          # ConditionalLogBinomial p_eps: added to both halves of p and t
BINOMIAL_CLAMP_EPS = 1e-4       # LogBinomial.forward eps: p and 1 - p kept in [eps, 1]
STIRLING_EPS = 1e-7             # log_binom eps
BOTTLENECK_FACTOR = 2           # ConditionalLogBinomial bottleneck_factor


@dataclass(frozen=True)
class ZoeSize:
    """The widths of one ZoeDepth network: the BEiT's (`embed_dim`, `heads`, `window`: the side of
    the token grid its relative position tables were trained on), the reassembled maps' channels
    and the DPT decoder's `features` (also the metric head's input width)."""

    embed_dim: int
    heads: int
    window: int
    reassemble_channels: tuple[int, int, int, int]
    features: int


ZOE_LARGE = ZoeSize(embed_dim=1024, heads=16, window=384 // PATCH_SIZE,
                    reassemble_channels=(256, 512, 1024, 1024), features=256)


# --- BEiT with MiDaS's any-grid relative position bias --------------------------------------------

def relative_position_index(grid_height: int, grid_width: int, device: torch.device | None = None) -> torch.Tensor:
    """(1 + h*w) x (1 + h*w) rows into a relative position bias table for an h x w token grid plus
    a class token (timm gen_relative_position_index): patch i -> patch j reads the row of their
    offset (dy, dx), (dy + h - 1) * (2w - 1) + dx + w - 1; the class token's three relations read
    the table's last three rows."""
    offsets = (2 * grid_height - 1) * (2 * grid_width - 1)
    rows, columns = torch.meshgrid(torch.arange(grid_height, device=device),
                                   torch.arange(grid_width, device=device), indexing="ij")
    rows, columns = rows.flatten(), columns.flatten()
    dy = rows[:, None] - rows[None, :] + grid_height - 1
    dx = columns[:, None] - columns[None, :] + grid_width - 1
    tokens = grid_height * grid_width + 1
    index = torch.empty(tokens, tokens, dtype=torch.long, device=device)
    index[1:, 1:] = dy * (2 * grid_width - 1) + dx
    index[0, :] = offsets          # class -> patch
    index[:, 0] = offsets + 1      # patch -> class
    index[0, 0] = offsets + 2      # class -> class
    return index


def resized_bias_table(table: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
    """A bias table trained for a square grid -> the table of an h x w grid: the (2s-1) x (2s-1)
    offsets bilinearly resized (half-pixel centres) to (2h-1) x (2w-1), the class token's three
    rows kept (MiDaS backbones/beit.py _get_rel_pos_bias)."""
    offsets = table.shape[0] - CLASS_TOKEN_RELATIONS
    side = math.isqrt(offsets)
    grid = table[:offsets].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(2 * grid_height - 1, 2 * grid_width - 1), mode="bilinear")
    grid = grid.permute(0, 2, 3, 1).reshape((2 * grid_height - 1) * (2 * grid_width - 1), -1)
    return torch.cat([grid, table[offsets:]])


class BeitAttention(nn.Module):
    """Multi-head self-attention with learned q and v biases (k has none) and a relative position
    bias per head, written out as MiDaS's patched timm attention computes it."""

    def __init__(self, size: ZoeSize):
        super().__init__()
        self.heads = size.heads
        self.scale = (size.embed_dim // size.heads) ** -0.5
        offsets = (2 * size.window - 1) ** 2
        self.q_bias = nn.Parameter(torch.zeros(size.embed_dim))
        self.v_bias = nn.Parameter(torch.zeros(size.embed_dim))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(offsets + CLASS_TOKEN_RELATIONS, size.heads))
        # Published (the trained grid's index, saved by an older timm); the bias is always indexed
        # for the input's own grid instead (see relative_position_bias).
        self.register_buffer("relative_position_index", relative_position_index(size.window, size.window))
        self.qkv = nn.Linear(size.embed_dim, 3 * size.embed_dim, bias=False)
        self.proj = nn.Linear(size.embed_dim, size.embed_dim)

    def relative_position_bias(self, index: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
        """1 x heads x tokens x tokens, for the grid `index` was built for."""
        table = resized_bias_table(self.relative_position_bias_table, grid_height, grid_width)
        tokens = index.shape[0]
        return table[index.view(-1)].view(tokens, tokens, -1).permute(2, 0, 1).contiguous().unsqueeze(0)

    def forward(self, x: torch.Tensor, index: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
        batch, tokens, width = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(batch, tokens, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        # softmax(q k^T / sqrt(d) + bias) v, in the patched timm's order of operations
        attention = (q * self.scale) @ k.transpose(-2, -1)
        attention = attention + self.relative_position_bias(index, grid_height, grid_width)
        x = (attention.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, width)
        return self.proj(x)


class BeitBlock(nn.Module):
    """Pre-norm block with layer scale: x + gamma_1 * attn(norm1(x)), then x + gamma_2 * mlp(norm2(x))."""

    def __init__(self, size: ZoeSize):
        super().__init__()
        dim = size.embed_dim
        self.gamma_1 = nn.Parameter(torch.ones(dim))
        self.gamma_2 = nn.Parameter(torch.ones(dim))
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = BeitAttention(size)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = TokenMlp(dim, MLP_RATIO * dim)

    def forward(self, x: torch.Tensor, index: torch.Tensor, grid_height: int, grid_width: int) -> torch.Tensor:
        x = x + self.gamma_1 * self.attn(self.norm1(x), index, grid_height, grid_width)
        return x + self.gamma_2 * self.mlp(self.norm2(x))


class Beit(nn.Module):
    """`core.core.pretrained.model`. `forward` returns the token sequences (class token first)
    after the HOOKS blocks."""

    def __init__(self, size: ZoeSize):
        super().__init__()
        dim = size.embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.patch_embed = PatchEmbedding(dim, PATCH_SIZE)
        self.blocks = nn.ModuleList([BeitBlock(size) for _ in range(DEPTH)])
        self.fc_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)  # published, unused (classifier pooling)
        self.head = nn.Linear(dim, IMAGENET_CLASSES)          # published, unused

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        grid_height, grid_width = x.shape[2] // PATCH_SIZE, x.shape[3] // PATCH_SIZE
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        index = relative_position_index(grid_height, grid_width, device=x.device)
        outputs = []
        for number, block in enumerate(self.blocks[:max(HOOKS) + 1]):
            tokens = block(tokens, index, grid_height, grid_width)
            if number in HOOKS:
                outputs.append(tokens)
        return outputs


class BeitEncoder(nn.Module):
    """`core.core.pretrained`: the BEiT and its four reassemble stages (maps at 1/4, 1/8, 1/16, 1/32)."""

    def __init__(self, size: ZoeSize):
        super().__init__()
        dim, channels = size.embed_dim, size.reassemble_channels
        self.model = Beit(size)
        self.act_postprocess1 = Reassemble(dim, channels[0], nn.ConvTranspose2d(
            channels[0], channels[0], UPSAMPLE_FACTORS[0], stride=UPSAMPLE_FACTORS[0]))
        self.act_postprocess2 = Reassemble(dim, channels[1], nn.ConvTranspose2d(
            channels[1], channels[1], UPSAMPLE_FACTORS[1], stride=UPSAMPLE_FACTORS[1]))
        self.act_postprocess3 = Reassemble(dim, channels[2])
        self.act_postprocess4 = Reassemble(dim, channels[3], nn.Conv2d(
            channels[3], channels[3], 3, stride=DOWNSAMPLE_STRIDE, padding=1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        grid = (x.shape[2] // PATCH_SIZE, x.shape[3] // PATCH_SIZE)
        stages = (self.act_postprocess1, self.act_postprocess2, self.act_postprocess3, self.act_postprocess4)
        return [stage(tokens, *grid) for stage, tokens in zip(stages, self.model(x))]


class MidasBeit(nn.Module):
    """`core.core`: MiDaS v3.1 DPT_BEiT_L_384 (dpt_depth.py DPTDepthModel, non_negative=True)."""

    def __init__(self, size: ZoeSize):
        super().__init__()
        self.pretrained = BeitEncoder(size)
        self.scratch = DPTDecoder(size.reassemble_channels, size.features)


class MidasCore(nn.Module):
    """`core`: ZoeDepth's MidasCore holds the MiDaS model as `core` and reads its decoder (the
    coarsest map, the fusion outputs, the head's features) besides its relative depth."""

    def __init__(self, size: ZoeSize):
        super().__init__()
        self.core = MidasBeit(size)

    def forward(self, x: torch.Tensor) -> DecodedLevels:
        return self.core.scratch.decode(self.core.pretrained(x))


# --- the metric-bins head --------------------------------------------------------------------------

class SeedBinRegressor(nn.Module):
    """SeedBinRegressorUnnormed: 1x1 MLP -> N_BINS positive (softplus) bin centres per pixel."""

    def __init__(self, in_channels: int):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(in_channels, SEED_MLP_DIM, 1), nn.ReLU(),
                                  nn.Conv2d(SEED_MLP_DIM, N_BINS, 1), nn.Softplus())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


class Projector(nn.Module):
    """1x1 MLP: decoder features -> bin embedding."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(in_channels, PROJECTOR_MLP_DIM, 1), nn.ReLU(),
                                  nn.Conv2d(PROJECTOR_MLP_DIM, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)


class Attractor(nn.Module):
    """AttractorLayerUnnormed ("inv", "mean"): `count` attractor points a per pixel, from the bin
    embedding plus the previous one (bilinearly brought to this scale); each bin centre c, brought
    to this scale too, moves by the mean over the attractors of dx / (1 + alpha dx^gamma), dx = a - c."""

    def __init__(self, count: int):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(BIN_EMBEDDING_DIM, ATTRACTOR_MLP_DIM, 1), nn.ReLU(),
                                  nn.Conv2d(ATTRACTOR_MLP_DIM, count, 1), nn.Softplus())

    def forward(self, embedding: torch.Tensor, centers: torch.Tensor, previous_embedding: torch.Tensor) -> torch.Tensor:
        previous_embedding = F.interpolate(previous_embedding, embedding.shape[-2:], mode="bilinear", align_corners=True)
        attractors = self._net(embedding + previous_embedding)
        centers = F.interpolate(centers, attractors.shape[-2:], mode="bilinear", align_corners=True)
        dx = attractors.unsqueeze(2) - centers.unsqueeze(1)
        return centers + torch.mean(dx.div(1 + ATTRACTOR_ALPHA * dx.pow(ATTRACTOR_GAMMA)), dim=1)


class LogBinomial(nn.Module):
    """softmax over k of log(C(K-1, k) p^k (1-p)^(K-1-k)) / t (Stirling's log C; layers/dist_layers.py
    LogBinomial). `k_idx` (0..K-1) and `K_minus_1` are published buffers and used as loaded."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes
        self.register_buffer("k_idx", torch.arange(classes).view(1, -1, 1, 1))
        self.register_buffer("K_minus_1", torch.tensor([classes - 1.0]).view(1, -1, 1, 1))

    def forward(self, probability: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
        p = probability.unsqueeze(1)
        one_minus_p = torch.clamp(1 - p, BINOMIAL_CLAMP_EPS, 1)
        p = torch.clamp(p, BINOMIAL_CLAMP_EPS, 1)
        log_probability = (log_binomial(self.K_minus_1, self.k_idx) + self.k_idx * torch.log(p)
                           + (self.classes - 1 - self.k_idx) * torch.log(one_minus_p))
        return torch.softmax(log_probability / temperature, dim=1)


def log_binomial(n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """log C(n, k) by Stirling's approximation n log n - k log k - (n-k) log(n-k) (dist_layers.py log_binom)."""
    n = n + STIRLING_EPS
    k = k + STIRLING_EPS
    return n * torch.log(n) - k * torch.log(k) - (n - k) * torch.log(n - k + STIRLING_EPS)


class ConditionalLogBinomial(nn.Module):
    """Per pixel, a 1x1 MLP on (features, condition) predicts the binomial's p and temperature t,
    each as the first of two softplus halves over their sum; t is mapped into [min, max]."""

    def __init__(self, in_channels: int, condition_channels: int):
        super().__init__()
        joint = in_channels + condition_channels
        self.log_binomial_transform = LogBinomial(N_BINS)
        self.mlp = nn.Sequential(nn.Conv2d(joint, joint // BOTTLENECK_FACTOR, 1), nn.GELU(),
                                 nn.Conv2d(joint // BOTTLENECK_FACTOR, 4, 1), nn.Softplus())

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        halves = self.mlp(torch.concat((x, condition), dim=1))
        p, t = halves[:, :2] + PROBABILITY_EPS, halves[:, 2:] + PROBABILITY_EPS
        p = p[:, 0] / (p[:, 0] + p[:, 1])
        t = (t[:, 0] / (t[:, 0] + t[:, 1])).unsqueeze(1)
        t = (MAX_TEMPERATURE - MIN_TEMPERATURE) * t + MIN_TEMPERATURE
        return self.log_binomial_transform(p, t)


class ZoeDepthNetwork(nn.Module):
    """ZoeDepth (ZoeD_M12_N). Input Bx3xHxW, RGB in 0..1 normalised to -1..1 (MiDaS's mean = std =
    0.5), H and W multiples of 16 (annotators.zoe resizes to multiples of 32); output Bx1xHxW metric
    depth in metres (far is large)."""

    def __init__(self, size: ZoeSize = ZOE_LARGE):
        super().__init__()
        self.size = size
        features = size.features
        self.core = MidasCore(size)
        self.conv2 = nn.Conv2d(features, features, 1)
        self.seed_bin_regressor = SeedBinRegressor(features)
        self.seed_projector = Projector(features, BIN_EMBEDDING_DIM)
        self.projectors = nn.ModuleList([Projector(features, BIN_EMBEDDING_DIM) for _ in N_ATTRACTORS])
        self.attractors = nn.ModuleList([Attractor(count) for count in N_ATTRACTORS])
        self.conditional_log_binomial = ConditionalLogBinomial(HEAD_HIDDEN + 1, BIN_EMBEDDING_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % PATCH_SIZE or width % PATCH_SIZE:
            raise ValueError(f"ZoeDepth needs sides that are multiples of {PATCH_SIZE}, got {height}x{width}; "
                             "resize the image (annotators.zoe does this for you)")
        decoded = self.core(x)
        bottleneck = self.conv2(decoded.coarsest)
        centers = self.seed_bin_regressor(bottleneck)
        embedding = self.seed_projector(bottleneck)
        for projector, attractor, level in zip(self.projectors, self.attractors, decoded.fused):
            previous_embedding, embedding = embedding, projector(level)
            centers = attractor(embedding, centers, previous_embedding)
        last = decoded.head_features
        relative = F.interpolate(decoded.depth.unsqueeze(1), size=last.shape[2:], mode="bilinear", align_corners=True)
        last = torch.cat([last, relative], dim=1)
        embedding = F.interpolate(embedding, last.shape[-2:], mode="bilinear", align_corners=True)
        probabilities = self.conditional_log_binomial(last, embedding)
        centers = F.interpolate(centers, probabilities.shape[-2:], mode="bilinear", align_corners=True)
        return torch.sum(probabilities * centers, dim=1, keepdim=True)
