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
    def _haar_dwt_kernel(x_ptr, y_ptr, C, h, w, total,
                         sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                         BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < total
        j = offs % w
        t = offs // w
        i = t % h
        t = t // h
        c = t % C
        b = t // C
        base = x_ptr + b * sxb + c * sxc + (2 * i) * sxh + (2 * j) * sxw
        a = tl.load(base, mask=mask, other=0.0).to(tl.float32)
        bb = tl.load(base + sxw, mask=mask, other=0.0).to(tl.float32)
        cc = tl.load(base + sxh, mask=mask, other=0.0).to(tl.float32)
        dd = tl.load(base + sxh + sxw, mask=mask, other=0.0).to(tl.float32)
        s1 = a + bb
        d1 = a - bb
        s2 = cc + dd
        d2 = cc - dd
        ob = y_ptr + b * syb + c * syc + i * syh + j * syw
        dt = y_ptr.dtype.element_ty
        tl.store(ob, ((s1 + s2) * 0.5).to(dt), mask=mask)
        tl.store(ob + C * syc, ((s1 - s2) * 0.5).to(dt), mask=mask)
        tl.store(ob + 2 * C * syc, ((d1 + d2) * 0.5).to(dt), mask=mask)
        tl.store(ob + 3 * C * syc, ((d1 - d2) * 0.5).to(dt), mask=mask)

    @triton.jit
    def _haar_idwt_kernel(y_ptr, x_ptr, C, h, w, total,
                          syb, syc, syh, syw, sxb, sxc, sxh, sxw,
                          BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < total
        j = offs % w
        t = offs // w
        i = t % h
        t = t // h
        c = t % C
        b = t // C
        ib = y_ptr + b * syb + c * syc + i * syh + j * syw
        ll = tl.load(ib, mask=mask, other=0.0).to(tl.float32)
        lh = tl.load(ib + C * syc, mask=mask, other=0.0).to(tl.float32)
        hl = tl.load(ib + 2 * C * syc, mask=mask, other=0.0).to(tl.float32)
        hh = tl.load(ib + 3 * C * syc, mask=mask, other=0.0).to(tl.float32)
        s1 = ll + lh
        s2 = ll - lh
        d1 = hl + hh
        d2 = hl - hh
        ob = x_ptr + b * sxb + c * sxc + (2 * i) * sxh + (2 * j) * sxw
        dt = x_ptr.dtype.element_ty
        tl.store(ob, ((s1 + d1) * 0.5).to(dt), mask=mask)
        tl.store(ob + sxw, ((s1 - d1) * 0.5).to(dt), mask=mask)
        tl.store(ob + sxh, ((s2 + d2) * 0.5).to(dt), mask=mask)
        tl.store(ob + sxh + sxw, ((s2 - d2) * 0.5).to(dt), mask=mask)



def _block() -> int:
    return _dispatch.block_size(gpu=1024, interpreter=256)


def _dwt_triton(x: torch.Tensor) -> torch.Tensor:
    b, c, hh, ww = x.shape
    h, w = hh // 2, ww // 2
    y = _dispatch.empty(b, 4 * c, h, w, like=x, memory_format=_fmt(x))
    total = b * c * h * w
    if total:
        blk = _block()
        _haar_dwt_kernel[(triton.cdiv(total, blk),)](x, y, c, h, w, total, *x.stride(), *y.stride(),
                                                     BLOCK=blk)
    return y


def _idwt_triton(y: torch.Tensor) -> torch.Tensor:
    b, c4, h, w = y.shape
    c = c4 // 4
    x = _dispatch.empty(b, c, 2 * h, 2 * w, like=y, memory_format=_fmt(y))
    total = b * c * h * w
    if total:
        blk = _block()
        _haar_idwt_kernel[(triton.cdiv(total, blk),)](y, x, c, h, w, total, *y.stride(),
                                                      *x.stride(), BLOCK=blk)
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
