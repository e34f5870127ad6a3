"""Depthwise 3x3 convolution (stride 1, zero padding 1) on CPU: compiled C forward and a
one-pass backward (input and weight gradients together).

This module also owns the compiled library ``csrc/dwconv3x3.c`` (:func:`library`), which
holds this kernel and GDFN's fused depthwise 3x3 + GELU gate
(:mod:`irblocks.kernels.dwconv_gelu_gate`): the two share the tap addressing, the
transposed convolution and the register-blocked weight-gradient sums.

Implementations
- reference: ``F.conv2d(x, weight, bias, padding=1, groups=C)``.
- cpu: float32 CPU tensors, output channels_last. Forward: one pass over x. Backward: one
  pass that reads dy and x once, writes dx (the transposed convolution of dy; from
  :data:`STREAM_MIN_BYTES` on with non-temporal stores) and sums the weight and bias
  gradients (sixteen channels at a time in registers, double per band of rows).
  :func:`irblocks.conv.depthwise_conv2d` runs it for every 3x3 while training (MDTA's
  qkv convolution): since the kernels are built with FMA contraction (``_cpu_build``) it
  beats oneDNN's forward + flipped-kernel forward + the C weight gradient of
  :mod:`irblocks.kernels.depthwise_weight_grad` per whole training step (AnyIR 1.484 ->
  1.434 s, Restormer 3.389 -> 3.330 s, interleaved in one process, 2026-11-30); before that
  it lost by 1.5-2%. Values equal ``F.conv2d``'s to float rounding (the weight gradient sums
  in a different order: ~5e-6 relative).
  :func:`dwconv3x3_sumsq` also returns the sums of squares of the output's first channels
  over each image's pixels (MDTA's q and k norms), summed per row while the row is in L2: per
  call ~0.05 ms on 2 x 288 x 64 x 64 against ~0.5 ms for a separate chunked pass over q and
  k (Restormer whole step: paired, order-alternated ratio 1.009 over 10 rounds, 2026-11-30).
  Not used (the reference runs) under ``torch.compile``/``torch.export`` tracing,
  ``torch.func`` transforms, autocast or other dtypes; grad of grad differentiates the
  reference.

Shapes: x (B, C, H, W), weight (C, 1, 3, 3), bias (C,) or None -> (B, C, H, W).
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from irblocks.registry import register

from . import _cpu_build
from ._cpu_build import address, check_status
from ._cpu_build import applies as cpu_applies
from ._dispatch import empty, reference_grads, select

__all__ = ["LIBRARY", "SIGNATURES", "STREAM_MIN_BYTES", "library", "streams", "tap_major",
           "check_depthwise3x3", "dwconv3x3", "dwconv3x3_sumsq", "dwconv3x3_reference",
           "runs_cpu_kernel"]

LIBRARY = "dwconv3x3"       # csrc/dwconv3x3.c
NAME = "dwconv3x3"
CHANNELS_LAST = torch.channels_last


_I64, _PTR, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
SIGNATURES = {
    # (input, weight, weight_stride, bias, output, sumsq, sumsq_channels, batch, height,
    #  width, channels, threads)
    "dwconv3x3_forward": [_PTR, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64,
                          _INT],
    # (input, weight, weight_stride, grad_output, grad_input, grad_weight, grad_bias,
    #  batch, height, width, channels, stream, threads)
    "dwconv3x3_backward": [_PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64,
                           _INT, _INT],
    # (input, weight, weight_stride, bias, output, batch, height, width, channels, threads)
    "dwconv_gelu_gate_forward": [_PTR, _PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _I64, _INT],
    # (input, weight, weight_stride, bias, grad_output, grad_input, grad_weight, grad_bias,
    #  batch, height, width, channels, stream, threads)
    "dwconv_gelu_gate_backward": [_PTR, _PTR, _I64, _PTR, _PTR, _PTR, _PTR, _PTR,
                                  _I64, _I64, _I64, _I64, _INT, _INT],
}

STREAM_MIN_BYTES = 32 * 2**20
"""Size from which the two backward kernels of this library (the depthwise 3x3's and GDFN's
gate) write their input gradient with non-temporal stores (``stream_lanes`` in
``csrc/common.h``): straight to memory, without reading each line first, where a tensor
this large has left the caches before the 1x1 convolution's backward reads it. Measured
2026-11-30 on Restormer's training step (2 threads), paired order-alternated rounds in one
process: per-op times from ``torch.profiler`` against plain stores, gate backward 0.824,
3x3 backward 0.914, the GEMMs that read the gradients 0.987 (8 rounds); whole steps 0.962
and 0.983 streaming every size, 0.985 from 32 MiB (AnyIR 0.995, 0.956) on a quieter host,
0.989 and 1.015 (AnyIR 1.012) on a busy one (quartiles +-4%). Streaming from 4 MiB instead:
kernels unchanged (1.000, 0.976), GEMMs 1.018. The gate backward alone at 2 x 512 x 128 x
128: 31.4 -> 26.8 ms. Values are the same either way (bitwise)."""


def streams(grad_input: torch.Tensor | None) -> int:
    """1 when a backward kernel writes ``grad_input`` with non-temporal stores (it has at least
    :data:`STREAM_MIN_BYTES` bytes), else 0."""
    if grad_input is None:
        return 0
    return int(grad_input.numel() * grad_input.element_size() >= STREAM_MIN_BYTES)


def library() -> ctypes.CDLL:
    """The built csrc/dwconv3x3.c with its four entry points typed."""
    return _cpu_build.library(LIBRARY, SIGNATURES)


def tap_major(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, 3, 3) -> (9, S): row ky * 3 + kx holds every channel's weight at that tap, zero
    padded to S >= C, S an odd number of 64-byte lines so the nine rows map to different L1
    cache sets (the C loops read all nine at once)."""
    c = weight.shape[0]
    lines = -(-c // 16)
    lines += 1 - lines % 2
    taps = weight.detach().reshape(c, 9).t()
    return F.pad(taps, (0, lines * 16 - c)).contiguous()


def check_depthwise3x3(kernel: str, channels: int, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> None:
    """One-line errors for a depthwise 3x3 weight (C, 1, 3, 3) and bias (C,) of C channels."""
    if tuple(weight.shape) != (channels, 1, 3, 3):
        raise ValueError(f"{kernel}: expected a depthwise 3x3 weight of shape ({channels}, 1, 3, "
                         f"3) for {channels} channels, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (channels,):
        raise ValueError(f"{kernel}: expected bias of shape ({channels},), got "
                         f"{tuple(bias.shape)}")


def dwconv3x3_reference(x: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.conv2d(x, weight, bias, padding=1, groups=weight.shape[0])


class _Dwconv3x3Cpu(torch.autograd.Function):
    """Outputs y and, for ``sumsq_channels`` S > 0, the sums of squares of y's first S
    channels over each image's pixels, (B, S) (non-differentiable; empty (B, 0) for S = 0)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                sumsq_channels: int):
        ctx.save_for_backward(x, weight, bias)
        x_ = x.detach().contiguous(memory_format=CHANNELS_LAST)
        taps = tap_major(weight)
        bias_ = None if bias is None else bias.detach().contiguous()
        y = empty(*x.shape, like=x, memory_format=CHANNELS_LAST)
        b, c, h, w = x.shape
        sumsq = x.new_zeros(b, sumsq_channels)
        if y.numel():
            check_status(library().dwconv3x3_forward(
                address(x_),
                address(taps),
                taps.shape[1],
                address(bias_),
                address(y),
                address(sumsq) if sumsq_channels else None,
                sumsq_channels,
                b,
                h,
                w,
                c,
                torch.get_num_threads(),
            ), NAME, "forward")
        ctx.mark_non_differentiable(sumsq)
        return y, sumsq

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _dsumsq):
        x, weight, bias = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        if torch.is_grad_enabled():             # create_graph=True: grad of grad
            return (*reference_grads(dwconv3x3_reference, (x, weight, bias),
                                     ctx.needs_input_grad, dy), None)
        b, c, h, w = x.shape
        dx = empty(b, c, h, w, like=x, memory_format=CHANNELS_LAST) if need_x else None
        d_taps = empty(9, c, like=x) if need_w else None
        d_bias = empty(c, like=x) if need_b and bias is not None else None
        if x.numel():
            # named: a temporary passed as address(...) would be freed before the call
            x_ = x.detach().contiguous(memory_format=CHANNELS_LAST)
            dy_ = dy.contiguous(memory_format=CHANNELS_LAST)
            taps = tap_major(weight)
            check_status(library().dwconv3x3_backward(
                address(x_),
                address(taps),
                taps.shape[1],
                address(dy_),
                address(dx),
                address(d_taps),
                address(d_bias),
                b,
                h,
                w,
                c,
                streams(dx),
                torch.get_num_threads(),
            ), NAME, "backward")
        else:
            for t in (d_taps, d_bias):
                if t is not None:
                    t.zero_()
        d_weight = None if d_taps is None else d_taps.t().reshape(weight.shape)
        return dx, d_weight, d_bias, None


@register("kernel", "dwconv3x3")
def dwconv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              impl: str | None = None) -> torch.Tensor:
    """x (B, C, H, W), weight (C, 1, 3, 3), bias (C,) or None -> (B, C, H, W): depthwise 3x3
    convolution, stride 1, zero padding 1 (``F.conv2d(..., padding=1, groups=C)``)."""
    _check_input(x, weight, bias)
    if runs_cpu_kernel(x, weight, bias, impl):
        return _Dwconv3x3Cpu.apply(x, weight, bias, 0)[0]
    return dwconv3x3_reference(x, weight, bias)


def _check_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dim() != 4:
        raise ValueError(f"{NAME}: expected x of shape (B, C, H, W), got {tuple(x.shape)}")
    check_depthwise3x3(NAME, x.shape[1], weight, bias)


def dwconv3x3_sumsq(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    channels: int, impl: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`dwconv3x3` and the sums of squares of its output's first ``channels`` channels
    over each image's pixels: y (B, C, H, W) as :func:`dwconv3x3`, sumsq (B, channels) =
    ``y[:, :channels].square().sum((2, 3))``, not differentiable (MDTA's q and k norms:
    :func:`irblocks.kernels.mdta.channel_attention_packed` takes them). The C kernel sums each
    row while it is in L2 (float per row, double per image); elsewhere the reference
    convolution and ``square().sum()``."""
    _check_input(x, weight, bias)
    if not 0 <= channels <= x.shape[1]:
        raise ValueError(f"{NAME}: sums of squares of {channels} channels requested, expected "
                         f"0 to C={x.shape[1]}")
    if runs_cpu_kernel(x, weight, bias, impl):
        return _Dwconv3x3Cpu.apply(x, weight, bias, channels)
    y = dwconv3x3_reference(x, weight, bias)
    return y, y.detach()[:, :channels].square().sum((2, 3))


def runs_cpu_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    impl: str | None = None) -> bool:
    """Whether :func:`dwconv3x3` runs the C kernel on these arguments (the dispatcher's
    choice for ``impl`` is ``"cpu"`` and the kernel applies: float32 channels_last CPU tensors,
    no tracing, no torch.func transform, no autocast)."""
    return select(impl, x, weight, cpu_kernel=LIBRARY) == "cpu" and cpu_applies(x, weight, bias)
