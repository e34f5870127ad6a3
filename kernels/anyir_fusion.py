"""AnyIR spatial-frequency fusion (Algorithm 2 before its 1x1 projection), one pass.

Inputs ``a`` (attention path) and ``g`` (gated path), both (B, C', H, W), and a
scalar ``lam``. Output (B, 2C', H, W), in the released code's channel layout::

    F_s = concat(a + sigmoid(g), g + sigmoid(a))  # channel k < C': a/g[k]; k >= C': g/a[k - C']
    F_f = irfft2(rfft2(a) + rfft2(g)) repeated (c0, c0, c1, c1, ...)   ==  (a + g)[k // 2]
    out = lam * F_s + (1 - lam) * F_f

The frequency branch is exactly ``a + g`` (the FFT is linear and nothing acts in
the spectrum), so no FFT is computed here. The FFT form lives in the block
(``irblocks.anyir.sf_fusion``, ``frequency="fft"``) and a test checks both agree.

Paths:
* reference: plain torch ops (torch.compile / FlopCounterMode see through it);
* triton: one read of a and g and one write of out in the forward; the backward
  reads a, g and the output gradient once and writes da, dg and per-block partial
  sums of dlam (summed deterministically in torch). Custom op
  ``irblocks::anyir_fusion`` with fake, autograd and a zero FLOP formula.
"""
from __future__ import annotations

import torch

from irblocks.registry import register

from ._dispatch import block_size, empty, select, triton_available
from ._dispatch import out_format as _out_format
from ._op import kernel_op

__all__ = ["anyir_fusion", "anyir_fusion_reference", "anyir_fusion_naive", "bytes_moved"]


