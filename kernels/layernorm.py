"""Channel LayerNorm over dim 1 of a B x C x H x W tensor (WithBias, BiasFree, Centered).

WithBias (``bias`` given): ``(x - mean) / sqrt(var + eps) * w + b``.
BiasFree (``bias is None``): ``x / sqrt(var + eps) * w`` with the variance taken
around the mean but the mean NOT subtracted (Restormer's BiasFree_LayerNorm).
Centered (``bias is None, center=True``): ``(x - mean) / sqrt(var + eps) * w``, a
LayerNorm with a weight and no bias (ClearAIR's scaffold, eps 1e-6 there).
Population variance, eps 1e-5 by default.

Implementations
- reference: ``F.layer_norm`` on the channels-last view (a view, no copy, when the
  input is channels_last); plain torch ops, so autograd, torch.compile and
  FlopCounterMode see through it.
- cpu: a compiled C kernel (``csrc/layernorm.c``) for float32 CPU tensors: one pass forward
  keeping mean and rstd per pixel, one pass backward writing dx and summing dw / db per
  thread (in registers for 16-128 channels). Measured here (forward + backward through
  autograd into leaf tensors, 2 threads, medians, 2026-11-30): WithBias 1.08 vs 4.55 ms
  (``F.layer_norm``) at 2x28x128x128, 1.74 vs 3.78 ms at 2x56x128x128, 0.63 vs 1.09 ms at
  2x56x64x64, on par at 2x96x128x128 and 2x112x32x32; BiasFree 1.30 vs 8.94 ms at
  2x48x128x128 and 2.61 vs 18.5 ms at 2x96x128x128 (the reference's mean / norm / rsqrt
  chain). The dispatcher picks it for all three variants.
  Falls back to the reference under torch.compile, torch.func, autocast.
- triton: one program normalises ``BLOCK_SIZE_P`` pixels of one image x all channels, reading
  the input through its own strides (NCHW, channels_last or any view: no permute copy;
  when H and W merge, the pixel offset is ``hw * stride_w`` so the compiler sees the
  contiguous axis: pixels for NCHW, channels for channels_last, and coalesces either);
  the backward recomputes mean/rstd from x (nothing but x is saved), writes dx and
  per-program partial sums for dw/db (summed in torch: deterministic, no atomics).
  One pass over x forward, one pass over (x, dy) backward.
  Exposed as the custom ops ``irblocks::channel_layer_norm`` and
  ``irblocks::channel_layer_norm_backward`` (fake impls, autograd, FLOP formula 0).
  Centered runs the WithBias kernel with a zero bias that does not require grad: the
  same arithmetic (``+ 0``) and the same dx/dw; the bias partial sums are discarded.
"""
from __future__ import annotations

import ctypes
from typing import Optional

import torch
import torch.nn.functional as F

from irblocks.registry import register

from . import _cpu_build
from ._cpu_build import address, check_status
from ._cpu_build import applies as cpu_applies
from ._dispatch import block_size, empty, reference_grads, select, triton_available
from ._dispatch import out_format as _out_format
from ._op import kernel_op

__all__ = ["channel_layer_norm", "channel_layer_norm_reference"]


# --------------------------------------------------------------------------- reference
def channel_layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 eps: float = 1e-5, center: bool | None = None) -> torch.Tensor:
    xl = x.permute(0, 2, 3, 1)                         # B H W C (a view)
    if bias is not None or center:
        y = F.layer_norm(xl, (xl.shape[-1],), weight, bias, eps)
    else:
        # two-pass population variance from mean + vector_norm over the contiguous channel
        # axis: on CPU, ATen's var() (Welford) is ~10x slower on rows of a few dozen channels,
        # and every full-size temporary costs a fresh allocation, so keep them few
        xc = xl - xl.mean(-1, keepdim=True)
        var = torch.linalg.vector_norm(xc, dim=-1, keepdim=True).square() / xl.shape[-1]
        y = xl * torch.rsqrt(var + eps) * weight
    return y.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- triton
