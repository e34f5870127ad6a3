"""GatedDA temperature statistics and gate (AnyIR Algorithm 1, steps 2-4 and 7).

Given the normalised input ``f`` (B, C, H, W), the depthwise-convolved alpha
branch ``alpha`` (B, A, H, W) and the learnable temperature ``tau`` (C values)::

    mu, sigma = spatial mean and sqrt(population variance + eps) of f, per (b, c)
    tau_adj   = tau * sigmoid(mu + sigma)                        # (B, C)
    out       = alpha * (1 + tau_adj[:, j mod C])                # released code: tau_adj tiled
                                                                  # along channels, cut to A

Paths:
* reference: :func:`sample_moments` (mean, then the centred variance: two passes;
  ``torch.var_mean`` over H, W is several times slower on CPU; one-pass backward),
  :func:`tau_gate` (the gate and its tiling, shared with GatedDA's folded execution) and
  one ``addcmul`` (torch ops; torch.compile / FlopCounterMode see through them);
* triton: one program per (b, c) plane computes the statistics (two sweeps over
  the plane for a numerically safe variance) and then scales every alpha plane
  j with j mod C == c; the backward does the same per plane: the reduction
  sum(grad * alpha), dalpha, then df = dz / N + dz (f - mu) / (N sigma).
  Custom op ``irblocks::gated_da_modulate`` with fake, autograd, zero FLOPs.
"""
from __future__ import annotations

import torch

from irblocks.registry import register

from ._dispatch import block_size, empty, select, triton_available
from ._op import kernel_op

__all__ = ["gated_da_modulate", "gated_da_modulate_reference", "gated_da_modulate_naive",
           "sample_moments", "tau_gate",
           "bytes_moved"]


# ----------------------------------------------------------------------------- references
def gated_da_modulate_naive(f: torch.Tensor, alpha: torch.Tensor, tau: torch.Tensor,
                            eps: float = 1e-6) -> torch.Tensor:
    """The released code's formulation (separate mean, squared deviation, repeat, slice)."""
    tau = tau.reshape(1, -1, 1, 1)
    mu = f.mean(dim=(2, 3), keepdim=True)
    var = ((f - mu) ** 2).mean(dim=(2, 3), keepdim=True)
    sigma = torch.sqrt(var + eps)
    tau_adj = tau * torch.sigmoid(mu + sigma)
    if alpha.shape[1] != tau_adj.shape[1]:
        rep = (alpha.shape[1] + tau_adj.shape[1] - 1) // tau_adj.shape[1]
        tau_adj = tau_adj.repeat(1, rep, 1, 1)[:, :alpha.shape[1]]
    return alpha * (1.0 + tau_adj)


class _SampleMoments(torch.autograd.Function):
    """Mean and population variance of x over one dimension.

    Forward: two passes (mean, then the centred sum of squares: numerically safe, and several
    times faster on CPU than ``torch.var_mean``'s Welford over a strided axis). Backward:
    dx = dmean / N + 2 dvar (x - mean) / N in one ``addcmul`` pass, without saving x - mean.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(dim)
        var = torch.linalg.vector_norm(x - mean.unsqueeze(dim), dim=dim).square() / x.shape[dim]
        return mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output[0])
        ctx.dim = inputs[1]

    @staticmethod
    def backward(ctx, dmean: torch.Tensor | None, dvar: torch.Tensor | None):
        x, mean = ctx.saved_tensors
        dim = ctx.dim
        dmean = torch.zeros_like(mean) if dmean is None else dmean
        dvar = torch.zeros_like(mean) if dvar is None else dvar
        slope = (2.0 / x.shape[dim]) * dvar
        return torch.addcmul((dmean / x.shape[dim] - slope * mean).unsqueeze(dim), x,
                             slope.unsqueeze(dim)), None


def sample_moments(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population variance of ``x`` over ``dim`` (both with ``dim`` removed)."""
    return _SampleMoments.apply(x, dim)