# ----------------------------------------------------------------------------- references
def anyir_fusion_naive(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The released code's formulation (FFT branch, separate ops) -- for benchmarks and tests."""
    f_s = torch.cat([a + torch.sigmoid(g), g + torch.sigmoid(a)], dim=1)
    f_f = torch.fft.irfft2(torch.fft.rfft2(a) + torch.fft.rfft2(g), s=a.shape[-2:])
    f_f = f_f.repeat_interleave(2, dim=1)
    return lam * f_s + (1.0 - lam) * f_f


def _fuse(x, y, lam, dim, pairs, axis):
    # every intermediate is ours: update in place (fewer passes over memory)
    f_s = torch.cat([torch.sigmoid(y).add_(x), torch.sigmoid(x).add_(y)], dim=dim).view(pairs)
    return f_s.mul_(lam).add_((x + y).mul_(1 - lam).unsqueeze(axis))


class _ReferenceFusion(torch.autograd.Function):
    """The reference's autograd: saves only x and y (recomputes the two sigmoids) and
    computes the gradients in a few fused passes instead of ATen's op-by-op chain.

    With D1, D2 the gradient's two channel halves and Dp[j] = D[2j] + D[2j + 1]:
    dx = lerp(Dp, D1 + D2 * s'(x), lam), dy = lerp(Dp, D2 + D1 * s'(y), lam),
    dlam = <D1, x + s(y)> + <D2, y + s(x)> - <Dp, x + y>.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, lam, dim, pairs, axis):
        return _fuse(x, y, lam, dim, pairs, axis)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, y, lam, dim, _, axis = inputs
        ctx.save_for_backward(x, y, lam)
        ctx.dim, ctx.axis = dim, axis

    @staticmethod
    def backward(ctx, dout):
        x, y, lam = ctx.saved_tensors
        d1, d2 = dout.flatten(ctx.axis - 1, ctx.axis).chunk(2, dim=ctx.dim)   # the two halves
        dp = dout.select(ctx.axis, 0) + dout.select(ctx.axis, 1)     # a sum over 2 is slow in ATen
        sx, sy = torch.sigmoid(x), torch.sigmoid(y)
        dx = torch.lerp(dp, torch.ops.aten.sigmoid_backward(d2, sx).add_(d1), lam)
        dy = torch.lerp(dp, torch.ops.aten.sigmoid_backward(d1, sy).add_(d2), lam)
        dlam = None
        if ctx.needs_input_grad[2]:
            dlam = ((d1 * sy.add_(x)).sum() + (d2 * sx.add_(y)).sum()
                    - (dp * (x + y)).sum()).reshape(lam.shape)
        return dx, dy, dlam, None, None, None


def anyir_fusion_reference(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Efficient PyTorch reference: no FFT, no repeat copy, in-place steps when no grad is needed.

    Output channel 2j + r (r = 0, 1) is lam * F_s[2j + r] + (1 - lam) * (a + g)[j], so F_s viewed
    as pairs (..., C', 2, ...) and (a + g) broadcast over the pair axis give the result in one lerp.
    Works in the channels_last (B H W C) view when the inputs are channels_last.
    """
    b, c, h, w = a.shape
    cl = a.is_contiguous(memory_format=torch.channels_last) and not a.is_contiguous()
    if cl:   # B H W C' views (dense for channels_last inputs)
        x, y = a.permute(0, 2, 3, 1), g.permute(0, 2, 3, 1)
        dim, pairs, axis = -1, (b, h, w, c, 2), -1
    else:
        x, y, dim, pairs, axis = a, g, 1, (b, c, 2, h, w), 2
    lam = lam.to(a.dtype)
    if torch.is_grad_enabled() and (a.requires_grad or g.requires_grad or lam.requires_grad):
        out = _ReferenceFusion.apply(x, y, lam, dim, pairs, axis)
    else:
        out = _fuse(x, y, lam, dim, pairs, axis)
    if cl:
        return out.view(b, h, w, 2 * c).permute(0, 3, 1, 2)
    return out.view(b, 2 * c, h, w)


# ----------------------------------------------------------------------------- Triton
_HAVE_TRITON = triton_available()   # the library works without Triton
if _HAVE_TRITON:
    import triton
    import triton.language as tl

if _HAVE_TRITON:
    @triton.jit
    def _fusion_fwd_kernel(a_ptr, g_ptr, lam_ptr, out_ptr,
                           C2, CH, H, W,
                           sab, sac, sah, saw, sgb, sgc, sgh, sgw, sob, soc, soh, sow,
                           BLOCK: tl.constexpr):
        pid = tl.program_id(0)              # b * 2C' + k (output channel k)
        blk = tl.program_id(1)
        b = pid // C2
        k = pid % C2
        first = k < CH
        j1 = tl.where(first, k, k - CH)     # spatial branch source channel
        j2 = k // 2                         # frequency branch source channel (repeat_interleave)
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < H * W
        hh = offs // W
        ww = offs % W
        b64 = b.to(tl.int64)
        pa = a_ptr + b64 * sab + hh * sah + ww * saw
        pg = g_ptr + b64 * sgb + hh * sgh + ww * sgw
        a1 = tl.load(pa + j1 * sac, mask=mask, other=0.0).to(tl.float32)
        g1 = tl.load(pg + j1 * sgc, mask=mask, other=0.0).to(tl.float32)
        a2 = tl.load(pa + j2 * sac, mask=mask, other=0.0).to(tl.float32)
        g2 = tl.load(pg + j2 * sgc, mask=mask, other=0.0).to(tl.float32)
        lam = tl.load(lam_ptr).to(tl.float32)
        x = tl.where(first, a1, g1)
        y = tl.where(first, g1, a1)
        fs = x + tl.sigmoid(y)
        ff = a2 + g2
        out = lam * fs + (1.0 - lam) * ff
        po = out_ptr + b64 * sob + k * soc + hh * soh + ww * sow
        tl.store(po, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _fusion_bwd_kernel(a_ptr, g_ptr, lam_ptr, go_ptr, da_ptr, dg_ptr, dlam_ptr,
                           CH, H, W, NBLK,
                           sab, sac, sah, saw, sgb, sgc, sgh, sgw,
                           s_gob, s_goc, s_goh, s_gow,
                           s_dab, s_dac, s_dah, s_daw, s_dgb, s_dgc, s_dgh, s_dgw,
                           BLOCK: tl.constexpr):
        pid = tl.program_id(0)              # b * C' + j (input channel j)
        blk = tl.program_id(1)
        b = pid // CH
        j = pid % CH
        offs = blk * BLOCK + tl.arange(0, BLOCK)
        mask = offs < H * W
        hh = offs // W
        ww = offs % W
        b64 = b.to(tl.int64)
        a = tl.load(a_ptr + b64 * sab + j * sac + hh * sah + ww * saw, mask=mask,
                    other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b64 * sgb + j * sgc + hh * sgh + ww * sgw, mask=mask,
                    other=0.0).to(tl.float32)
        pgo = go_ptr + b64 * s_gob + hh * s_goh + ww * s_gow
        go_ag = tl.load(pgo + j * s_goc, mask=mask, other=0.0).to(tl.float32)            # out[j]
        go_ga = tl.load(pgo + (j + CH) * s_goc, mask=mask, other=0.0).to(tl.float32)  # out[j + C']
        go_f = (tl.load(pgo + (2 * j) * s_goc, mask=mask, other=0.0).to(tl.float32)
                + tl.load(pgo + (2 * j + 1) * s_goc, mask=mask, other=0.0).to(tl.float32))
        lam = tl.load(lam_ptr).to(tl.float32)
        sa = tl.sigmoid(a)
        sg = tl.sigmoid(g)
        da = lam * (go_ag + go_ga * sa * (1.0 - sa)) + (1.0 - lam) * go_f
        dg = lam * (go_ag * sg * (1.0 - sg) + go_ga) + (1.0 - lam) * go_f
        part = go_ag * (a + sg) + go_ga * (g + sa) - go_f * (a + g)
        part = tl.where(mask, part, 0.0)
        tl.store(da_ptr + b64 * s_dab + j * s_dac + hh * s_dah + ww * s_daw,
                 da.to(da_ptr.dtype.element_ty), mask=mask)
        tl.store(dg_ptr + b64 * s_dgb + j * s_dgc + hh * s_dgh + ww * s_dgw,
                 dg.to(dg_ptr.dtype.element_ty), mask=mask)
        tl.store(dlam_ptr + pid * NBLK + blk, tl.sum(part, axis=0))



def _block() -> int:
    return block_size(gpu=1024, interpreter=64)


def _fwd_triton(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    b, ch, h, w = a.shape
    out = empty(b, 2 * ch, h, w, like=a, memory_format=_out_format(a))
    if out.numel() == 0:
        return out
    blk = _block()
    grid = (b * 2 * ch, triton.cdiv(h * w, blk))
    _fusion_fwd_kernel[grid](a, g, lam, out, 2 * ch, ch, h, w,
                             *a.stride(), *g.stride(), *out.stride(), BLOCK=blk)
    return out


def _bwd_triton(grad: torch.Tensor, a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor):
    b, ch, h, w = a.shape
    da = empty(b, ch, h, w, like=a, memory_format=_out_format(a))
    dg = empty(b, ch, h, w, like=g, memory_format=_out_format(g))
    if a.numel() == 0:
        return da.zero_(), dg.zero_(), torch.zeros_like(lam)
    blk = _block()
    nblk = triton.cdiv(h * w, blk)
    part = empty(b * ch * nblk, like=a, dtype=torch.float32)
    _fusion_bwd_kernel[(b * ch, nblk)](a, g, lam, grad, da, dg, part, ch, h, w, nblk,
                                       *a.stride(), *g.stride(), *grad.stride(),
                                       *da.stride(), *dg.stride(), BLOCK=blk)
    return da, dg, part.sum().to(lam.dtype).reshape(lam.shape)


# ----------------------------------------------------------------------------- custom op
def _fusion_fake(a, g, lam):
    b, ch, h, w = a.shape
    return a.new_empty((b, 2 * ch, h, w)).contiguous(memory_format=_out_format(a))


def _fusion_bwd_fake(grad, a, g, lam):
    return (torch.empty_like(a, memory_format=_out_format(a)),
            torch.empty_like(g, memory_format=_out_format(g)), torch.empty_like(lam))


@kernel_op("anyir_fusion_backward", fake=_fusion_bwd_fake)
def _fusion_bwd_op(grad: torch.Tensor, a: torch.Tensor, g: torch.Tensor,
                   lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_triton(grad, a, g, lam)


def _setup_context(ctx, inputs, output):
    a, g, lam = inputs
    ctx.save_for_backward(a, g, lam)


def _backward(ctx, grad):
    a, g, lam = ctx.saved_tensors
    da, dg, dlam = _fusion_bwd_op(grad, a, g, lam)
    return da, dg, dlam


@kernel_op("anyir_fusion", fake=_fusion_fake, backward=_backward, setup_context=_setup_context)
def _fusion_op(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return _fwd_triton(a, g, lam)


# ----------------------------------------------------------------------------- entry point
def bytes_moved(shape_a, itemsize: int = 4) -> dict:
    """Bytes read+written by the forward: fused (read a, g; write out) vs the released code's
    unfused ops (sigmoids, adds, cat, rfft2 x2, complex add, irfft2, repeat_interleave, lerp)."""
    b, ch, h, w = shape_a
    n = b * ch * h * w * itemsize
    nf = b * ch * h * (w // 2 + 1) * 2 * itemsize      # one complex half-spectrum
    fused = 2 * n + 2 * n
    unfused = (2 * n) * 2 + (3 * n) * 2 + (2 * n + 2 * n) + (n + nf) * 2 + 3 * nf + (nf + n) \
        + (n + 2 * n) + (2 * n + 2 * n) * 3 + 2 * n
    return {"fused": fused, "unfused": unfused}


@register("kernel", "anyir_fusion")
def anyir_fusion(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor,
                 impl: str | None = None) -> torch.Tensor:
    """lam * concat(a + sigmoid(g), g + sigmoid(a)) + (1 - lam) * repeat_interleave(a + g, 2).

    a, g: (B, C', H, W), same shape, any strides (NCHW or channels_last); lam: 0-dim tensor.
    Returns (B, 2C', H, W) (channels_last if a is). Grads for a, g and lam.
    """
    if a.shape != g.shape or a.dim() != 4:
        raise ValueError(f"anyir_fusion: a and g must both be B x C' x H x W, got {tuple(a.shape)} "
                         f"and {tuple(g.shape)}")
    if select(impl, a, g) == "triton":
        return _fusion_op(a, g, lam.reshape(()))
    return anyir_fusion_reference(a, g, lam)
