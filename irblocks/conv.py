"""CPU execution of the blocks' 1x1 and depthwise convolutions (same values as ``F.conv2d``).

:func:`pointwise_conv2d`: a 1x1 convolution of a channels_last tensor is a matrix product
over its (B H W, C) view; ``F.linear`` runs it (and its backward: two GEMMs, no zero-filled
gradient buffers) 20-35% faster than ATen's CPU convolution paths on the blocks' shapes
(2 x 14..112 x 128 x 128; 1 and 2 threads). An expanding 1x1 (Cout > Cin) multiplies by a
contiguous (Cin, Cout) copy of the weight instead: autograd then computes its weight gradient
as X^T dY (Cin x Cout, read along the long pixel axis of both operands) where ``F.linear``
computes dY^T X to return it in the weight's layout; with 2 threads the forward and both
backward GEMMs together took 0.80-0.97x the time at most expanding shapes of the networks
(2 x 96 -> 512 x 128 x 128: 0.90x; 28 -> 128: 0.80x) and 1.05-1.46x at reducing ones, where
``F.linear`` stays. The transposed copy (and its gradient's copy back) costs about as much
as the gain below ~1000 pixels (a 384 x 2048 weight: ~1.8 ms in the step against ~3 ms for
the three GEMMs at 2 x 16 x 16), so it needs :data:`TRANSPOSED_WEIGHT_MIN_PIXELS` pixels.

:func:`depthwise_conv2d`: stride-1 depthwise convolution with a faster CPU backward.

The gradient of a stride-1 depthwise convolution with "same" padding (odd k, padding k // 2)
with respect to its input is the same depthwise convolution of the output gradient with the
spatially flipped kernel. On CPU, oneDNN's forward depthwise convolution in channels_last is
2-5x faster than its backward-data pass (measured on 2 x 112 x 128 x 128 and 2 x 19 x 128 x 128,
3x3 and 7x7), so :func:`depthwise_conv2d` computes ``dx`` as that forward convolution, and
the weight and bias gradients with :func:`irblocks.kernels.depthwise_weight_grad.
depthwise_weight_grad` (a compiled C kernel on float32 CPU tensors when it builds, ATen's
``convolution_backward`` otherwise). Forward, saved tensors (input and weight) and values are
those of ``F.conv2d``; gradients agree to float rounding.

A 3x3 (padding 1) on a float32 channels_last CPU tensor runs the compiled one-pass kernel
:mod:`irblocks.kernels.dwconv3x3` instead (C forward, and one backward pass for the input and
weight gradients): per whole training step 3.4% faster for AnyIR and 1.7% for Restormer than
the oneDNN path above (interleaved in one process, 2026-11-30, after the C kernels gained FMA
contraction; 1.5-2% slower before). Under torch.func transforms (ClusIR's vmapped experts),
tracing or autocast the path above runs.

Both are used by the ``"fast"`` execution of GDFN, MDTA, GatedDA and the AnyIR fusion on
CPU tensors; other devices, memory formats and convolution shapes, and the depthwise
convolution under autocast (its backward would mix dtypes), call ``F.conv2d``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from irblocks.kernels.depthwise_weight_grad import depthwise_weight_grad
from irblocks.kernels.dwconv3x3 import dwconv3x3, dwconv3x3_sumsq, runs_cpu_kernel

__all__ = ["depthwise3x3_sumsq", "depthwise_conv2d", "pointwise_conv2d"]


class _DepthwiseConv(torch.autograd.Function):
    generate_vmap_rule = True      # works under torch.func.vmap (ClusIR's experts)

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: int) -> torch.Tensor:
        return F.conv2d(x, weight, bias, padding=padding, groups=weight.shape[0])

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        c, p = weight.shape[0], ctx.padding
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = F.conv2d(dy, weight.flip(-2, -1), padding=p, groups=c)
        need_db = ctx.has_bias and ctx.needs_input_grad[2]
        if ctx.needs_input_grad[1]:
            dw, db = depthwise_weight_grad(dy, x, weight.shape[-1], with_bias=need_db)
        if need_db and db is None:
            db = dy.sum((0, 2, 3))
        return dx, dw, db, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     padding: int | None = None) -> torch.Tensor:
    """Stride-1 depthwise convolution: x (B, C, H, W), weight (C, 1, k, k) with odd k,
    ``padding`` k // 2 (default) -> (B, C, H, W). Same as
    ``F.conv2d(x, weight, bias, padding=padding, groups=C)``; on CPU with autograd the input
    gradient runs as a forward convolution and the weight gradient as a compiled C kernel, or
    a 3x3 runs the compiled one-pass kernel (see the module docstring)."""
    p = weight.shape[-1] // 2 if padding is None else padding
    if _one_pass_3x3(x, weight, bias, p):
        return dwconv3x3(x, weight, bias)
    if _fast_depthwise(x, weight, p):
        return _DepthwiseConv.apply(x, weight, bias, p)
    return F.conv2d(x, weight, bias, padding=p, groups=weight.shape[0])


def _fast_depthwise(x: torch.Tensor, weight: torch.Tensor, padding: int) -> bool:
    """Whether :func:`depthwise_conv2d` leaves ``F.conv2d`` for the paths above: a CPU
    stride-1 "same" depthwise convolution with autograd on, not under autocast."""
    k = weight.shape[-1]
    return (x.device.type == "cpu" and torch.is_grad_enabled() and weight.shape[1] == 1
            and weight.shape[-2] == k and k % 2 == 1 and padding == k // 2
            and x.shape[1] == weight.shape[0]
            and not torch.is_autocast_enabled(x.device.type))   # backward would mix dtypes


def _one_pass_3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  padding: int) -> bool:
    """Whether :func:`depthwise_conv2d` runs the compiled one-pass 3x3 kernel."""
    return (weight.shape[-1] == 3 and _fast_depthwise(x, weight, padding)
            and runs_cpu_kernel(x, weight, bias))


def depthwise3x3_sumsq(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`depthwise_conv2d` of a 3x3 (padding 1) and, when the one-pass C kernel runs it,
    the sums of squares of the output's first ``channels`` channels over each image's pixels
    (B, channels), summed while each output pixel is in cache (MDTA's q and k: see
    :func:`irblocks.kernels.mdta.channel_attention_packed`); otherwise (y, None)."""
    if _one_pass_3x3(x, weight, bias, 1):
        return dwconv3x3_sumsq(x, weight, bias, channels)
    return depthwise_conv2d(x, weight, bias), None


