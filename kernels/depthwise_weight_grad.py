"""Weight and bias gradients of a stride-1 depthwise k x k convolution (odd k, zero padding
k // 2): the backward half that oneDNN runs slowest on CPU.

``dW[c, 0, ky, kx] = sum_{b, y, x} dy[b, c, y, x] * x[b, c, y + ky - k // 2, x + kx - k // 2]``
(zero outside the image), ``db[c] = sum dy[b, c, y, x]``.

Implementations
- reference: ATen's ``convolution_backward`` (weight and bias outputs only).
- cpu: a compiled C kernel (``csrc/depthwise_weight_grad.c``), float32 channels_last CPU
  tensors, 3 <= k <= 15: each tap is a product of two flat (W * C) rows, so it vectorises
  over any channel count (AnyIR's GatedDA runs its 7x7 on 19 and 37 channels); the k sums of
  a kernel row stay in registers over groups of 8 rows. Measured here (2 threads,
  pytest-benchmark min, tests/benchmarks/test_bench_depthwise_weight_grad.py), 7x7 weight +
  bias gradient: 0.83 vs 4.14 ms at 2x19x128x128, 0.42 vs 1.88 ms at 2x37x64x64; values equal
  the reference's to float rounding (~1e-7 relative). Not used under ``torch.compile`` /
  ``torch.export`` tracing, ``torch.func`` transforms, autocast, other dtypes, or when a graph
  is being recorded through it (grad of grad: the reference is differentiable).

Used by :func:`irblocks.conv.depthwise_conv2d`'s backward (MDTA's 3x3, GatedDA's 7x7).

Shapes: dy, x (B, C, H, W), kernel_size k -> (dW (C, 1, k, k), db (C,) or None).
"""
from __future__ import annotations

import ctypes

import torch

from irblocks.registry import register

from . import _cpu_build
from ._cpu_build import address, check_status
from ._cpu_build import applies as cpu_applies
from ._dispatch import empty, select

__all__ = ["LIBRARY", "MAX_KERNEL_SIZE", "depthwise_weight_grad",
           "depthwise_weight_grad_reference"]

LIBRARY = "depthwise_weight_grad"      # csrc/depthwise_weight_grad.c
NAME = "depthwise_weight_grad"
MAX_KERNEL_SIZE = 15                   # the C kernel keeps at most 15 sums per kernel row

_I64, _PTR, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
SIGNATURES = {
    # (input, grad_output, grad_weight, grad_bias, batch, height, width, channels,
    #  kernel_size, threads)
    "depthwise_weight_grad": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _INT],
}


def depthwise_weight_grad_reference(dy: torch.Tensor, x: torch.Tensor, kernel_size: int,
                                    with_bias: bool = False
                                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    c, p = x.shape[1], kernel_size // 2
    weight_shape = [c, 1, kernel_size, kernel_size]
    _, dw, db = torch.ops.aten.convolution_backward(
        dy, x, x.new_empty(weight_shape), [c] if with_bias else None, [1, 1], [p, p], [1, 1],
        False, [0, 0], c, [False, True, with_bias])
    return dw, db


def _cpu(dy: torch.Tensor, x: torch.Tensor, kernel_size: int,
         with_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    b, c, h, w = x.shape
    d_taps = empty(kernel_size * kernel_size, c, like=x)
    d_bias = empty(c, like=x) if with_bias else None
    if x.numel() == 0:
        d_taps.zero_()
        if d_bias is not None:
            d_bias.zero_()
    else:
        # named: a temporary passed as address(...) would be freed before the call
        x_ = x.detach().contiguous(memory_format=torch.channels_last)
        dy_ = dy.detach().contiguous(memory_format=torch.channels_last)
        check_status(_cpu_build.library(LIBRARY, SIGNATURES).depthwise_weight_grad(
            address(x_),
            address(dy_),
            address(d_taps),
            address(d_bias),
            b,
            h,
            w,
            c,
            kernel_size,
            torch.get_num_threads(),
        ), NAME, "backward")
    return d_taps.t().reshape(c, 1, kernel_size, kernel_size), d_bias


@register("kernel", "depthwise_weight_grad")
def depthwise_weight_grad(dy: torch.Tensor, x: torch.Tensor, kernel_size: int,
                          with_bias: bool = False, impl: str | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """dy, x (B, C, H, W), odd ``kernel_size`` k -> (dW (C, 1, k, k), db (C,) or None): the
    weight (and, with ``with_bias``, bias) gradient of ``F.conv2d(x, W, b, padding=k // 2,
    groups=C)`` for the output gradient dy. Not differentiable itself (a backward helper)."""
    if x.dim() != 4 or dy.shape != x.shape:
        raise ValueError(f"{NAME}: expected dy and x of one (B, C, H, W) shape, got "
                         f"{tuple(dy.shape)} and {tuple(x.shape)}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{NAME}: kernel_size must be a positive odd number, got {kernel_size}")
    # a graph through it (grad of grad, create_graph=True) needs the differentiable reference
    graph = torch.is_grad_enabled() and (dy.requires_grad or x.requires_grad)
    if (3 <= kernel_size <= MAX_KERNEL_SIZE and not graph
            and select(impl, x, dy, cpu_kernel=LIBRARY) == "cpu" and cpu_applies(x, dy)):
        return _cpu(dy, x, kernel_size, with_bias)
    return depthwise_weight_grad_reference(dy, x, kernel_size, with_bias)