def tau_gate(mean: torch.Tensor, var: torch.Tensor, tau: torch.Tensor, channels: int,
             eps: float = 1e-6) -> torch.Tensor:
    """tau * sigmoid(mu + sqrt(var + eps)) from the (B, C) statistics of F_hat, tiled along
    ``channels`` output channels as the released code does (channel j takes j mod C):
    -> (B, channels)."""
    c = mean.shape[1]
    tau_adj = tau.reshape(1, c) * torch.sigmoid(mean + torch.sqrt(var + eps))
    if channels != c:
        tau_adj = tau_adj.index_select(1, torch.arange(channels, device=mean.device) % c)
    return tau_adj


def gated_da_modulate_reference(f: torch.Tensor, alpha: torch.Tensor, tau: torch.Tensor,
                                eps: float = 1e-6) -> torch.Tensor:
    b, c = f.shape[:2]
    a = alpha.shape[1]
    if f.stride(1) == 1 and not f.is_contiguous():          # channels_last: a (B, N, C) view
        mean, var = sample_moments(f.permute(0, 2, 3, 1).reshape(b, -1, c), dim=1)
    else:
        mean, var = sample_moments(f.reshape(b, c, -1), dim=2)
    tau_adj = tau_gate(mean, var, tau, a, eps)
    return torch.addcmul(alpha, alpha, tau_adj.to(alpha.dtype).reshape(b, a, 1, 1))


# ----------------------------------------------------------------------------- Triton
_HAVE_TRITON = triton_available()   # the library works without Triton
if _HAVE_TRITON:
    import triton
    import triton.language as tl