TRANSPOSED_WEIGHT_MIN_PIXELS = 4096


def pointwise_conv2d(x: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 convolution: x (B, Cin, H, W), weight (Cout, Cin, 1, 1) -> (B, Cout, H, W). For a
    non-NCHW-contiguous CPU tensor (channels_last: then a zero-copy view), ``F.linear`` on its
    (B, H, W, Cin) view, output channels_last (an expanding one, Cout > Cin, over at least
    :data:`TRANSPOSED_WEIGHT_MIN_PIXELS` pixels: a product with the transposed weight, see the
    module docstring); otherwise ``F.conv2d``. (Only
    ``is_contiguous()`` is asked: ``torch.func.vmap`` cannot answer memory-format queries.)"""
    if x.device.type == "cpu" and x.dim() == 4 and not x.is_contiguous():
        b, cin, h, w = x.shape
        if weight.shape[0] > cin and b * h * w >= TRANSPOSED_WEIGHT_MIN_PIXELS:
            rows = x.permute(0, 2, 3, 1).reshape(b * h * w, cin)
            weight_t = weight.flatten(1).t().contiguous()      # (Cin, Cout), a small copy
            y = torch.mm(rows, weight_t) if bias is None else torch.addmm(bias, rows, weight_t)
            return y.view(b, h, w, -1).permute(0, 3, 1, 2)
        return F.linear(x.permute(0, 2, 3, 1), weight.flatten(1), bias).permute(0, 3, 1, 2)
    return F.conv2d(x, weight, bias)
