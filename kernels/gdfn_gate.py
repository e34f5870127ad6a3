"""GDFN gate: ``gelu(x1) * x2`` over the two channel halves of one tensor (exact erf GELU).

Implementations
- reference: ``chunk`` (two views) + ``F.gelu`` + multiply; plain torch ops. For a
  channels_last input the x1 half is copied dense first (ATen's CPU GELU is ~10x slower on
  a strided channel slice than the copy + GELU on dense memory); the multiply stays strided.
- triton: one program handles ``BLOCK_SIZE_P`` pixels (of one image) x ``BLOCK_SIZE_C`` channels
  of the output, reading x1 and x2 straight from the input through its strides (no
  chunk/contiguous copy, no gelu(x1) temporary): reads 2C, writes C per pixel. The backward
  reads x and dy once and writes dx (2C) in one pass, recomputing gelu from x. GELU uses
  ``tl.math.erf`` (an intrinsic the interpreter evaluates with ``math.erf`` and the CUDA backend
  lowers to a float32 polynomial; no libdevice call), so the same code runs in the interpreter
  and on sm_90. Tolerance vs torch's erf GELU: float32 within 1e-6 relative in the interpreter;
  on GPU the erf approximation is accurate to a few float32 ulp. Exposed as custom ops
  ``irblocks::gelu_gate`` / ``irblocks::gelu_gate_backward`` (fake impls, autograd, FLOP formula
  0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from irblocks.registry import register

from ._dispatch import block_size, empty, select, triton_available
from ._dispatch import out_format as _out_format
from ._op import kernel_op

__all__ = ["gelu_gate", "gelu_gate_reference"]


def gelu_gate_reference(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=1)
    if not (x1.is_contiguous() or x1.is_contiguous(memory_format=torch.channels_last)):
        # ATen's CPU GELU (forward and backward) vectorises only dense inputs: on a channel
        # slice of a channels_last tensor it is ~10x slower than a dense copy + GELU
        x1 = x1.contiguous(memory_format=_out_format(x))
    return F.gelu(x1) * x2


if triton_available():
    import triton
    import triton.language as tl

    from ._triton_util import tile_offset

    @triton.jit
    def _tile(
        channels,  # C, channels of each half
        num_pixels,  # H * W
        BLOCK_SIZE_P: tl.constexpr,  # pixels per program
        BLOCK_SIZE_C: tl.constexpr,  # channels per program
    ):
        # grid: (pixel blocks of one image, channel blocks, batch)
        pixel = tl.program_id(0) * BLOCK_SIZE_P + tl.arange(0, BLOCK_SIZE_P)
        channel = tl.program_id(1) * BLOCK_SIZE_C + tl.arange(0, BLOCK_SIZE_C)
        mask = (pixel < num_pixels)[:, None] & (channel < channels)[None, :]
        return tl.program_id(2), pixel, channel, mask

    @triton.jit
    def _gate_fwd_kernel(
        x_ptr,  # input, (B, 2C, H, W) = [x1 | x2], any strides
        y_ptr,  # output gelu(x1) * x2, (B, C, H, W), same dtype as x
        channels,  # C, channels of each half
        num_pixels,  # H * W
        width,  # W
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along 2C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        y_stride_batch,  # stride of y along B
        y_stride_channel,  # stride of y along C
        y_stride_height,  # stride of y along H
        y_stride_width,  # stride of y along W
        FLAT_PIXELS: tl.constexpr,  # H and W of x and y merge into one pixel axis
        BLOCK_SIZE_P: tl.constexpr,  # pixels per program
        BLOCK_SIZE_C: tl.constexpr,  # channels per program
    ):
        batch, pixel, channel, mask = _tile(channels, num_pixels, BLOCK_SIZE_P, BLOCK_SIZE_C)
        x_offsets = tile_offset(batch, pixel, channel, width, x_stride_batch, x_stride_channel,
                                x_stride_height, x_stride_width, FLAT_PIXELS)
        x1 = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + x_offsets + channels * x_stride_channel, mask=mask,
                     other=0.0).to(tl.float32)
        y = 0.5 * x1 * (1.0 + tl.math.erf(x1 * 0.7071067811865476)) * x2
        y_offsets = tile_offset(batch, pixel, channel, width, y_stride_batch, y_stride_channel,
                                y_stride_height, y_stride_width, FLAT_PIXELS)
        tl.store(y_ptr + y_offsets, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gate_bwd_kernel(
        dy_ptr,  # gradient of the output, (B, C, H, W), any strides
        x_ptr,  # forward input, (B, 2C, H, W) = [x1 | x2], any strides
        dx_ptr,  # gradient of x (output), (B, 2C, H, W) = [dx1 | dx2], same dtype as x
        channels,  # C, channels of each half
        num_pixels,  # H * W
        width,  # W
        dy_stride_batch,  # stride of dy along B
        dy_stride_channel,  # stride of dy along C
        dy_stride_height,  # stride of dy along H
        dy_stride_width,  # stride of dy along W
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along 2C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        dx_stride_batch,  # stride of dx along B
        dx_stride_channel,  # stride of dx along 2C
        dx_stride_height,  # stride of dx along H
        dx_stride_width,  # stride of dx along W
        FLAT_PIXELS: tl.constexpr,  # H and W of dy, x and dx merge into one pixel axis
        BLOCK_SIZE_P: tl.constexpr,  # pixels per program
        BLOCK_SIZE_C: tl.constexpr,  # channels per program
    ):
        batch, pixel, channel, mask = _tile(channels, num_pixels, BLOCK_SIZE_P, BLOCK_SIZE_C)
        x_offsets = tile_offset(batch, pixel, channel, width, x_stride_batch, x_stride_channel,
                                x_stride_height, x_stride_width, FLAT_PIXELS)
        dy_offsets = tile_offset(batch, pixel, channel, width, dy_stride_batch, dy_stride_channel,
                                 dy_stride_height, dy_stride_width, FLAT_PIXELS)
        dx_offsets = tile_offset(batch, pixel, channel, width, dx_stride_batch, dx_stride_channel,
                                 dx_stride_height, dx_stride_width, FLAT_PIXELS)
        x1 = tl.load(x_ptr + x_offsets, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + x_offsets + channels * x_stride_channel, mask=mask,
                     other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(x1 * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x1 * x1) * 0.3989422804014327
        tl.store(dx_ptr + dx_offsets, (dy * x2 * (cdf + x1 * pdf)).to(dx_ptr.dtype.element_ty),
                 mask=mask)
        tl.store(dx_ptr + dx_offsets + channels * dx_stride_channel,
                 (dy * x1 * cdf).to(dx_ptr.dtype.element_ty), mask=mask)

    def _flat(*ts) -> bool:
        return all(t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3) for t in ts)

    def _blocks(c: int, gpu_elems: int):
        block_c = min(triton.next_power_of_2(max(c, 1)), 128)
        block_p = block_size(gpu=max(1, gpu_elems // block_c), interpreter=16)
        return block_p, block_c

    def _fwd_triton(x):
        b, c2, h, w = x.shape
        c = c2 // 2
        y = empty(b, c, h, w, like=x, memory_format=_out_format(x))
        if b * h * w and c:
            block_p, block_c = _blocks(c, 2048)
            grid = (triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), b)
            _gate_fwd_kernel[grid](
                x,
                y,
                c,
                h * w,
                w,
                *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, ..._width
                *y.stride(),  # y_stride_batch, y_stride_channel, y_stride_height, ..._width
                FLAT_PIXELS=_flat(x, y),
                BLOCK_SIZE_P=block_p,
                BLOCK_SIZE_C=block_c,
                num_warps=4,
            )
        return y

    def _bwd_triton(dy, x):
        b, c2, h, w = x.shape
        c = c2 // 2
        dx = empty(b, c2, h, w, like=x, memory_format=_out_format(x))
        if b * h * w and c:
            block_p, block_c = _blocks(c, 2048)
            grid = (triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), b)
            _gate_bwd_kernel[grid](
                dy,
                x,
                dx,
                c,
                h * w,
                w,
                *dy.stride(),  # dy_stride_batch, dy_stride_channel, dy_stride_height, ..._width
                *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, ..._width
                *dx.stride(),  # dx_stride_batch, dx_stride_channel, dx_stride_height, ..._width
                FLAT_PIXELS=_flat(dy, x, dx),
                BLOCK_SIZE_P=block_p,
                BLOCK_SIZE_C=block_c,
                num_warps=4,
            )
        return dx



def _half_shape(x):
    b, c2, h, w = x.shape
    return b, c2 // 2, h, w


def _gate_fake(x):
    return torch.empty(_half_shape(x), dtype=x.dtype, device=x.device, memory_format=_out_format(x))


def _gate_bwd_fake(dy, x):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x))


@kernel_op("gelu_gate_backward", fake=_gate_bwd_fake)
def _gate_bwd_op(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _bwd_triton(dy, x)


def _gate_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _gate_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return _gate_bwd_op(dy, x)


@kernel_op("gelu_gate", fake=_gate_fake, backward=_gate_backward, setup_context=_gate_setup)
def _gate_op(x: torch.Tensor) -> torch.Tensor:
    return _fwd_triton(x)


@register("kernel", "gelu_gate")
def gelu_gate(x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """x: (B, 2C, H, W) -> (B, C, H, W) = gelu(x[:, :C]) * x[:, C:] (exact erf GELU)."""
    if x.dim() != 4 or x.shape[1] % 2:
        raise ValueError("gelu_gate: expected (B, 2C, H, W) with an even channel count, got "
                         f"{tuple(x.shape)}")
    if select(impl, x) == "triton":
        return _gate_op(x)
    return gelu_gate_reference(x)
