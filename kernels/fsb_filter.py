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
    def _reflect(
        index,  # int32 indices in [-K//2, size + K//2), a block
        size,  # H or W, the axis length
    ):
        """``index`` after repeated reflection into [0, size) (``reflect_index``)."""
        period = tl.maximum(2 * (size - 1), 1)
        index = tl.abs(index) % period
        index = tl.where(index >= size, period - index, index)
        return tl.where(size == 1, 0, index)

    @triton.jit
    def _fsb_fwd_kernel(
        x_ptr,  # input, (B, C, H, W), any strides
        weight_ptr,  # filter taps, (B, G, K * K), any strides
        y_ptr,  # output, (B, C, H, W), same dtype as x
        channels,  # C
        height,  # H
        width,  # W
        channels_per_group,  # C / G: channel c uses group c // channels_per_group
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        weight_stride_batch,  # stride of weight along B
        weight_stride_group,  # stride of weight along G
        weight_stride_tap,  # stride of weight along K * K
        y_stride_batch,  # stride of y along B
        y_stride_channel,  # stride of y along C
        y_stride_height,  # stride of y along H
        y_stride_width,  # stride of y along W
        KERNEL_SIZE: tl.constexpr,  # K, odd
        BLOCK_SIZE: tl.constexpr,  # pixels per program
    ):
        # grid: (B * C planes, pixel blocks)
        batch_channel = tl.program_id(0)
        pixel_block = tl.program_id(1)
        batch = batch_channel // channels
        channel = batch_channel % channels
        group = channel // channels_per_group
        pixel = pixel_block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = pixel < height * width
        row = pixel // width
        col = pixel % width
        acc = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        x_plane_ptr = x_ptr + batch * x_stride_batch + channel * x_stride_channel
        weight_row_ptr = weight_ptr + batch * weight_stride_batch + group * weight_stride_group
        for tap in tl.static_range(KERNEL_SIZE * KERNEL_SIZE):
            tap_weight = tl.load(weight_row_ptr + tap * weight_stride_tap).to(tl.float32)
            src_row = _reflect(row + (tap // KERNEL_SIZE - KERNEL_SIZE // 2), height)
            src_col = _reflect(col + (tap % KERNEL_SIZE - KERNEL_SIZE // 2), width)
            x = tl.load(x_plane_ptr + src_row * x_stride_height + src_col * x_stride_width,
                        mask=mask, other=0.0).to(tl.float32)
            acc += tap_weight * x
        tl.store(y_ptr + batch * y_stride_batch + channel * y_stride_channel
                 + row * y_stride_height + col * y_stride_width,
                 acc.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _fsb_bwd_kernel(
        x_ptr,  # forward input, (B, C, H, W), any strides
        weight_ptr,  # filter taps, (B, G, K * K), any strides
        dy_ptr,  # gradient of the output, (B, C, H, W), any strides
        dx_ptr,  # gradient of x, (B, C, H, W), float32, zero-filled (atomic accumulation)
        dweight_ptr,  # gradient of weight, (B, G, K * K), float32, contiguous, zero-filled
        channels,  # C
        height,  # H
        width,  # W
        channels_per_group,  # C / G: channel c uses group c // channels_per_group
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        weight_stride_batch,  # stride of weight along B
        weight_stride_group,  # stride of weight along G
        weight_stride_tap,  # stride of weight along K * K
        dy_stride_batch,  # stride of dy along B
        dy_stride_channel,  # stride of dy along C
        dy_stride_height,  # stride of dy along H
        dy_stride_width,  # stride of dy along W
        dx_stride_batch,  # stride of dx along B
        dx_stride_channel,  # stride of dx along C
        dx_stride_height,  # stride of dx along H
        dx_stride_width,  # stride of dx along W
        groups,  # G, channel groups of weight
        KERNEL_SIZE: tl.constexpr,  # K, odd
        BLOCK_SIZE: tl.constexpr,  # pixels per program
    ):
        # grid: (B * C planes, pixel blocks); dx and dweight gather through atomic adds
        batch_channel = tl.program_id(0)
        pixel_block = tl.program_id(1)
        batch = batch_channel // channels
        channel = batch_channel % channels
        group = channel // channels_per_group
        pixel = pixel_block * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        mask = pixel < height * width
        row = pixel // width
        col = pixel % width
        dy = tl.load(dy_ptr + batch * dy_stride_batch + channel * dy_stride_channel
                     + row * dy_stride_height + col * dy_stride_width, mask=mask,
                     other=0.0).to(tl.float32)
        x_plane_ptr = x_ptr + batch * x_stride_batch + channel * x_stride_channel
        weight_row_ptr = weight_ptr + batch * weight_stride_batch + group * weight_stride_group
        dx_plane_ptr = dx_ptr + batch * dx_stride_batch + channel * dx_stride_channel
        for tap in tl.static_range(KERNEL_SIZE * KERNEL_SIZE):
            tap_weight = tl.load(weight_row_ptr + tap * weight_stride_tap).to(tl.float32)
            src_row = _reflect(row + (tap // KERNEL_SIZE - KERNEL_SIZE // 2), height)
            src_col = _reflect(col + (tap % KERNEL_SIZE - KERNEL_SIZE // 2), width)
            x_offset = src_row * x_stride_height + src_col * x_stride_width
            x = tl.load(x_plane_ptr + x_offset, mask=mask, other=0.0).to(tl.float32)
            tl.atomic_add(dx_plane_ptr + src_row * dx_stride_height + src_col * dx_stride_width,
                          tap_weight * dy, mask=mask)
            dweight_partial = tl.sum(tl.where(mask, x * dy, 0.0), axis=0)
            tl.atomic_add(dweight_ptr + (batch * groups + group) * (KERNEL_SIZE * KERNEL_SIZE)
                          + tap, dweight_partial)



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
            x,
            weight,
            grad,
            gx,
            gw,
            c,
            h,
            w,
            c // g,
            *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, x_stride_width
            *weight.stride(),  # weight_stride_batch, weight_stride_group, weight_stride_tap
            *grad.stride(),  # dy_stride_batch, dy_stride_channel, dy_stride_height, ..._width
            *gx.stride(),  # dx_stride_batch, dx_stride_channel, dx_stride_height, ..._width
            g,
            KERNEL_SIZE=kernel_size,
            BLOCK_SIZE=blk,
        )
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
            x,
            weight,
            y,
            c,
            h,
            w,
            c // g,
            *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, x_stride_width
            *weight.stride(),  # weight_stride_batch, weight_stride_group, weight_stride_tap
            *y.stride(),  # y_stride_batch, y_stride_channel, y_stride_height, y_stride_width
            KERNEL_SIZE=kernel_size,
            BLOCK_SIZE=blk,
        )
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
