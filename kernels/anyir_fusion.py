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
* cpu: a compiled C kernel (``csrc/anyir_fusion.c``, float32 CPU tensors): one pass forward
  (reads a, g; writes out) and one pass backward (reads a, g, dout; writes da, dg; dlam summed
  in double). Falls back to the reference under torch.compile, torch.func, autocast;
* triton: one read of a and g and one write of out in the forward; the backward
  reads a, g and the output gradient once and writes da, dg and per-block partial
  sums of dlam (summed deterministically in torch). Custom op
  ``irblocks::anyir_fusion`` with fake, autograd and a zero FLOP formula.
"""
from __future__ import annotations

import ctypes

import torch

from irblocks.registry import register

from . import _cpu_build
from ._cpu_build import address, check_status
from ._cpu_build import applies as cpu_applies
from ._dispatch import block_size, empty, reference_grads, select, triton_available
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


def _fusion_differentiable(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Plain out-of-place ops (no custom autograd): what grad of grad (``create_graph=True``)
    differentiates for the reference and the C kernel."""
    f_s = torch.cat([a + torch.sigmoid(g), g + torch.sigmoid(a)], dim=1)
    return lam * f_s + (1.0 - lam) * (a + g).repeat_interleave(2, dim=1)


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
        if torch.is_grad_enabled():             # create_graph=True: grad of grad
            if ctx.axis == -1:                  # B H W C' views -> B C' H W
                a, g = x.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2)
                d = dout.flatten(-2).permute(0, 3, 1, 2)
            else:
                a, g, d = x, y, dout.flatten(1, 2)
            da, dg, dlam = reference_grads(_fusion_differentiable, (a, g, lam),
                                           ctx.needs_input_grad, d)
            if ctx.axis == -1:
                da = None if da is None else da.permute(0, 2, 3, 1)
                dg = None if dg is None else dg.permute(0, 2, 3, 1)
            return da, dg, dlam, None, None, None
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
    def _fusion_fwd_kernel(
        a_ptr,  # attention path a, (B, C', H, W), any strides
        g_ptr,  # gated path g, (B, C', H, W), any strides
        lam_ptr,  # lam, 0-dim tensor (the mix of the spatial and frequency branches)
        out_ptr,  # output, (B, 2C', H, W), same dtype as a
        out_channels,  # 2C'
        in_channels,  # C'
        height,  # H
        width,  # W
        a_stride_batch,  # stride of a along B
        a_stride_channel,  # stride of a along C'
        a_stride_height,  # stride of a along H
        a_stride_width,  # stride of a along W
        g_stride_batch,  # stride of g along B
        g_stride_channel,  # stride of g along C'
        g_stride_height,  # stride of g along H
        g_stride_width,  # stride of g along W
        out_stride_batch,  # stride of out along B
        out_stride_channel,  # stride of out along 2C'
        out_stride_height,  # stride of out along H
        out_stride_width,  # stride of out along W
        BLOCK_SIZE: tl.constexpr,  # pixels per program
    ):
        batch_out_channel = tl.program_id(0)   # b * 2C' + k (output channel k)
        pixel_block = tl.program_id(1)
        batch = batch_out_channel // out_channels
        out_channel = batch_out_channel % out_channels
        first_half = out_channel < in_channels
        # spatial branch source channel, then the frequency branch's (repeat_interleave)
        spatial_channel = tl.where(first_half, out_channel, out_channel - in_channels)
        frequency_channel = out_channel // 2
        pixel = pixel_block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = pixel < height * width
        row = pixel // width
        col = pixel % width
        batch64 = batch.to(tl.int64)
        a_pixels_ptr = (a_ptr + batch64 * a_stride_batch + row * a_stride_height
                        + col * a_stride_width)
        g_pixels_ptr = (g_ptr + batch64 * g_stride_batch + row * g_stride_height
                        + col * g_stride_width)
        a_spatial = tl.load(a_pixels_ptr + spatial_channel * a_stride_channel, mask=mask,
                            other=0.0).to(tl.float32)
        g_spatial = tl.load(g_pixels_ptr + spatial_channel * g_stride_channel, mask=mask,
                            other=0.0).to(tl.float32)
        a_frequency = tl.load(a_pixels_ptr + frequency_channel * a_stride_channel, mask=mask,
                              other=0.0).to(tl.float32)
        g_frequency = tl.load(g_pixels_ptr + frequency_channel * g_stride_channel, mask=mask,
                              other=0.0).to(tl.float32)
        lam = tl.load(lam_ptr).to(tl.float32)
        x = tl.where(first_half, a_spatial, g_spatial)
        y = tl.where(first_half, g_spatial, a_spatial)
        f_spatial = x + tl.sigmoid(y)
        f_frequency = a_frequency + g_frequency
        out = lam * f_spatial + (1.0 - lam) * f_frequency
        out_pixels_ptr = (out_ptr + batch64 * out_stride_batch + out_channel * out_stride_channel
                          + row * out_stride_height + col * out_stride_width)
        tl.store(out_pixels_ptr, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _fusion_bwd_kernel(
        a_ptr,  # attention path a, (B, C', H, W), any strides
        g_ptr,  # gated path g, (B, C', H, W), any strides
        lam_ptr,  # lam, 0-dim tensor
        dout_ptr,  # gradient of the output, (B, 2C', H, W), any strides
        da_ptr,  # gradient of a (output), (B, C', H, W), same dtype as a
        dg_ptr,  # gradient of g (output), (B, C', H, W), same dtype as g
        dlam_partial_ptr,  # per-program partial sums of dlam, (B * C' * num_pixel_blocks,), fp32
        in_channels,  # C'
        height,  # H
        width,  # W
        num_pixel_blocks,  # cdiv(H * W, BLOCK_SIZE), programs per channel plane
        a_stride_batch,  # stride of a along B
        a_stride_channel,  # stride of a along C'
        a_stride_height,  # stride of a along H
        a_stride_width,  # stride of a along W
        g_stride_batch,  # stride of g along B
        g_stride_channel,  # stride of g along C'
        g_stride_height,  # stride of g along H
        g_stride_width,  # stride of g along W
        dout_stride_batch,  # stride of dout along B
        dout_stride_channel,  # stride of dout along 2C'
        dout_stride_height,  # stride of dout along H
        dout_stride_width,  # stride of dout along W
        da_stride_batch,  # stride of da along B
        da_stride_channel,  # stride of da along C'
        da_stride_height,  # stride of da along H
        da_stride_width,  # stride of da along W
        dg_stride_batch,  # stride of dg along B
        dg_stride_channel,  # stride of dg along C'
        dg_stride_height,  # stride of dg along H
        dg_stride_width,  # stride of dg along W
        BLOCK_SIZE: tl.constexpr,  # pixels per program
    ):
        batch_channel = tl.program_id(0)   # b * C' + j (input channel j)
        pixel_block = tl.program_id(1)
        batch = batch_channel // in_channels
        channel = batch_channel % in_channels
        pixel = pixel_block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = pixel < height * width
        row = pixel // width
        col = pixel % width
        batch64 = batch.to(tl.int64)
        a = tl.load(a_ptr + batch64 * a_stride_batch + channel * a_stride_channel
                    + row * a_stride_height + col * a_stride_width, mask=mask,
                    other=0.0).to(tl.float32)
        g = tl.load(g_ptr + batch64 * g_stride_batch + channel * g_stride_channel
                    + row * g_stride_height + col * g_stride_width, mask=mask,
                    other=0.0).to(tl.float32)
        dout_pixels_ptr = (dout_ptr + batch64 * dout_stride_batch + row * dout_stride_height
                           + col * dout_stride_width)
        # out[j] = a + sigmoid(g), out[j + C'] = g + sigmoid(a), out[2j], out[2j + 1] hold a + g
        dout_a_first = tl.load(dout_pixels_ptr + channel * dout_stride_channel, mask=mask,
                               other=0.0).to(tl.float32)
        dout_g_first = tl.load(dout_pixels_ptr + (channel + in_channels) * dout_stride_channel,
                               mask=mask, other=0.0).to(tl.float32)
        dout_frequency = (tl.load(dout_pixels_ptr + (2 * channel) * dout_stride_channel,
                                  mask=mask, other=0.0).to(tl.float32)
                          + tl.load(dout_pixels_ptr + (2 * channel + 1) * dout_stride_channel,
                                    mask=mask, other=0.0).to(tl.float32))
        lam = tl.load(lam_ptr).to(tl.float32)
        sigmoid_a = tl.sigmoid(a)
        sigmoid_g = tl.sigmoid(g)
        da = (lam * (dout_a_first + dout_g_first * sigmoid_a * (1.0 - sigmoid_a))
              + (1.0 - lam) * dout_frequency)
        dg = (lam * (dout_a_first * sigmoid_g * (1.0 - sigmoid_g) + dout_g_first)
              + (1.0 - lam) * dout_frequency)
        dlam_partial = (dout_a_first * (a + sigmoid_g) + dout_g_first * (g + sigmoid_a)
                        - dout_frequency * (a + g))
        dlam_partial = tl.where(mask, dlam_partial, 0.0)
        tl.store(da_ptr + batch64 * da_stride_batch + channel * da_stride_channel
                 + row * da_stride_height + col * da_stride_width,
                 da.to(da_ptr.dtype.element_ty), mask=mask)
        tl.store(dg_ptr + batch64 * dg_stride_batch + channel * dg_stride_channel
                 + row * dg_stride_height + col * dg_stride_width,
                 dg.to(dg_ptr.dtype.element_ty), mask=mask)
        tl.store(dlam_partial_ptr + batch_channel * num_pixel_blocks + pixel_block,
                 tl.sum(dlam_partial, axis=0))



def _block() -> int:
    return block_size(gpu=1024, interpreter=64)


def _fwd_triton(a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    b, ch, h, w = a.shape
    out = empty(b, 2 * ch, h, w, like=a, memory_format=_out_format(a))
    if out.numel() == 0:
        return out
    blk = _block()
    grid = (b * 2 * ch, triton.cdiv(h * w, blk))
    _fusion_fwd_kernel[grid](
        a,
        g,
        lam,
        out,
        2 * ch,
        ch,
        h,
        w,
        *a.stride(),  # a_stride_batch, a_stride_channel, a_stride_height, a_stride_width
        *g.stride(),  # g_stride_batch, g_stride_channel, g_stride_height, g_stride_width
        *out.stride(),  # out_stride_batch, out_stride_channel, out_stride_height, ..._width
        BLOCK_SIZE=blk,
    )
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
    _fusion_bwd_kernel[(b * ch, nblk)](
        a,
        g,
        lam,
        grad,
        da,
        dg,
        part,
        ch,
        h,
        w,
        nblk,
        *a.stride(),  # a_stride_batch, a_stride_channel, a_stride_height, a_stride_width
        *g.stride(),  # g_stride_batch, g_stride_channel, g_stride_height, g_stride_width
        *grad.stride(),  # dout_stride_batch, dout_stride_channel, dout_stride_height, ..._width
        *da.stride(),  # da_stride_batch, da_stride_channel, da_stride_height, da_stride_width
        *dg.stride(),  # dg_stride_batch, dg_stride_channel, dg_stride_height, dg_stride_width
        BLOCK_SIZE=blk,
    )
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


LIBRARY = "anyir_fusion"    # csrc/anyir_fusion.c


_I64, _PTR, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
SIGNATURES = {
    # (attention, gated, lam, output, pixels, channels, threads)
    "anyir_fusion_forward": [_PTR, _PTR, ctypes.c_float, _PTR, _I64, _I64, _INT],
    # (attention, gated, lam, grad_output, grad_attention, grad_gated, grad_lam, pixels,
    #  channels, threads)
    "anyir_fusion_backward": [_PTR, _PTR, ctypes.c_float, _PTR, _PTR, _PTR, _PTR, _I64, _I64,
                              _INT],
}


def _library() -> ctypes.CDLL:
    return _cpu_build.library(LIBRARY, SIGNATURES)


class _FusionCpu(torch.autograd.Function):
    """The compiled C kernel (csrc/anyir_fusion.c): float32 CPU tensors, channels_last output;
    one pass forward, one pass backward (da, dg and dlam). Grad of grad differentiates
    plain ops (``_fusion_differentiable``)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, g: torch.Tensor, lam: torch.Tensor):
        ctx.save_for_backward(a, g, lam)
        b, c, h, w = a.shape
        a_ = a.detach().contiguous(memory_format=torch.channels_last)
        g_ = g.detach().contiguous(memory_format=torch.channels_last)
        out = empty(b, 2 * c, h, w, like=a, memory_format=torch.channels_last)
        if out.numel():
            check_status(_library().anyir_fusion_forward(
                address(a_),
                address(g_),
                float(lam),
                address(out),
                b * h * w,
                c,
                torch.get_num_threads(),
            ), "anyir_fusion", "forward")
        return out

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        a, g, lam = ctx.saved_tensors
        if torch.is_grad_enabled():             # create_graph=True: grad of grad
            return tuple(reference_grads(_fusion_differentiable, (a, g, lam),
                                         ctx.needs_input_grad, dout))
        b, c, h, w = a.shape
        # named: a temporary passed as address(...) would be freed before the call
        a_ = a.detach().contiguous(memory_format=torch.channels_last)
        g_ = g.detach().contiguous(memory_format=torch.channels_last)
        dout_ = dout.contiguous(memory_format=torch.channels_last)
        da = empty(b, c, h, w, like=a, memory_format=torch.channels_last)
        dg = empty(b, c, h, w, like=a, memory_format=torch.channels_last)
        dlam = torch.zeros((), dtype=torch.float64)
        if da.numel():
            check_status(_library().anyir_fusion_backward(
                address(a_),
                address(g_),
                float(lam),
                address(dout_),
                address(da),
                address(dg),
                address(dlam),
                b * h * w,
                c,
                torch.get_num_threads(),
            ), "anyir_fusion", "backward")
        return da, dg, dlam.to(lam.dtype).reshape(lam.shape)


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
    choice = select(impl, a, g, cpu_kernel=LIBRARY)
    if choice == "triton":
        return _fusion_op(a, g, lam.reshape(()))
    if choice == "cpu" and cpu_applies(a, g, lam):
        return _FusionCpu.apply(a, g, lam)
    return anyir_fusion_reference(a, g, lam)