if _HAVE_TRITON:
    @triton.jit
    def _gda_fwd_kernel(
        f_ptr,  # normalised input f, (B, C, H, W), any strides
        alpha_ptr,  # alpha branch, (B, A, H, W), any strides
        tau_ptr,  # learnable temperature, (C,), contiguous
        out_ptr,  # output alpha * (1 + tau_adj), (B, A, H, W), same dtype as alpha
        stats_ptr,  # saved statistics [mu; sigma], (2, B, C), float32, contiguous
        channels,  # C
        alpha_channels,  # A (alpha plane j uses tau_adj of channel j mod C)
        height,  # H
        width,  # W
        num_planes,  # B * C, the offset of sigma in stats
        eps,  # added to the variance, float32
        f_stride_batch,  # stride of f along B
        f_stride_channel,  # stride of f along C
        f_stride_height,  # stride of f along H
        f_stride_width,  # stride of f along W
        alpha_stride_batch,  # stride of alpha along B
        alpha_stride_channel,  # stride of alpha along A
        alpha_stride_height,  # stride of alpha along H
        alpha_stride_width,  # stride of alpha along W
        out_stride_batch,  # stride of out along B
        out_stride_channel,  # stride of out along A
        out_stride_height,  # stride of out along H
        out_stride_width,  # stride of out along W
        BLOCK_SIZE: tl.constexpr,  # pixels per sweep step
    ):
        plane = tl.program_id(0)               # b * C + c
        batch = plane // channels
        channel = plane % channels
        num_pixels = height * width
        batch64 = batch.to(tl.int64)
        f_plane_ptr = f_ptr + batch64 * f_stride_batch + channel * f_stride_channel
        f_sum = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        for start in range(0, num_pixels, BLOCK_SIZE):
            pixel = start + tl.arange(0, BLOCK_SIZE)
            mask = pixel < num_pixels
            f_sum += tl.load(f_plane_ptr + (pixel // width) * f_stride_height
                             + (pixel % width) * f_stride_width, mask=mask,
                             other=0.0).to(tl.float32)
        mu = tl.sum(f_sum, axis=0) / num_pixels
        squared_deviation_sum = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        for start in range(0, num_pixels, BLOCK_SIZE):
            pixel = start + tl.arange(0, BLOCK_SIZE)
            mask = pixel < num_pixels
            f = tl.load(f_plane_ptr + (pixel // width) * f_stride_height
                        + (pixel % width) * f_stride_width, mask=mask, other=0.0).to(tl.float32)
            deviation = tl.where(mask, f - mu, 0.0)
            squared_deviation_sum += deviation * deviation
        sigma = tl.sqrt(tl.sum(squared_deviation_sum, axis=0) / num_pixels + eps)
        tau = tl.load(tau_ptr + channel).to(tl.float32)
        scale = 1.0 + tau * tl.sigmoid(mu + sigma)
        tl.store(stats_ptr + plane, mu)
        tl.store(stats_ptr + num_planes + plane, sigma)
        for alpha_channel in range(channel, alpha_channels, channels):   # tiled onto channel
            alpha_plane_ptr = (alpha_ptr + batch64 * alpha_stride_batch
                               + alpha_channel * alpha_stride_channel)
            out_plane_ptr = (out_ptr + batch64 * out_stride_batch
                             + alpha_channel * out_stride_channel)
            for start in range(0, num_pixels, BLOCK_SIZE):
                pixel = start + tl.arange(0, BLOCK_SIZE)
                mask = pixel < num_pixels
                row = pixel // width
                col = pixel % width
                alpha = tl.load(alpha_plane_ptr + row * alpha_stride_height
                                + col * alpha_stride_width, mask=mask, other=0.0).to(tl.float32)
                tl.store(out_plane_ptr + row * out_stride_height + col * out_stride_width,
                         (alpha * scale).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _gda_bwd_kernel(
        f_ptr,  # normalised input f, (B, C, H, W), any strides
        alpha_ptr,  # alpha branch, (B, A, H, W), any strides
        tau_ptr,  # learnable temperature, (C,), contiguous
        stats_ptr,  # forward statistics [mu; sigma], (2, B, C), float32, contiguous
        dout_ptr,  # gradient of the output, (B, A, H, W), any strides
        df_ptr,  # gradient of f (output), (B, C, H, W), same dtype as f
        dalpha_ptr,  # gradient of alpha (output), (B, A, H, W), same dtype as alpha
        dtau_partial_ptr,  # dtau per (b, c) (summed over B by the caller), (B, C), float32
        channels,  # C
        alpha_channels,  # A (alpha plane j uses tau_adj of channel j mod C)
        height,  # H
        width,  # W
        num_planes,  # B * C, the offset of sigma in stats
        f_stride_batch,  # stride of f along B
        f_stride_channel,  # stride of f along C
        f_stride_height,  # stride of f along H
        f_stride_width,  # stride of f along W
        alpha_stride_batch,  # stride of alpha along B
        alpha_stride_channel,  # stride of alpha along A
        alpha_stride_height,  # stride of alpha along H
        alpha_stride_width,  # stride of alpha along W
        dout_stride_batch,  # stride of dout along B
        dout_stride_channel,  # stride of dout along A
        dout_stride_height,  # stride of dout along H
        dout_stride_width,  # stride of dout along W
        df_stride_batch,  # stride of df along B
        df_stride_channel,  # stride of df along C
        df_stride_height,  # stride of df along H
        df_stride_width,  # stride of df along W
        dalpha_stride_batch,  # stride of dalpha along B
        dalpha_stride_channel,  # stride of dalpha along A
        dalpha_stride_height,  # stride of dalpha along H
        dalpha_stride_width,  # stride of dalpha along W
        BLOCK_SIZE: tl.constexpr,  # pixels per sweep step
    ):
        plane = tl.program_id(0)               # b * C + c
        batch = plane // channels
        channel = plane % channels
        num_pixels = height * width
        batch64 = batch.to(tl.int64)
        mu = tl.load(stats_ptr + plane)
        sigma = tl.load(stats_ptr + num_planes + plane)
        tau = tl.load(tau_ptr + channel).to(tl.float32)
        gate = tl.sigmoid(mu + sigma)
        scale = 1.0 + tau * gate
        dtau_adj_sum = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        for alpha_channel in range(channel, alpha_channels, channels):
            alpha_plane_ptr = (alpha_ptr + batch64 * alpha_stride_batch
                               + alpha_channel * alpha_stride_channel)
            dout_plane_ptr = (dout_ptr + batch64 * dout_stride_batch
                              + alpha_channel * dout_stride_channel)
            dalpha_plane_ptr = (dalpha_ptr + batch64 * dalpha_stride_batch
                                + alpha_channel * dalpha_stride_channel)
            for start in range(0, num_pixels, BLOCK_SIZE):
                pixel = start + tl.arange(0, BLOCK_SIZE)
                mask = pixel < num_pixels
                row = pixel // width
                col = pixel % width
                alpha = tl.load(alpha_plane_ptr + row * alpha_stride_height
                                + col * alpha_stride_width, mask=mask, other=0.0).to(tl.float32)
                dout = tl.load(dout_plane_ptr + row * dout_stride_height
                               + col * dout_stride_width, mask=mask, other=0.0).to(tl.float32)
                dtau_adj_sum += dout * alpha
                tl.store(dalpha_plane_ptr + row * dalpha_stride_height
                         + col * dalpha_stride_width,
                         (dout * scale).to(dalpha_ptr.dtype.element_ty), mask=mask)
        dtau_adj = tl.sum(dtau_adj_sum, axis=0)
        tl.store(dtau_partial_ptr + plane, dtau_adj * gate)
        dz = dtau_adj * tau * gate * (1.0 - gate)   # gradient of z = mu + sigma
        df_from_mu = dz / num_pixels
        df_from_sigma = dz / (num_pixels * sigma)
        f_plane_ptr = f_ptr + batch64 * f_stride_batch + channel * f_stride_channel
        df_plane_ptr = df_ptr + batch64 * df_stride_batch + channel * df_stride_channel
        for start in range(0, num_pixels, BLOCK_SIZE):
            pixel = start + tl.arange(0, BLOCK_SIZE)
            mask = pixel < num_pixels
            row = pixel // width
            col = pixel % width
            f = tl.load(f_plane_ptr + row * f_stride_height + col * f_stride_width, mask=mask,
                        other=0.0).to(tl.float32)
            tl.store(df_plane_ptr + row * df_stride_height + col * df_stride_width,
                     (df_from_mu + df_from_sigma * (f - mu)).to(df_ptr.dtype.element_ty),
                     mask=mask)



def _fmt(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                   and not x.is_contiguous()) else torch.contiguous_format


def _block() -> int:
    return block_size(gpu=1024, interpreter=64)


def _fwd_triton(f, alpha, tau, eps):
    b, c, h, w = f.shape
    a = alpha.shape[1]
    out = empty(b, a, h, w, like=alpha, memory_format=_fmt(alpha))
    stats = empty(2, b, c, like=f, dtype=torch.float32)
    if f.numel() == 0:
        return out, stats
    tau = tau.reshape(c)
    _gda_fwd_kernel[(b * c,)](
        f,
        alpha,
        tau,
        out,
        stats,
        c,
        a,
        h,
        w,
        b * c,
        float(eps),
        *f.stride(),  # f_stride_batch, f_stride_channel, f_stride_height, f_stride_width
        *alpha.stride(),  # alpha_stride_batch, alpha_stride_channel, ..._height, ..._width
        *out.stride(),  # out_stride_batch, out_stride_channel, out_stride_height, ..._width
        BLOCK_SIZE=_block(),
    )
    return out, stats


def _bwd_triton(grad, f, alpha, tau, stats):
    b, c, h, w = f.shape
    a = alpha.shape[1]
    df = empty(b, c, h, w, like=f, memory_format=_fmt(f))
    dal = empty(b, a, h, w, like=alpha, memory_format=_fmt(alpha))
    dtau = empty(b, c, like=f, dtype=torch.float32)
    if f.numel() == 0:
        return df.zero_(), dal.zero_(), torch.zeros_like(tau)
    _gda_bwd_kernel[(b * c,)](
        f,
        alpha,
        tau.reshape(c),
        stats,
        grad,
        df,
        dal,
        dtau,
        c,
        a,
        h,
        w,
        b * c,
        *f.stride(),  # f_stride_batch, f_stride_channel, f_stride_height, f_stride_width
        *alpha.stride(),  # alpha_stride_batch, alpha_stride_channel, ..._height, ..._width
        *grad.stride(),  # dout_stride_batch, dout_stride_channel, dout_stride_height, ..._width
        *df.stride(),  # df_stride_batch, df_stride_channel, df_stride_height, df_stride_width
        *dal.stride(),  # dalpha_stride_batch, dalpha_stride_channel, ..._height, ..._width
        BLOCK_SIZE=_block(),
    )
    return df, dal, dtau.sum(0).to(tau.dtype).reshape(tau.shape)


# ----------------------------------------------------------------------------- custom op
def _gda_fake(f, alpha, tau, eps):
    b, c = f.shape[:2]
    return (torch.empty_like(alpha, memory_format=_fmt(alpha)),
            f.new_empty((2, b, c), dtype=torch.float32))


def _gda_bwd_fake(grad, f, alpha, tau, stats):
    return (torch.empty_like(f, memory_format=_fmt(f)),
            torch.empty_like(alpha, memory_format=_fmt(alpha)), torch.empty_like(tau))


# statistics and scaling are element-wise / reductions: 0 FLOPs
@kernel_op("gated_da_modulate_backward", fake=_gda_bwd_fake)
def _gda_bwd_op(grad: torch.Tensor, f: torch.Tensor, alpha: torch.Tensor, tau: torch.Tensor,
                stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_triton(grad, f, alpha, tau, stats)


def _setup_context(ctx, inputs, output):
    f, alpha, tau, eps = inputs
    ctx.save_for_backward(f, alpha, tau, output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_out, grad_stats):
    f, alpha, tau, stats = ctx.saved_tensors
    df, dal, dtau = _gda_bwd_op(grad_out, f, alpha, tau, stats)
    return df, dal, dtau, None


@kernel_op("gated_da_modulate", fake=_gda_fake, backward=_backward, setup_context=_setup_context)
def _gda_op(f: torch.Tensor, alpha: torch.Tensor, tau: torch.Tensor,
            eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _fwd_triton(f, alpha, tau, eps)


# ----------------------------------------------------------------------------- entry point
def bytes_moved(shape_f, alpha_channels: int, itemsize: int = 4) -> dict:
    """Forward bytes: fused (f read twice, alpha read once, out written once) vs the released
    code's unfused ops (mean, sub, pow, mean, add/sqrt/sigmoid on B x C, repeat, slice, 1+, mul)."""
    b, c, h, w = shape_f
    nf = b * c * h * w * itemsize
    na = b * alpha_channels * h * w * itemsize
    fused = 2 * nf + 2 * na
    unfused = nf + (nf + 2 * nf) + 2 * nf + nf + (na + na)
    return {"fused": fused, "unfused": unfused}


@register("kernel", "gated_da_modulate")
def gated_da_modulate(f: torch.Tensor, alpha: torch.Tensor, tau: torch.Tensor, eps: float = 1e-6,
                      impl: str | None = None) -> torch.Tensor:
    """alpha * (1 + tile(tau * sigmoid(mean_hw(f) + sqrt(var_hw(f) + eps)))).

    f: (B, C, H, W); alpha: (B, A, H, W), any A >= 1 (tau_adj tiled along channels and
    cut to A, as released); tau: C values (e.g. (1, C, 1, 1)). Any strides. Returns
    (B, A, H, W); grads for f, alpha and tau.
    """
    if (f.dim() != 4 or alpha.dim() != 4 or f.shape[0] != alpha.shape[0]
            or f.shape[2:] != alpha.shape[2:]):
        raise ValueError("gated_da_modulate: f (B x C x H x W) and alpha (B x A x H x W) must "
                         f"share B, H, W, got {tuple(f.shape)} and {tuple(alpha.shape)}")
    if tau.numel() != f.shape[1]:
        raise ValueError(f"gated_da_modulate: tau must hold C={f.shape[1]} values, got "
                         f"{tau.numel()}")
    if select(impl, f, alpha, tau) == "triton":
        return _gda_op(f, alpha, tau, float(eps))[0]
    return gated_da_modulate_reference(f, alpha, tau, eps)
