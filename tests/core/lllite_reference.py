"""ControlNet-LLLite as kohya-ss wrote it, for the tests: random module weights under the
published key names, and the module's math as plain functions of the file's tensors.

From kohya-ss sd-scripts networks/control_net_lllite.py (LLLiteModule) and kohya-ss
ControlNet-LLLite-ComfyUI node_control_net_lllite.py: conditioning1 is a 4×4 stride-4 conv, then
per depth ReLU + conv (depth 1: 2×2 stride 2; depth 2: 4×4 stride 4; depth 3: 4×4 stride 4, ReLU,
2×2 stride 2), to cond_emb_dim channels, flattened to tokens; the module returns
up(relu(mid(cat[cond_emb, relu(down(x))]))), which is added to the projection's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# (kernel = stride, output width as a fraction of cond_emb_dim) of conditioning1's later convs
LATER_CONVS = {1: [(2, 1)], 2: [(4, 1)], 3: [(4, 0.5), (2, 1)]}


def kohya_depth(block: str, index: int) -> int:
    """sd-scripts' rule for a module's depth from the U-Net block it sits in."""
    if block == "input_blocks":
        return 1 if index <= 2 else (2 if index <= 5 else 3)
    if block == "middle_block":
        return 3
    return 3 if index <= 2 else (2 if index <= 5 else 1)


def module_weights(
    name: str, in_dim: int, depth: int, gen: torch.Generator, cond_emb_dim: int = 32, mlp_dim: int = 16,
    zero_up: bool = False, scale: float = 0.3,
) -> dict[str, torch.Tensor]:
    """One module's random weights under the file's key names."""

    def rand(*shape):
        return torch.randn(*shape, generator=gen) * scale

    half = cond_emb_dim // 2
    out = {f"{name}.conditioning1.0.weight": rand(half, 3, 4, 4), f"{name}.conditioning1.0.bias": rand(half)}
    width = half
    for i, (kernel, fraction) in enumerate(LATER_CONVS[depth]):
        out_width = int(cond_emb_dim * fraction)
        out[f"{name}.conditioning1.{2 * i + 2}.weight"] = rand(out_width, width, kernel, kernel)
        out[f"{name}.conditioning1.{2 * i + 2}.bias"] = rand(out_width)
        width = out_width
    out[f"{name}.down.0.weight"], out[f"{name}.down.0.bias"] = rand(mlp_dim, in_dim), rand(mlp_dim)
    out[f"{name}.mid.0.weight"], out[f"{name}.mid.0.bias"] = rand(mlp_dim, mlp_dim + cond_emb_dim), rand(mlp_dim)
    up_weight, up_bias = rand(in_dim, mlp_dim), rand(in_dim)
    out[f"{name}.up.0.weight"] = torch.zeros_like(up_weight) if zero_up else up_weight
    out[f"{name}.up.0.bias"] = torch.zeros_like(up_bias) if zero_up else up_bias
    return out


def depth_of(weights: dict, name: str) -> int:
    """A module's depth, read off conditioning1 as kohya's ComfyUI node reads it: a third conv
    means depth 3; otherwise the second conv's kernel, 4 (depth 2) or 2 (depth 1)."""
    if f"{name}.conditioning1.4.weight" in weights:
        return 3
    return 2 if weights[f"{name}.conditioning1.2.weight"].shape[-1] == 4 else 1


def cond_emb(weights: dict, name: str, hint: torch.Tensor) -> torch.Tensor:
    """conditioning1(hint) as tokens (B×T×C); hint B×3×H×W in [-1, 1]."""
    i, h = 0, hint
    while f"{name}.conditioning1.{i}.weight" in weights:
        if i:
            h = F.relu(h)
        kernel = weights[f"{name}.conditioning1.{i}.weight"]
        h = F.conv2d(h, kernel, weights[f"{name}.conditioning1.{i}.bias"], stride=kernel.shape[-1])
        i += 2
    n, c, height, width = h.shape
    return h.reshape(n, c, height * width).permute(0, 2, 1)


def correction(weights: dict, name: str, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """What the module adds to the projection's input x (B×T×in_dim); emb has x's rows."""
    down = F.relu(F.linear(x, weights[f"{name}.down.0.weight"], weights[f"{name}.down.0.bias"]))
    mid = F.relu(F.linear(torch.cat([emb, down], dim=2), weights[f"{name}.mid.0.weight"], weights[f"{name}.mid.0.bias"]))
    return F.linear(mid, weights[f"{name}.up.0.weight"], weights[f"{name}.up.0.bias"])
