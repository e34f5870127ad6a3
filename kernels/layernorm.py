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
- triton: one program normalises ``BLOCK_P`` pixels of one image x all channels, reading
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

from typing import Optional

import torch
import torch.nn.functional as F

from irblocks.registry import register

from ._dispatch import block_size, empty, select, triton_available
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

    from ._triton_util import pixel_offset as _pix

    @triton.jit
    def _ln_fwd_kernel(X, Wt, Bs, Y, C, HW, Wd,
                       sxb, sxc, sxh, sxw, syb, syc, syh, syw, eps,
                       HAS_BIAS: tl.constexpr, FLAT: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_C: tl.constexpr):
        # grid: (pixel blocks of one image, batch); tile = BLOCK_P pixels x all channels
        b = tl.program_id(1)
        hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.arange(0, BLOCK_C)
        cm = c < C
        mask = (hw < HW)[:, None] & cm[None, :]
        xo = b * sxb + _pix(hw, Wd, sxh, sxw, FLAT)[:, None] + (c * sxc)[None, :]
        x = tl.load(X + xo, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        wv = tl.load(Wt + c, mask=cm, other=0.0).to(tl.float32)
        if HAS_BIAS:
            bv = tl.load(Bs + c, mask=cm, other=0.0).to(tl.float32)
            y = xc * rstd[:, None] * wv[None, :] + bv[None, :]
        else:
            y = x * rstd[:, None] * wv[None, :]
        yo = b * syb + _pix(hw, Wd, syh, syw, FLAT)[:, None] + (c * syc)[None, :]
        tl.store(Y + yo, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _ln_bwd_kernel(DY, X, Wt, DX, DWP, DBP, C, HW, Wd,
                       sdb, sdc, sdh, sdw, sxb, sxc, sxh, sxw, sgb, sgc, sgh, sgw, eps,
                       HAS_BIAS: tl.constexpr, FLAT: tl.constexpr, BLOCK_P: tl.constexpr,
                       BLOCK_C: tl.constexpr):
        b = tl.program_id(1)
        hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.arange(0, BLOCK_C)
        cm = c < C
        mask = (hw < HW)[:, None] & cm[None, :]
        xo = b * sxb + _pix(hw, Wd, sxh, sxw, FLAT)[:, None] + (c * sxc)[None, :]
        do = b * sdb + _pix(hw, Wd, sdh, sdw, FLAT)[:, None] + (c * sdc)[None, :]
        x = tl.load(X + xo, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + do, mask=mask, other=0.0).to(tl.float32)
        wv = tl.load(Wt + c, mask=cm, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / C
        xc = tl.where(mask, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, axis=1) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        g = dy * wv[None, :]
        if HAS_BIAS:
            xhat = xc * rstd[:, None]
            m1 = tl.sum(g, axis=1) / C
            m2 = tl.sum(g * xhat, axis=1) / C
            dx = rstd[:, None] * (g - m1[:, None] - xhat * m2[:, None])
            dwp = tl.sum(dy * xhat, axis=0)
        else:
            # y = x * rstd * w; d rstd / d x_i = -rstd^3 (x_i - mean) / C
            m = tl.sum(g * x, axis=1) / C
            dx = rstd[:, None] * g - (rstd * rstd * rstd * m)[:, None] * xc
            dwp = tl.sum(dy * x * rstd[:, None], axis=0)
        dbp = tl.sum(dy, axis=0)
        go = b * sgb + _pix(hw, Wd, sgh, sgw, FLAT)[:, None] + (c * sgc)[None, :]
        tl.store(DX + go, dx.to(DX.dtype.element_ty), mask=mask)
        row = b * tl.num_programs(0) + tl.program_id(0)
        tl.store(DWP + row * C + c, dwp, mask=cm)
        tl.store(DBP + row * C + c, dbp, mask=cm)

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
        _ln_fwd_kernel[grid](x, weight, bias if bias is not None else weight, y, c, h * w, w,
                             *x.stride(), *y.stride(), eps, HAS_BIAS=bias is not None,
                             FLAT=_flat(x, y), BLOCK_P=block_p, BLOCK_C=block_c, num_warps=nw)
        return y

    def _bwd_triton(dy, x, weight, has_bias, eps):
        b, c, h, w = x.shape
        dx = empty(b, c, h, w, like=x, memory_format=_out_format(x))
        block_p, block_c, nw = _blocks(c, 2048)
        n = triton.cdiv(h * w, block_p)
        dwp = empty(b * n, c, like=x, dtype=torch.float32)
        dbp = empty(b * n, c, like=x, dtype=torch.float32)
        if b * n > 0 and c > 0:
            _ln_bwd_kernel[(n, b)](dy, x, weight, dx, dwp, dbp, c, h * w, w,
                                   *dy.stride(), *x.stride(), *dx.stride(), eps, HAS_BIAS=has_bias,
                                   FLAT=_flat(dy, x, dx), BLOCK_P=block_p, BLOCK_C=block_c,
                                   num_warps=nw)
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
    if select(impl, x) == "triton":
        if center and bias is None:   # Centered: the WithBias kernel with a zero bias (no grad)
            bias = torch.zeros_like(weight)
        return _ln_op(x, weight, bias, float(eps))
    return channel_layer_norm_reference(x, weight, bias, eps, center)
