"""Large kernels on small maps: convolution as one matrix product on a glibc CPU.

On the CPU PyTorch runs most convolutions with oneDNN, which copies the kernel into its own
blocked layout at every call. glibc hands out any block above 32 MiB (its largest dynamic mmap
threshold, DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) as fresh pages, so the copy of a 1280×1280×3×3
fp32 kernel (56 MiB) is also faulted in page by page, 14 400 faults at every call. On the deepest
Stable Diffusion maps that costs more than the convolution itself. Unfolding the input (im2col)
and multiplying it by the kernel as stored copies nothing of the kernel. Measured (2-core x86,
torch 2.14, fp32, ms per call, oneDNN → matrix product):

    1280→1280 3×3,  8×8, batch 1: 31 → 13      batch 2: 39 → 25
    1280→1280 3×3, 16×16, batch 1: 56 → 41     batch 2: 91 → 88
    1280→1280 3×3, stride 2, 16×16 → 8×8, batch 1: 34 → 15
    1280→1280 3×3, 32×32, batch 1: 167 → 198   (oneDNN's kernel wins on larger maps)
    kernels below 32 MiB (640→640, 640→1280) never fault: oneDNN was faster in 6 of 8 cases
    measured, the product at most 13% faster in the other two

With glibc told to keep freed memory (MALLOC_MMAP_THRESHOLD_ set) the two are even, so the
rule applies only where glibc's default, dynamic threshold is in force. On a GPU, in other
dtypes and on other C libraries convolutions run as before.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Sequence

import torch
import torch.nn.functional as F

# glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems: larger allocations are always mmapped.
GLIBC_MAX_MMAP_THRESHOLD_BYTES = 32 * 2**20
# Batch × output height × output width up to which the matrix product was measured faster for
# kernels above that size (about even at 512, oneDNN ahead from 1024).
MATMUL_MAX_OUTPUT_PIXELS = 512


def glibc_dynamic_mmap_threshold() -> bool:
    """True where the C library is glibc and its mmap threshold has not been set by the user."""
    fixed = "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", "")
    return platform.libc_ver()[0] == "glibc" and not fixed


GLIBC_DYNAMIC_MMAP = glibc_dynamic_mmap_threshold()


def output_size(
    x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]
) -> tuple[int, int]:
    """(height, width) of a 2-d convolution's output on `x` (B × C × H × W), as F.conv2d gives."""
    height, width = (
        (x.shape[i + 2] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in (0, 1)
    )
    return height, width


def conv2d_as_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """F.conv2d (groups 1, zero padding) as im2col and one matrix product per batch row."""
    kernel = weight.shape[-2:]
    height, width = output_size(x, kernel, stride, padding, dilation)
    columns = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # B × (C·kh·kw) × pixels
    out = torch.matmul(weight.reshape(weight.shape[0], -1), columns)
    if bias is not None:
        out += bias[:, None]
    return out.view(x.shape[0], weight.shape[0], height, width)


def prefers_matmul(x: torch.Tensor, weight: torch.Tensor, layer: torch.nn.Conv2d) -> bool:
    """Whether `conv2d_as_matmul` is the faster way to run `layer` on `x` (see module docstring)."""
    if not GLIBC_DYNAMIC_MMAP or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str) or x.ndim != 4:
        return False
    if weight.numel() * weight.element_size() <= GLIBC_MAX_MMAP_THRESHOLD_BYTES:
        return False
    height, width = output_size(x, weight.shape[-2:], layer.stride, layer.padding, layer.dilation)
    return x.shape[0] * height * width <= MATMUL_MAX_OUTPUT_PIXELS


@functools.cache
def large_kernel_conv2d(conv_class: type) -> type:
    """`conv_class` (torch.nn.Conv2d or a host's weight-casting subclass of it) running large
    kernels on small CPU maps as a matrix product. Both torch's and ComfyUI's Conv2d compute
    through `_conv_forward(input, weight, bias)` with the weight already cast, so this is the
    one method to override; weights, keys and everything else stay the host's."""

    class LargeKernelConv2d(conv_class):
        def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            if prefers_matmul(input, weight, self):
                return conv2d_as_matmul(input, weight, bias, self.stride, self.padding, self.dilation)
            return super()._conv_forward(input, weight, bias)

    LargeKernelConv2d.__qualname__ = f"LargeKernelConv2d[{conv_class.__qualname__}]"
    return LargeKernelConv2d
