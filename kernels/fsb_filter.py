"""Dynamic per-sample k x k low-pass filter of ClusIR's Frequency Self-Mining Block (FSB).

``fsb_filter(x, weight, kernel_size)``: x (B, C, H, W); weight (B, G, k*k) with
G channel groups (C divisible by G; channel c uses group c // (C/G)), taps in
row-major order (tap t = i*k + j covers offset (i - k//2, j - k//2)). Returns

    low[b, c, y, x] = sum_{i,j} weight[b, g(c), i*k + j] * xr[b, c, y + i - k//2, x + j - k//2]

where ``xr`` reads x with reflect padding at the borders (``F.pad(mode="reflect")``
semantics; maps narrower than the padding keep reflecting back and forth, so a
1-pixel-wide map reads its one pixel). The weights are usually softmax outputs
(non-negative, summing to 1) but the op does not assume it.

Paths: a PyTorch reference that never materialises the k*k unfolded tensor
(shift-and-add: one reflect pad, then k*k in-place multiply-adds of shifted
views with a (B, C, 1, 1) weight; FlopCounterMode counts 0, it is elementwise)
and a Triton kernel (one program per (b, c) plane and pixel block; forward
gathers the k*k taps with the reflect index map; backward scatters the input
gradient with atomic adds through the same map and reduces the weight gradient
per program, then one atomic add per tap) behind ``irblocks::fsb_filter``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from irblocks.registry import register

from . import _dispatch
from ._dispatch import select, triton_available
from ._op import kernel_op

__all__ = ["fsb_filter", "fsb_filter_reference", "reflect_index"]


def reflect_index(n: int, pad: int, device=None) -> torch.Tensor:
    """Indices of range(-pad, n + pad) after repeated reflection into [0, n)."""
    i = torch.arange(-pad, n + pad, device=device)
    if n == 1:
        return torch.zeros_like(i)
    m = 2 * (n - 1)
    i = i.abs() % m
    return torch.where(i >= n, m - i, i)


def _reflect_pad(x: torch.Tensor, p: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    if p == 0:
        return x
    if p < h and p < w:
        return F.pad(x, (p, p, p, p), mode="reflect")
    x = x.index_select(2, reflect_index(h, p, x.device))
    return x.index_select(3, reflect_index(w, p, x.device))


def _check(x: torch.Tensor, weight: torch.Tensor, k: int) -> int:
    if x.dim() != 4:
        raise ValueError(f"fsb_filter: expected x of shape B x C x H x W, got {tuple(x.shape)}")
    if k < 1 or k % 2 == 0:
        raise ValueError(f"fsb_filter: kernel_size must be odd and >= 1, got {k}")
    b, c = x.shape[:2]
    if weight.dim() != 3 or weight.shape[0] != b or weight.shape[2] != k * k:
        raise ValueError(f"fsb_filter: expected weight of shape B x G x k*k = {b} x G x {k * k}, "
                         f"got {tuple(weight.shape)}")
    g = weight.shape[1]
    if g < 1 or c % g:
        raise ValueError(f"fsb_filter: channel groups G={g} must divide C={c}")
    return g


def fsb_filter_reference(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Shift-and-add reference (no unfold). x (B, C, H, W); weight (B, G, k*k) -> (B, C, H, W)."""
    k = kernel_size
    g = _check(x, weight, k)
    b, c, h, w = x.shape
    p = k // 2
    xp = _reflect_pad(x, p)
    wc = weight.to(x.dtype)
    if g != c:
        wc = wc.repeat_interleave(c // g, dim=1)          # (B, C, k*k): tiny
    wc = wc.unsqueeze(-1).unsqueeze(-1)                   # (B, C, k*k, 1, 1)
    out = None
    for i in range(k):
        for j in range(k):
            t = i * k + j
            sl = xp[..., i:i + h, j:j + w]
            if out is None:
                out = sl * wc[:, :, t]
            else:
                out = out.addcmul_(sl, wc[:, :, t])
    return out


# ----------------------------------------------------------------------------- triton
_HAVE_TRITON = triton_available()   # the library works without Triton
if _HAVE_TRITON:
    import triton
    import triton.language as tl

if _HAVE_TRITON:
    @triton.jit
    def _mirror(i, n):
        m = tl.maximum(2 * (n - 1), 1)
        i = tl.abs(i) % m
        i = tl.where(i >= n, m - i, i)
        return tl.where(n == 1, 0, i)

    @triton.jit
    def _fsb_fwd_kernel(x_ptr, w_ptr, y_ptr, C, H, W, CPG,
                        sxb, sxc, sxh, sxw, swb, swg, swt, syb, syc, syh, syw,
                        K: tl.constexpr, BLOCK: tl.constexpr):
        bc = tl.program_id(0)
        pid = tl.program_id(1)
        b = bc // C
        c = bc % C
        g = c // CPG
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < H * W
        yy = offs // W
        xx = offs % W
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        xb = x_ptr + b * sxb + c * sxc
        wb = w_ptr + b * swb + g * swg
        for t in tl.static_range(K * K):
            wt = tl.load(wb + t * swt).to(tl.float32)
            sy = _mirror(yy + (t // K - K // 2), H)
            sx = _mirror(xx + (t % K - K // 2), W)
            v = tl.load(xb + sy * sxh + sx * sxw, mask=mask, other=0.0).to(tl.float32)
            acc += wt * v
        tl.store(y_ptr + b * syb + c * syc + yy * syh + xx * syw, acc.to(y_ptr.dtype.element_ty),
                 mask=mask)

    @triton.jit
    def _fsb_bwd_kernel(x_ptr, w_ptr, go_ptr, gx_ptr, gw_ptr, C, H, W, CPG,
                        sxb, sxc, sxh, sxw, swb, swg, swt, sgb, sgc, sgh, sgw,
                        sdb, sdc, sdh, sdw, G,
                        K: tl.constexpr, BLOCK: tl.constexpr):
        # gx: float32 (B, C, H, W) contiguous-or-not accumulation buffer (zeros);
        # gw: float32 (B, G, K*K) contiguous (zeros).
        bc = tl.program_id(0)
        pid = tl.program_id(1)
        b = bc // C
        c = bc % C
        g = c // CPG
        offs = pid * BLOCK + tl.arange(0, BLOCK)
        mask = offs < H * W
        yy = offs // W
        xx = offs % W
        go = tl.load(go_ptr + b * sgb + c * sgc + yy * sgh + xx * sgw, mask=mask,
                     other=0.0).to(tl.float32)
        xb = x_ptr + b * sxb + c * sxc
        wb = w_ptr + b * swb + g * swg
        gxb = gx_ptr + b * sdb + c * sdc
        for t in tl.static_range(K * K):
            wt = tl.load(wb + t * swt).to(tl.float32)
            sy = _mirror(yy + (t // K - K // 2), H)
            sx = _mirror(xx + (t % K - K // 2), W)
            src = sy * sxh + sx * sxw
            v = tl.load(xb + src, mask=mask, other=0.0).to(tl.float32)
            tl.atomic_add(gxb + sy * sdh + sx * sdw, wt * go, mask=mask)
            part = tl.sum(tl.where(mask, v * go, 0.0), axis=0)
            tl.atomic_add(gw_ptr + (b * G + g) * (K * K) + t, part)



def _fmt(x: torch.Tensor):
    return torch.channels_last if (x.is_contiguous(memory_format=torch.channels_last)
                                   and not x.is_contiguous()) else torch.contiguous_format


def _block() -> int:
    return _dispatch.block_size(gpu=512, interpreter=128)


def _fsb_fake(x, weight, kernel_size):
    return torch.empty_like(x, memory_format=_fmt(x))


def _fsb_bwd_fake(grad, x, weight, kernel_size):
    return torch.empty_like(x, memory_format=_fmt(x)), torch.empty_like(weight)


@kernel_op("fsb_filter_backward", fake=_fsb_bwd_fake)   # elementwise multiply-adds: 0 FLOPs
def _fsb_bwd_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                kernel_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = x.shape
    g = weight.shape[1]
    gx = torch.empty(b, c, h, w, device=x.device, dtype=torch.float32,
                     memory_format=_fmt(x)).zero_()
    gw = torch.zeros(b, g, kernel_size * kernel_size, device=x.device, dtype=torch.float32)
    if x.numel():
        blk = _block()
        _fsb_bwd_kernel[(b * c, triton.cdiv(h * w, blk))](
            x, weight, grad, gx, gw, c, h, w, c // g, *x.stride(), *weight.stride(), *grad.stride(),
            *gx.stride(), g, K=kernel_size, BLOCK=blk)
    return gx.to(x.dtype), gw.to(weight.dtype)


def _setup(ctx, inputs, output):
    x, weight, k = inputs
    ctx.save_for_backward(x, weight)
    ctx.k = k


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    gx, gw = _fsb_bwd_op(grad, x, weight, ctx.k)
    return gx, gw, None


@kernel_op("fsb_filter", fake=_fsb_fake, backward=_backward, setup_context=_setup)
def _fsb_op(x: torch.Tensor, weight: torch.Tensor, kernel_size: int) -> torch.Tensor:
    b, c, h, w = x.shape
    g = weight.shape[1]
    y = _dispatch.empty(b, c, h, w, like=x, memory_format=_fmt(x))
    if y.numel():
        blk = _block()
        _fsb_fwd_kernel[(b * c, triton.cdiv(h * w, blk))](
            x, weight, y, c, h, w, c // g, *x.stride(), *weight.stride(), *y.stride(),
            K=kernel_size, BLOCK=blk)
    return y


@register("kernel", "fsb_filter")
def fsb_filter(x: torch.Tensor, weight: torch.Tensor, kernel_size: int,
               impl: str | None = None) -> torch.Tensor:
    """Dynamic k x k filter with reflect borders.

    x (B, C, H, W); weight (B, G, k*k) -> (B, C, H, W)."""
    _check(x, weight, kernel_size)
    if select(impl, x, weight) == "triton" and _HAVE_TRITON:
        return _fsb_op(x, weight, kernel_size)
    return fsb_filter_reference(x, weight, kernel_size)
