"""GatedDA temperature statistics and gate (AnyIR Algorithm 1, steps 2-4 and 7).

Given the normalised input ``f`` (B, C, H, W), the depthwise-convolved alpha
branch ``alpha`` (B, A, H, W) and the learnable temperature ``tau`` (C values)::

    mu, sigma = spatial mean and sqrt(population variance + eps) of f, per (b, c)
    tau_adj   = tau * sigmoid(mu + sigma)                        # (B, C)
    out       = alpha * (1 + tau_adj[:, j mod C])                # released code: tau_adj tiled
                                                                  # along channels, cut to A

Paths:
* reference: mean, then the centred variance (two passes; ``torch.var_mean``
  over H, W is several times slower on CPU), an index_select for the tiling and
  one ``addcmul`` (plain torch; torch.compile / FlopCounterMode see through it);
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


def gated_da_modulate_reference(f: torch.Tensor, alpha: torch.Tensor, tau: torch.Tensor,
                                eps: float = 1e-6) -> torch.Tensor:
    b, c = f.shape[:2]
    a = alpha.shape[1]
    # two-pass mean / centred variance: torch.var_mean over (H, W) is ~6x slower on CPU
    mu = f.mean(dim=(2, 3), keepdim=True)
    var = (f - mu).square().mean(dim=(2, 3))
    tau_adj = tau.reshape(1, c) * torch.sigmoid(mu.reshape(b, c) + torch.sqrt(var + eps))
    if a != c:
        idx = torch.arange(a, device=f.device) % c
        tau_adj = tau_adj.index_select(1, idx)
    return torch.addcmul(alpha, alpha, tau_adj.to(alpha.dtype).reshape(b, a, 1, 1))


# ----------------------------------------------------------------------------- Triton
_HAVE_TRITON = triton_available()   # the library works without Triton
if _HAVE_TRITON:
    import triton
    import triton.language as tl

if _HAVE_TRITON:
    @triton.jit
    def _gda_fwd_kernel(f_ptr, al_ptr, tau_ptr, out_ptr, stats_ptr,
                        C, A, H, W, BC, eps,
                        sfb, sfc, sfh, sfw, sab, sac, sah, saw, sob, soc, soh, sow,
                        BLOCK: tl.constexpr):
        pid = tl.program_id(0)                 # b * C + c
        b = pid // C
        c = pid % C
        n = H * W
        b64 = b.to(tl.int64)
        pf = f_ptr + b64 * sfb + c * sfc
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            acc += tl.load(pf + (offs // W) * sfh + (offs % W) * sfw, mask=m,
                           other=0.0).to(tl.float32)
        mu = tl.sum(acc, axis=0) / n
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            x = tl.load(pf + (offs // W) * sfh + (offs % W) * sfw, mask=m, other=0.0).to(tl.float32)
            d = tl.where(m, x - mu, 0.0)
            acc2 += d * d
        sigma = tl.sqrt(tl.sum(acc2, axis=0) / n + eps)
        tau = tl.load(tau_ptr + c).to(tl.float32)
        scale = 1.0 + tau * tl.sigmoid(mu + sigma)
        tl.store(stats_ptr + pid, mu)
        tl.store(stats_ptr + BC + pid, sigma)
        for j in range(c, A, C):               # alpha planes tiled onto channel c
            pa = al_ptr + b64 * sab + j * sac
            po = out_ptr + b64 * sob + j * soc
            for start in range(0, n, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                m = offs < n
                hh = offs // W
                ww = offs % W
                x = tl.load(pa + hh * sah + ww * saw, mask=m, other=0.0).to(tl.float32)
                tl.store(po + hh * soh + ww * sow, (x * scale).to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _gda_bwd_kernel(f_ptr, al_ptr, tau_ptr, stats_ptr, go_ptr, df_ptr, da_ptr, dtau_ptr,
                        C, A, H, W, BC,
                        sfb, sfc, sfh, sfw, sab, sac, sah, saw, sgb, sgc, sgh, sgw,
                        sdfb, sdfc, sdfh, sdfw, sdab, sdac, sdah, sdaw,
                        BLOCK: tl.constexpr):
        pid = tl.program_id(0)                 # b * C + c
        b = pid // C
        c = pid % C
        n = H * W
        b64 = b.to(tl.int64)
        mu = tl.load(stats_ptr + pid)
        sigma = tl.load(stats_ptr + BC + pid)
        tau = tl.load(tau_ptr + c).to(tl.float32)
        delta = tl.sigmoid(mu + sigma)
        scale = 1.0 + tau * delta
        r = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(c, A, C):
            pa = al_ptr + b64 * sab + j * sac
            pg = go_ptr + b64 * sgb + j * sgc
            pd = da_ptr + b64 * sdab + j * sdac
            for start in range(0, n, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                m = offs < n
                hh = offs // W
                ww = offs % W
                x = tl.load(pa + hh * sah + ww * saw, mask=m, other=0.0).to(tl.float32)
                gr = tl.load(pg + hh * sgh + ww * sgw, mask=m, other=0.0).to(tl.float32)
                r += gr * x
                tl.store(pd + hh * sdah + ww * sdaw, (gr * scale).to(da_ptr.dtype.element_ty),
                         mask=m)
        d_tadj = tl.sum(r, axis=0)
        tl.store(dtau_ptr + pid, d_tadj * delta)
        dz = d_tadj * tau * delta * (1.0 - delta)
        k0 = dz / n
        k1 = dz / (n * sigma)
        pf = f_ptr + b64 * sfb + c * sfc
        pdf = df_ptr + b64 * sdfb + c * sdfc
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            m = offs < n
            hh = offs // W
            ww = offs % W
            x = tl.load(pf + hh * sfh + ww * sfw, mask=m, other=0.0).to(tl.float32)
            tl.store(pdf + hh * sdfh + ww * sdfw, (k0 + k1 * (x - mu)).to(df_ptr.dtype.element_ty),
                     mask=m)



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
    _gda_fwd_kernel[(b * c,)](f, alpha, tau, out, stats, c, a, h, w, b * c, float(eps),
                              *f.stride(), *alpha.stride(), *out.stride(), BLOCK=_block())
    return out, stats


def _bwd_triton(grad, f, alpha, tau, stats):
    b, c, h, w = f.shape
    a = alpha.shape[1]
    df = empty(b, c, h, w, like=f, memory_format=_fmt(f))
    dal = empty(b, a, h, w, like=alpha, memory_format=_fmt(alpha))
    dtau = empty(b, c, like=f, dtype=torch.float32)
    if f.numel() == 0:
        return df.zero_(), dal.zero_(), torch.zeros_like(tau)
    _gda_bwd_kernel[(b * c,)](f, alpha, tau.reshape(c), stats, grad, df, dal, dtau, c, a, h, w,
                              b * c, *f.stride(), *alpha.stride(), *grad.stride(), *df.stride(),
                              *dal.stride(), BLOCK=_block())
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
