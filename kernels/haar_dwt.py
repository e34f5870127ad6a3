"""Single-level 2-D Haar DWT / IDWT as a 2x2 butterfly (orthonormal, each the other's adjoint).

Layout: ``haar_dwt(x)`` maps (B, C, H, W) with even H, W to (B, 4C, H/2, W/2)
ordered subband-major ``[LL | LH | HL | HH]`` (channel ``s*C + c`` is subband
``s`` of input channel ``c``), the order of ``pytorch_wavelets.DWTForward(J=1,
wave="haar", mode="zero")``: ``yl`` then ``yh[:, :, 0..2]``. With
``a, b, c, d = x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1]``::

    LL = (a + b + c + d) / 2      LH = (a + b - c - d) / 2
    HL = (a - b + c - d) / 2      HH = (a - b - c + d) / 2

The 4x4 matrix is symmetric and orthogonal, so ``haar_idwt`` applies the same
butterfly and scatters the four results back to the 2x2 block; the backward of
one is the other. Odd sizes are the caller's business (the ``dwt`` block pads
with zeros, as pytorch-wavelets' ``mode="zero"`` does, and crops back).

Paths: an efficient PyTorch reference (strided views + adds: FlopCounterMode
counts 0, like any elementwise op) and a Triton kernel (one program handles a
block of output pixels of all four subbands; any input strides; the output
keeps the input's memory format) behind ``torch.library.custom_op``
``irblocks::haar_dwt`` / ``irblocks::haar_idwt`` with fake and autograd
registrations and a FLOP formula of 0 (elementwise).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from irblocks.registry import register

from . import _dispatch
from ._dispatch import select, triton_available
from ._op import kernel_op

__all__ = ["haar_dwt", "haar_idwt", "haar_dwt_reference", "haar_idwt_reference"]


# ----------------------------------------------------------------------------- reference
def _check_even(x: torch.Tensor, where: str) -> None:
    if x.dim() != 4:
        raise ValueError(f"{where}: expected a 4-D tensor B x C x H x W, got shape "
                         f"{tuple(x.shape)}")
    if x.shape[-2] % 2 or x.shape[-1] % 2:
        raise ValueError(f"{where}: H and W must be even (pad first), got {x.shape[-2]} x "
                         f"{x.shape[-1]}")


def _fmt(x: torch.Tensor):
    return torch.channels_last if (x.dim() == 4
                                   and x.is_contiguous(memory_format=torch.channels_last)
                                   and not x.is_contiguous()) else torch.contiguous_format


def haar_dwt_reference(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W), H and W even -> (B, 4C, H/2, W/2) = [LL | LH | HL | HH]."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    s1, d1, s2, d2 = a + b, a - b, c + d, c - d
    out = torch.cat([s1 + s2, s1 - s2, d1 + d2, d1 - d2], dim=1)
    return out * 0.5


def haar_idwt_reference(y: torch.Tensor) -> torch.Tensor:
    """(B, 4C, h, w) = [LL | LH | HL | HH] -> (B, C, 2h, 2w); the inverse (and adjoint) of haar_dwt.

    NCHW: the four butterfly outputs are stacked per channel and placed by
    ``pixel_shuffle``; channels_last: stacked along the row/column parity axes of
    the (B, h, 2, w, 2, C) layout, which is the channels_last output itself.
    """
    b_, c4, h, w = y.shape
    c = c4 // 4
    if _fmt(y) == torch.channels_last:
        t = y.permute(0, 2, 3, 1).reshape(b_, h, w, 4, c) * 0.5     # a view before the scale
        ll, lh, hl, hh = t.unbind(3)
        s1, s2, d1, d2 = ll + lh, ll - lh, hl + hh, hl - hh
        top = torch.stack([s1 + d1, s1 - d1], dim=3)                # B h w 2 C
        bot = torch.stack([s2 + d2, s2 - d2], dim=3)
        out = torch.stack([top, bot], dim=2)                        # B h 2 w 2 C
        return out.view(b_, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    ll, lh, hl, hh = y[:, :c], y[:, c:2 * c], y[:, 2 * c:3 * c], y[:, 3 * c:]
    s1, s2, d1, d2 = ll + lh, ll - lh, hl + hh, hl - hh             # (a+b), (c+d), (a-b), (c-d)
    st = torch.stack([s1 + d1, s1 - d1, s2 + d2, s2 - d2], dim=2).reshape(b_, 4 * c, h, w)
    return F.pixel_shuffle(st, 2) * 0.5


# ----------------------------------------------------------------------------- triton
_HAVE_TRITON = triton_available()   # the library works without Triton
if _HAVE_TRITON:
    import triton
    import triton.language as tl

if _HAVE_TRITON:
    @triton.jit
    def _haar_dwt_kernel(
        x_ptr,  # input, (B, C, 2h, 2w), any strides
        y_ptr,  # output subbands, (B, 4C, h, w) = [LL | LH | HL | HH], same dtype as x
        channels,  # C, input channels
        out_height,  # h = H / 2
        out_width,  # w = W / 2
        num_outputs,  # B * C * h * w, output pixels per subband
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        y_stride_batch,  # stride of y along B
        y_stride_channel,  # stride of y along 4C
        y_stride_height,  # stride of y along h
        y_stride_width,  # stride of y along w
        BLOCK_SIZE: tl.constexpr,  # output pixels per program
    ):
        pid = tl.program_id(0)
        offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < num_outputs
        col = offsets % out_width
        rest = offsets // out_width
        row = rest % out_height
        rest = rest // out_height
        channel = rest % channels
        batch = rest // channels
        x_base = (x_ptr + batch * x_stride_batch + channel * x_stride_channel
                  + (2 * row) * x_stride_height + (2 * col) * x_stride_width)
        top_left = tl.load(x_base, mask=mask, other=0.0).to(tl.float32)
        top_right = tl.load(x_base + x_stride_width, mask=mask, other=0.0).to(tl.float32)
        bottom_left = tl.load(x_base + x_stride_height, mask=mask, other=0.0).to(tl.float32)
        bottom_right = tl.load(x_base + x_stride_height + x_stride_width, mask=mask,
                               other=0.0).to(tl.float32)
        s1 = top_left + top_right
        d1 = top_left - top_right
        s2 = bottom_left + bottom_right
        d2 = bottom_left - bottom_right
        y_base = (y_ptr + batch * y_stride_batch + channel * y_stride_channel
                  + row * y_stride_height + col * y_stride_width)
        out_dtype = y_ptr.dtype.element_ty
        tl.store(y_base, ((s1 + s2) * 0.5).to(out_dtype), mask=mask)
        tl.store(y_base + channels * y_stride_channel, ((s1 - s2) * 0.5).to(out_dtype), mask=mask)
        tl.store(y_base + 2 * channels * y_stride_channel, ((d1 + d2) * 0.5).to(out_dtype),
                 mask=mask)
        tl.store(y_base + 3 * channels * y_stride_channel, ((d1 - d2) * 0.5).to(out_dtype),
                 mask=mask)

    @triton.jit
    def _haar_idwt_kernel(
        y_ptr,  # input subbands, (B, 4C, h, w) = [LL | LH | HL | HH], any strides
        x_ptr,  # output, (B, C, 2h, 2w), same dtype as y
        channels,  # C, output channels
        in_height,  # h
        in_width,  # w
        num_inputs,  # B * C * h * w, input pixels per subband
        y_stride_batch,  # stride of y along B
        y_stride_channel,  # stride of y along 4C
        y_stride_height,  # stride of y along h
        y_stride_width,  # stride of y along w
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along C
        x_stride_height,  # stride of x along 2h
        x_stride_width,  # stride of x along 2w
        BLOCK_SIZE: tl.constexpr,  # input pixels per program
    ):
        pid = tl.program_id(0)
        offsets = pid * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = offsets < num_inputs
        col = offsets % in_width
        rest = offsets // in_width
        row = rest % in_height
        rest = rest // in_height
        channel = rest % channels
        batch = rest // channels
        y_base = (y_ptr + batch * y_stride_batch + channel * y_stride_channel
                  + row * y_stride_height + col * y_stride_width)
        ll = tl.load(y_base, mask=mask, other=0.0).to(tl.float32)
        lh = tl.load(y_base + channels * y_stride_channel, mask=mask, other=0.0).to(tl.float32)
        hl = tl.load(y_base + 2 * channels * y_stride_channel, mask=mask,
                     other=0.0).to(tl.float32)
        hh = tl.load(y_base + 3 * channels * y_stride_channel, mask=mask,
                     other=0.0).to(tl.float32)
        s1 = ll + lh
        s2 = ll - lh
        d1 = hl + hh
        d2 = hl - hh
        x_base = (x_ptr + batch * x_stride_batch + channel * x_stride_channel
                  + (2 * row) * x_stride_height + (2 * col) * x_stride_width)
        out_dtype = x_ptr.dtype.element_ty
        tl.store(x_base, ((s1 + d1) * 0.5).to(out_dtype), mask=mask)
        tl.store(x_base + x_stride_width, ((s1 - d1) * 0.5).to(out_dtype), mask=mask)
        tl.store(x_base + x_stride_height, ((s2 + d2) * 0.5).to(out_dtype), mask=mask)
        tl.store(x_base + x_stride_height + x_stride_width, ((s2 - d2) * 0.5).to(out_dtype),
                 mask=mask)


def _block() -> int:
    return _dispatch.block_size(gpu=1024, interpreter=256)


def _dwt_triton(x: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    y = _dispatch.empty(b, 4 * c, h, w, like=x, memory_format=_fmt(x))
    total = b * c * h * w
    if total:
        blk = _block()
        _haar_dwt_kernel[(triton.cdiv(total, blk),)](
            x,
            y,
            c,
            h,
            w,
            total,
            *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, x_stride_width
            *y.stride(),  # y_stride_batch, y_stride_channel, y_stride_height, y_stride_width
            BLOCK_SIZE=blk,
        )
    return y


def _idwt_triton(y: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = y.shape
    c = c4 // 4
    x = _dispatch.empty(b, c, 2 * h, 2 * w, like=y, memory_format=_fmt(y))
    total = b * c * h * w
    if total:
        blk = _block()
        _haar_idwt_kernel[(triton.cdiv(total, blk),)](
            y,
            x,
            c,
            h,
            w,
            total,
            *y.stride(),  # y_stride_batch, y_stride_channel, y_stride_height, y_stride_width
            *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, x_stride_width
            BLOCK_SIZE=blk,
        )
    return x


def _dwt_fake(x):
    b, c, hh, ww = x.shape
    return x.new_empty(b, 4 * c, hh // 2, ww // 2).contiguous(memory_format=_fmt(x))


def _idwt_fake(y):
    b, c4, h, w = y.shape
    return y.new_empty(b, c4 // 4, 2 * h, 2 * w).contiguous(memory_format=_fmt(y))


# the two transforms are each other's adjoint: the backward of one is the other
def _dwt_bwd(ctx, g):
    return _haar_idwt_op(g)


def _idwt_bwd(ctx, g):
    return _haar_dwt_op(g)


@kernel_op("haar_dwt", fake=_dwt_fake, backward=_dwt_bwd)     # elementwise butterfly: 0 FLOPs
def _haar_dwt_op(x: torch.Tensor) -> torch.Tensor:
    return _dwt_triton(x)


@kernel_op("haar_idwt", fake=_idwt_fake, backward=_idwt_bwd)
def _haar_idwt_op(y: torch.Tensor) -> torch.Tensor:
    return _idwt_triton(y)


# ----------------------------------------------------------------------------- entry points
@register("kernel", "haar_dwt")
def haar_dwt(x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """Haar DWT: (B, C, H, W), H and W even, any strides -> (B, 4C, H/2, W/2) [LL|LH|HL|HH]."""
    _check_even(x, "haar_dwt")
    if select(impl, x) == "triton" and _HAVE_TRITON:
        return _haar_dwt_op(x)
    return haar_dwt_reference(x)


@register("kernel", "haar_idwt")
def haar_idwt(y: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """Inverse Haar DWT: (B, 4C, h, w) [LL|LH|HL|HH] -> (B, C, 2h, 2w)."""
    if y.dim() != 4 or y.shape[1] % 4:
        raise ValueError("haar_idwt: expected B x 4C x h x w (channels a multiple of 4), got "
                         f"{tuple(y.shape)}")
    if select(impl, y) == "triton" and _HAVE_TRITON:
        return _haar_idwt_op(y)
    return haar_idwt_reference(y)