if triton_available():
    import triton
    import triton.language as tl

    from ._triton_util import tile_offset

    @triton.jit
    def _ln_fwd_kernel(
        x_ptr,  # input, (B, C, H, W), any strides
        weight_ptr,  # LayerNorm weight, (C,)
        bias_ptr,  # LayerNorm bias, (C,) (the weight again when HAS_BIAS is False: not read)
        y_ptr,  # output, (B, C, H, W), same dtype as x
        channels,  # C, the normalised axis
        num_pixels,  # H * W
        width,  # W
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        y_stride_batch,  # stride of y along B
        y_stride_channel,  # stride of y along C
        y_stride_height,  # stride of y along H
        y_stride_width,  # stride of y along W
        eps,  # added to the variance, float32
        HAS_BIAS: tl.constexpr,  # WithBias (x - mean) * rstd * w + b; else BiasFree x * rstd * w
        FLAT_PIXELS: tl.constexpr,  # H and W of x and y merge into one pixel axis
        BLOCK_SIZE_P: tl.constexpr,  # pixels per program
        BLOCK_SIZE_C: tl.constexpr,  # next power of 2 >= C (a program holds all channels)
    ):
        # grid: (pixel blocks of one image, batch); tile = BLOCK_SIZE_P pixels x all channels
        batch = tl.program_id(1)
        pixel = tl.program_id(0) * BLOCK_SIZE_P + tl.arange(0, BLOCK_SIZE_P)
        channel = tl.arange(0, BLOCK_SIZE_C)
        channel_mask = channel < channels
        mask = (pixel < num_pixels)[:, None] & channel_mask[None, :]
        x_offsets = tile_offset(batch, pixel, channel, width, x_stride_batch, x_stride_channel,
                                x_stride_height, x_stride_width, FLAT_PIXELS)
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / channels
        x_centered = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(x_centered * x_centered, axis=1) / channels
        rstd = 1.0 / tl.sqrt(var + eps)
        weight = tl.load(weight_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
            y = x_centered * rstd[:, None] * weight[None, :] + bias[None, :]
        else:
            y = x * rstd[:, None] * weight[None, :]
        y_offsets = tile_offset(batch, pixel, channel, width, y_stride_batch, y_stride_channel,
                                y_stride_height, y_stride_width, FLAT_PIXELS)
        tl.store(y_ptr + y_offsets, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _ln_bwd_kernel(
        dy_ptr,  # gradient of the output, (B, C, H, W), any strides
        x_ptr,  # forward input, (B, C, H, W), any strides
        weight_ptr,  # LayerNorm weight, (C,)
        dx_ptr,  # gradient of x (output), (B, C, H, W), same dtype as x
        dweight_partial_ptr,  # per-program partial sums of dw, (B * pixel blocks, C), float32
        dbias_partial_ptr,  # per-program partial sums of db, (B * pixel blocks, C), float32
        channels,  # C, the normalised axis
        num_pixels,  # H * W
        width,  # W
        dy_stride_batch,  # stride of dy along B
        dy_stride_channel,  # stride of dy along C
        dy_stride_height,  # stride of dy along H
        dy_stride_width,  # stride of dy along W
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        dx_stride_batch,  # stride of dx along B
        dx_stride_channel,  # stride of dx along C
        dx_stride_height,  # stride of dx along H
        dx_stride_width,  # stride of dx along W
        eps,  # added to the variance, float32
        HAS_BIAS: tl.constexpr,  # WithBias (x - mean) * rstd * w + b; else BiasFree x * rstd * w
        FLAT_PIXELS: tl.constexpr,  # H and W of dy, x and dx merge into one pixel axis
        BLOCK_SIZE_P: tl.constexpr,  # pixels per program
        BLOCK_SIZE_C: tl.constexpr,  # next power of 2 >= C (a program holds all channels)
    ):
        batch = tl.program_id(1)
        pixel = tl.program_id(0) * BLOCK_SIZE_P + tl.arange(0, BLOCK_SIZE_P)
        channel = tl.arange(0, BLOCK_SIZE_C)
        channel_mask = channel < channels
        mask = (pixel < num_pixels)[:, None] & channel_mask[None, :]
        x_offsets = tile_offset(batch, pixel, channel, width, x_stride_batch, x_stride_channel,
                                x_stride_height, x_stride_width, FLAT_PIXELS)
        dy_offsets = tile_offset(batch, pixel, channel, width, dy_stride_batch, dy_stride_channel,
                                 dy_stride_height, dy_stride_width, FLAT_PIXELS)
        x = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(tl.float32)
        weight = tl.load(weight_ptr + channel, mask=channel_mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / channels
        x_centered = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(x_centered * x_centered, axis=1) / channels
        rstd = 1.0 / tl.sqrt(var + eps)
        dy_weighted = dy * weight[None, :]   # gradient of the normalised x
        if HAS_BIAS:
            x_hat = x_centered * rstd[:, None]
            mean_dy_weighted = tl.sum(dy_weighted, axis=1) / channels
            mean_dy_weighted_x_hat = tl.sum(dy_weighted * x_hat, axis=1) / channels
            dx = rstd[:, None] * (dy_weighted - mean_dy_weighted[:, None]
                                  - x_hat * mean_dy_weighted_x_hat[:, None])
            dweight_partial = tl.sum(dy * x_hat, axis=0)
        else:
            # y = x * rstd * w; d rstd / d x_i = -rstd^3 (x_i - mean) / C
            mean_dy_weighted_x = tl.sum(dy_weighted * x, axis=1) / channels
            dx = (rstd[:, None] * dy_weighted
                  - (rstd * rstd * rstd * mean_dy_weighted_x)[:, None] * x_centered)
            dweight_partial = tl.sum(dy * x * rstd[:, None], axis=0)
        dbias_partial = tl.sum(dy, axis=0)
        dx_offsets = tile_offset(batch, pixel, channel, width, dx_stride_batch, dx_stride_channel,
                                 dx_stride_height, dx_stride_width, FLAT_PIXELS)
        tl.store(dx_ptr + dx_offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        partial_row = batch * tl.num_programs(0) + tl.program_id(0)
        tl.store(dweight_partial_ptr + partial_row * channels + channel, dweight_partial,
                 mask=channel_mask)
        tl.store(dbias_partial_ptr + partial_row * channels + channel, dbias_partial,
                 mask=channel_mask)

    def _blocks(c: int, gpu_elems: int) -> tuple[int, int, int]:
        block_c = triton.next_power_of_2(max(c, 1))
        block_p = block_size(gpu=max(1, min(256, gpu_elems // block_c)), interpreter=16)
        num_warps = 4 if block_c * block_p <= 4096 else 8
        return block_p, block_c, num_warps

    def _flat(*ts) -> bool:
        """H and W of every tensor merge into one pixel axis (true for NCHW and channels_last)."""
        return all(t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3) for t in ts)

    def _fwd_triton(x, weight, bias, eps):
        b, c, h, w = x.shape
        y = empty(b, c, h, w, like=x, memory_format=_out_format(x))
        if b * h * w == 0 or c == 0:
            return y
        block_p, block_c, nw = _blocks(c, 4096)
        grid = (triton.cdiv(h * w, block_p), b)
        _ln_fwd_kernel[grid](
            x,
            weight,
            bias if bias is not None else weight,
            y,
            c,
            h * w,
            w,
            *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, x_stride_width
            *y.stride(),  # y_stride_batch, y_stride_channel, y_stride_height, y_stride_width
            eps,
            HAS_BIAS=bias is not None,
            FLAT_PIXELS=_flat(x, y),
            BLOCK_SIZE_P=block_p,
            BLOCK_SIZE_C=block_c,
            num_warps=nw,
        )
        return y

    def _bwd_triton(dy, x, weight, has_bias, eps):
        b, c, h, w = x.shape
        dx = empty(b, c, h, w, like=x, memory_format=_out_format(x))
        block_p, block_c, nw = _blocks(c, 2048)
        n = triton.cdiv(h * w, block_p)
        dwp = empty(b * n, c, like=x, dtype=torch.float32)
        dbp = empty(b * n, c, like=x, dtype=torch.float32)
        if b * n > 0 and c > 0:
            _ln_bwd_kernel[(n, b)](
                dy,
                x,
                weight,
                dx,
                dwp,
                dbp,
                c,
                h * w,
                w,
                *dy.stride(),  # dy_stride_batch, dy_stride_channel, dy_stride_height, ..._width
                *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, x_stride_width
                *dx.stride(),  # dx_stride_batch, dx_stride_channel, dx_stride_height, ..._width
                eps,
                HAS_BIAS=has_bias,
                FLAT_PIXELS=_flat(dy, x, dx),
                BLOCK_SIZE_P=block_p,
                BLOCK_SIZE_C=block_c,
                num_warps=nw,
            )
        return dx, dwp.sum(0).to(weight.dtype), dbp.sum(0).to(weight.dtype)



# --------------------------------------------------------------------------- custom ops
def _ln_fake(x, weight, bias, eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x))


def _ln_bwd_fake(dy, x, weight, has_bias, eps):
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x))
    return dx, torch.empty_like(weight), torch.empty_like(weight)


@kernel_op("channel_layer_norm_backward", fake=_ln_bwd_fake)   # elementwise: no MACs
def _ln_bwd_op(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
               eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_triton(dy, x, weight, has_bias, eps)


def _ln_setup(ctx, inputs, output):
    x, weight, bias, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.eps = eps


def _ln_backward(ctx, dy):
    x, weight = ctx.saved_tensors
    dx, dw, db = _ln_bwd_op(dy, x, weight, ctx.has_bias, ctx.eps)
    return dx, dw, (db if ctx.has_bias else None), None


@kernel_op("channel_layer_norm", fake=_ln_fake, backward=_ln_backward, setup_context=_ln_setup)
def _ln_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
           eps: float) -> torch.Tensor:
    return _fwd_triton(x, weight, bias, eps)


# --------------------------------------------------------------------------- C (CPU)
LIBRARY = "layernorm"    # csrc/layernorm.c
_I64, _PTR, _INT, _FLOAT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    # (input, weight, bias, center, eps, output, mean, rstd, pixels, channels, threads)
    "layer_norm_forward": [_PTR, _PTR, _PTR, _INT, _FLOAT, _PTR, _PTR, _PTR, _I64, _I64, _INT],
    # (input, weight, center, mean, rstd, grad_output, grad_input, grad_weight, grad_bias,
    #  pixels, channels, threads)
    "layer_norm_backward": [_PTR, _PTR, _INT, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _I64, _I64,
                            _INT],
}


class _LayerNormCpu(torch.autograd.Function):
    """The compiled C kernel (csrc/layernorm.c) on the (B H W, C) view: float32 CPU tensors,
    channels_last output; one pass forward (mean and rstd per pixel kept), one pass backward
    (dx, dw, db). Grad of grad differentiates the reference."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, centered: bool):
        b, c, h, w = x.shape
        x_ = x.detach().contiguous(memory_format=torch.channels_last)
        weight_ = weight.detach().contiguous()
        bias_ = None if bias is None else bias.detach().contiguous()
        y = empty(b, c, h, w, like=x, memory_format=torch.channels_last)
        mean = empty(b * h * w, like=x)
        rstd = empty(b * h * w, like=x)
        if y.numel():
            check_status(_cpu_build.library(LIBRARY, SIGNATURES).layer_norm_forward(
                address(x_),
                address(weight_),
                address(bias_),
                int(centered),
                eps,
                address(y),
                address(mean),
                address(rstd),
                b * h * w,
                c,
                torch.get_num_threads(),
            ), "channel_layer_norm", "forward")
        ctx.save_for_backward(x, weight, bias, mean, rstd)
        ctx.eps, ctx.centered = eps, centered
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, bias, mean, rstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():             # create_graph=True: grad of grad
            eps, centered = ctx.eps, ctx.centered
            return (*reference_grads(
                lambda *t: channel_layer_norm_reference(*t, eps, centered), (x, weight, bias),
                ctx.needs_input_grad, dy), None, None)
        b, c, h, w = x.shape
        # named: a temporary passed as address(...) would be freed before the call
        x_ = x.detach().contiguous(memory_format=torch.channels_last)
        dy_ = dy.contiguous(memory_format=torch.channels_last)
        weight_ = weight.detach().contiguous()
        dx = empty(b, c, h, w, like=x, memory_format=torch.channels_last) if need_x else None
        dw = empty(c, like=x) if need_w else None
        db = empty(c, like=x) if need_b and bias is not None else None
        if x.numel():
            check_status(_cpu_build.library(LIBRARY, SIGNATURES).layer_norm_backward(
                address(x_),
                address(weight_),
                int(ctx.centered),
                address(mean),
                address(rstd),
                address(dy_),
                address(dx),
                address(dw),
                address(db),
                b * h * w,
                c,
                torch.get_num_threads(),
            ), "channel_layer_norm", "backward")
        else:
            for t in (dw, db):
                if t is not None:
                    t.zero_()
        return dx, dw, db, None, None


# --------------------------------------------------------------------------- entry point
@register("kernel", "channel_layer_norm")
def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       eps: float = 1e-5, impl: str | None = None,
                       center: bool | None = None) -> torch.Tensor:
    """LayerNorm over channels. x: (B, C, H, W) any strides -> (B, C, H, W).

    ``bias=None`` is Restormer's BiasFree variant; ``bias=None, center=True`` subtracts
    the mean (a LayerNorm without bias, ClearAIR's scaffold). ``center`` defaults to
    ``bias is not None``; ``center=False`` with a bias is refused. The output follows
    the input's memory format (channels_last in, channels_last out).
    """
    if center is False and bias is not None:
        raise ValueError("channel_layer_norm: center=False (BiasFree) takes no bias, "
                         "got a bias tensor")
    choice = select(impl, x, cpu_kernel=LIBRARY)
    if choice == "triton":
        if center and bias is None:   # Centered: the WithBias kernel with a zero bias (no grad)
            bias = torch.zeros_like(weight)
        return _ln_op(x, weight, bias, float(eps))
    if choice == "cpu" and cpu_applies(x, weight, bias):
        centered = bias is not None or bool(center)
        return _LayerNormCpu.apply(x, weight, bias, float(eps), centered)
    return channel_layer_norm_reference(x, weight, bias, eps, center)
