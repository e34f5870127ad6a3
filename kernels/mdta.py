"""MDTA channel attention core: L2-normalise q, k over H*W, q k^T * temperature, softmax, @ v.

Per batch b and head h (d = C / heads channels, N = H * W pixels):
``qn = q / max(|q|, 1e-12)`` (row-wise over N, like ``F.normalize``), same for k;
``A = softmax(qn kn^T * t_h)`` (d x d); ``out = A v``.

Implementations
- reference: plain torch ops: raw gram + row norms (no normalised copies of q and k),
  channel-major for NCHW and pixel-major for channels_last inputs (see its docstring).
  ``channel_attention_packed`` (the MDTA block's entry point, given the whole qkv tensor)
  adds, while training on CPU with channels_last qkv, :class:`_PackedAttention`: matmuls on
  strided views of the pixel rows and a backward that writes dq, dk and dv straight into one
  gradient tensor.
- triton (two passes over H*W forward, two backward; everything else is d x d):
  forward pass 1 ``_gram_kernel``: raw gram ``q k^T`` and the row sums of squares of q
  and k, split over N across programs (partials summed in torch, deterministic); the
  d x d normalisation + softmax run in torch on tiny tensors; pass 2 ``_apply_kernel``:
  ``out = A v`` tile by tile. Backward pass 1: ``dA = dout v^T`` (same gram kernel);
  d x d algebra in torch (softmax backward, temperature grad, the normalisation's
  projection terms, which reduce to row/column sums of ``dG * Gn`` so no extra pass);
  pass 2: ``_bwd_apply_kernel`` writes ``dq = Mq k + aq * q`` and ``dk = Mk q + ak * k``
  (reads q, k once) and ``_apply_kernel`` writes ``dv = A^T dout``. Inputs are read
  through their strides (NCHW, channels_last, chunk views); outputs follow the input's
  memory format.
  ``tl.dot`` always sees tiles with M, N, K >= 16 (d is padded to >= 16 and masked); inputs
  are upcast to float32 and multiplied with ``input_precision="tf32x3"`` on the GPU (tensor
  cores, float32-level accuracy; plain TF32 would be ~1e-3) -- the interpreter multiplies in
  float32. Tile sizes per head dim are in ``_GPU_TILES`` (zero spills on sm_90).
  Heads with d > 64 take the reference path (at d = 128 the backward's d x d tiles spill
  registers on sm_90); the Restormer family uses d = 48 at every level.
  Custom ops ``irblocks::channel_attention`` / ``irblocks::channel_attention_backward``
  with fake impls, autograd and FLOP formulas counting the matmuls like aten's
  (forward: 2 matmuls of 2*B*heads*d*d*N flops each; backward: 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from irblocks.registry import register

from ._cpu_build import _is_functorch_wrapped
from ._dispatch import block_size, empty, interpreting, reference_grads, select, triton_available
from ._dispatch import out_format as _out_format
from ._op import kernel_op

__all__ = ["channel_attention", "channel_attention_packed", "channel_attention_reference", "packs",
           "packs_with_sumsq", "MAX_TRITON_HEAD_DIM"]

MAX_TRITON_HEAD_DIM = 64
_EPS = 1e-12  # F.normalize's clamp


def _norms_from_sumsq(sumsq: torch.Tensor) -> torch.Tensor:
    """Row norms from row sums of squares, clamped at 1e-12 as F.normalize clamps (the clamp
    on the squared sum keeps the gradient finite, 0, for all-zero rows)."""
    return sumsq.clamp_min(_EPS * _EPS).sqrt()


def _attention(gram: torch.Tensor, norm_q: torch.Tensor, norm_k: torch.Tensor,
               temperature: torch.Tensor) -> torch.Tensor:
    """softmax(qn kn^T * t) from the raw gram q k^T (..., d, d) and the row norms (..., d)."""
    return (gram / (norm_q.unsqueeze(-1) * norm_k.unsqueeze(-2)) * temperature).softmax(dim=-1)


def _row_norms(x: torch.Tensor, dim: int) -> torch.Tensor:
    """max(|x|, 1e-12) along ``dim``, as F.normalize divides by (gradient 0 below the clamp)."""
    if x.dtype in (torch.float16, torch.bfloat16) or x.stride(dim) == 1:
        return torch.linalg.vector_norm(x, dim=dim).clamp_min(_EPS)
    # reducing over a strided (outer) axis: square+sum is ~4x faster than vector_norm on CPU
    return _norms_from_sumsq(x.square().sum(dim))


def channel_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                temperature: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain torch ops; never writes normalised copies of q and k.

    ``qn kn^T = (q k^T) / (|q| |k|^T)``: the raw gram and the row norms are computed from q
    and k directly and the normalisation happens on the d x d matrix. NCHW inputs run
    channel-major (``(B, heads, d, N)`` views); channels-fastest inputs (channels_last and its
    chunk views) run pixel-major (``(B, heads, N, d)`` views) so no operand or the output
    needs a transposing copy (for heads == 1 the output is a channels_last view).
    FlopCounterMode sees exactly the two matmuls.
    """
    b, c, h, w = q.shape
    d, n = c // heads, h * w
    t = temperature.reshape(1, heads, 1, 1)
    pixel_major = (not all(x.is_contiguous() for x in (q, k, v))
                   and all(x.stride(1) == 1 for x in (q, k, v)))
    if pixel_major:
        qp, kp, vp = (x.permute(0, 2, 3, 1).reshape(b, n, heads, d).transpose(1, 2)
                      for x in (q, k, v))
        g = qp.transpose(-2, -1) @ kp                                 # B, heads, d, d
        nq, nk = _row_norms(qp, -2), _row_norms(kp, -2)
    else:
        qh, kh, vh = (x.reshape(b, heads, d, n) for x in (q, k, v))
        g = qh @ kh.transpose(-2, -1)
        nq, nk = _row_norms(qh, -1), _row_norms(kh, -1)
    attn = _attention(g, nq, nk, t)
    if pixel_major:
        outp = vp @ attn.transpose(-2, -1)                            # B, heads, N, d
        return outp.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
    return (attn @ vh).reshape(b, c, h, w)


def _sumsq_over_pixels(rows: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """(B, N, K) with any strides -> (B, K): sums of squares over N, ``chunk`` pixels at a
    time so the squared temporary stays cache-sized (no full-size copy). For the eager packed
    path only: :func:`_row_norms` (the reference) keeps one ``square().sum()`` so that tracing
    (torch.compile, torch.export with dynamic sizes) sees no Python loop over N."""
    total = rows[:, :chunk].square().sum(1)
    for start in range(chunk, rows.shape[1], chunk):
        total += rows[:, start:start + chunk].square().sum(1)
    return total


def _per_head(x: torch.Tensor, heads: int) -> list[torch.Tensor]:
    """Matmul operands of every (batch, head): (B, N, heads * d) with the channels fastest ->
    [(B, N, d)] for one head (one batched call), else one (heads, N, d) view per batch item.
    (B, heads, d, d) -> [(B, d, d)] or [(heads, d, d)] * B alike. Views, never copies."""
    if x.dim() == 4:                                                  # (B, heads, d, d)
        return [x[:, 0]] if heads == 1 else list(x.unbind(0))
    if heads == 1:
        return [x]
    return [item.unflatten(-1, (heads, -1)).transpose(0, 1) for item in x.unbind(0)]


def _packed_attention_map(gram: torch.Tensor, sumsq: torch.Tensor,
                          temperature: torch.Tensor) -> torch.Tensor:
    """softmax(qn kn^T * t): gram (B, heads, d, d) = q k^T, sumsq (B, 2C) = the sums of squares
    of [q | k]'s channels, temperature (heads,) -> (B, heads, d, d)."""
    b, heads, d, _ = gram.shape
    norms = _norms_from_sumsq(sumsq).view(b, 2, heads, d)
    return _attention(gram, norms[:, 0], norms[:, 1], temperature.view(1, heads, 1, 1))


FULL_GRAM_MAX_CHANNELS = 64     # one head, C <= this: q k^T and the norms from one gram


def _full_gram(channels: int, heads: int) -> bool:
    """Whether :class:`_PackedAttention` takes q k^T and the sums of squares from one gram of
    [q | k] (one head of at most ``FULL_GRAM_MAX_CHANNELS`` channels)."""
    return heads == 1 and channels <= FULL_GRAM_MAX_CHANNELS


def _projected_map(weight: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """M = W blockdiag(A_1 .. A_heads) per batch item: weight (C, C) of the 1x1 projection
    after the attention, attn (B, heads, d, d) -> (B, C, C); projection(attention) of v is
    then v M^T (out = v blockdiag(A)^T, y = out W^T)."""
    b, heads, d, _ = attn.shape
    return torch.einsum("ohi,bhij->bohj", weight.view(-1, heads, d), attn).reshape(b, -1,
                                                                                heads * d)


class _PackedAttention(torch.autograd.Function):
    """Channel attention on the pixel rows of a channels-fastest qkv: rows (B, N, 3C) with
    [q | k | v] per pixel, temperature (heads,), optionally the following 1x1 projection's
    weight (C, C) and bias (C,), and the sums of squares of [q | k] over N, (B, 2C), if the
    caller has them (the depthwise 3x3 that wrote qkv can:
    :func:`irblocks.conv.depthwise3x3_sumsq`; no gradient flows to that argument, the
    backward's diagonal term below accounts for it) -> (B, N, C).

    Forward: the raw grams q k^T per head (one matmul each, like the official code) and the
    sums of squares of q and k over N (given, or chunked, no copy), or, for one head of at most
    ``FULL_GRAM_MAX_CHANNELS`` channels, both from one gram of [q | k] (its off-diagonal block
    and its diagonal: one call instead of many small ones); the d x d normalisation and softmax
    run on tiny tensors; out = v A^T. With a projection W the attention output is never
    formed: y = (v blockdiag(A)^T) W^T = v M^T with M = W blockdiag(A) (C x C, tiny), one
    N-sized matmul where there were two (forward), and two where there were four (backward:
    dv = dy M and dM = dy^T v; dA and dW from dM on C x C tensors).
    Backward (no autograd over the N-sized tensors): dA = dout^T v (or dM as above); dG,
    dsumsq, dt (and dW) from autograd over the d x d part; then dq = 2 dsumsq_q q + k dG^T,
    dk = 2 dsumsq_k k + q dG, dv = dout A (or dy M), each written by its matmul straight into
    its channel slice of one (B, N, 3C) gradient (no per-part tensors concatenated).
    Under ``create_graph`` the backward differentiates :func:`channel_attention_reference`.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, temperature: torch.Tensor, heads: int,
                weight: torch.Tensor | None, bias: torch.Tensor | None,
                given_sumsq: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c3 = rows.shape
        c = c3 // 3
        d = c // heads
        full_gram = _full_gram(c, heads)
        if full_gram:
            # one gram of [q | k]: q k^T is its off-diagonal block, the sums of squares its
            # diagonal (fewer, larger calls: cheaper than the two below for narrow q and k)
            qk = rows[..., :2 * c]
            full = torch.bmm(qk.transpose(1, 2), qk)
            gram, sumsq = full[:, None, :c, c:], torch.diagonal(full, dim1=1, dim2=2)
        else:
            sumsq = (_sumsq_over_pixels(rows[..., :2 * c]) if given_sumsq is None
                     else given_sumsq.detach())
            gram = rows.new_empty(b, heads, d, d)
            for q, k, g in zip(_per_head(rows[..., :c], heads),
                               _per_head(rows[..., c:2 * c], heads), _per_head(gram, heads)):
                torch.bmm(q.transpose(1, 2), k, out=g)
        attn = _packed_attention_map(gram, sumsq, temperature)
        out = empty(b, n, c, like=rows)
        if weight is None:
            for v, a, o in zip(_per_head(rows[..., 2 * c:], heads), _per_head(attn, heads),
                               _per_head(out, heads)):
                torch.bmm(v, a.transpose(1, 2), out=o)
        else:
            torch.bmm(rows[..., 2 * c:], _projected_map(weight, attn).transpose(1, 2), out=out)
            if bias is not None:
                out += bias
        # (forward(ctx, ...) style: apply() then skips inspect's signature binding, ~30 us a call)
        ctx.save_for_backward(rows, temperature, weight, bias, gram, sumsq)
        ctx.heads, ctx.full_gram = heads, full_gram
        ctx.mark_non_differentiable(gram)
        return out, gram

    @staticmethod
    def backward(ctx, dout: torch.Tensor, _dgram):
        rows, temperature, weight, bias, gram, sumsq = ctx.saved_tensors
        heads, c = ctx.heads, rows.shape[-1] // 3
        need_rows, need_t, _, need_w, need_b, _ = ctx.needs_input_grad
        if torch.is_grad_enabled():             # create_graph=True: grad of grad
            grads = reference_grads(
                lambda r, t, w, bb: _packed_differentiable(r, t, heads, w, bb),
                (rows, temperature, weight, bias), (need_rows, need_t, need_w, need_b), dout)
            return grads[0], grads[1], None, grads[2], grads[3], None
        projected = weight is not None
        with torch.enable_grad():
            leaves = [gram.detach().requires_grad_(need_rows),
                      sumsq.detach().requires_grad_(need_rows),
                      temperature.detach().requires_grad_(need_t)]
            attn = _packed_attention_map(*leaves)
            if projected:
                leaves.append(weight.detach().requires_grad_(need_w))
                mixed = _projected_map(leaves[-1], attn)
        values = rows[..., 2 * c:]
        if projected:                           # dM = dy^T v, (B, C, C)
            target, d_target = mixed, torch.bmm(dout.transpose(1, 2), values)
        else:                                   # dA = dout^T v per head
            target, d_target = attn, torch.empty_like(gram)
            for dy, v, da in zip(_per_head(dout, heads), _per_head(values, heads),
                                 _per_head(d_target, heads)):
                torch.bmm(dy.transpose(1, 2), v, out=da)
        wanted = [t for t in leaves if t.requires_grad]
        found = iter(torch.autograd.grad(target, wanted, d_target) if wanted else ())
        dgram, dsumsq = (next(found), next(found)) if need_rows else (None, None)
        dt = next(found) if need_t else None
        dw = next(found) if projected and need_w else None
        db = dout.sum((0, 1)) if bias is not None and need_b else None
        if not need_rows:
            return None, dt, None, dw, db, None
        drows = empty(*rows.shape, like=rows)
        if projected:
            torch.bmm(dout, mixed.detach(), out=drows[..., 2 * c:])
        else:
            attn = attn.detach()
            for dy, a, dv in zip(_per_head(dout, heads), _per_head(attn, heads),
                                 _per_head(drows[..., 2 * c:], heads)):
                torch.bmm(dy, a, out=dv)
        if ctx.full_gram:
            # [q | k] (dF + dF^T), dF the gradient of the full gram: one matmul for dq and dk
            dfull = torch.diag_embed(dsumsq)
            dfull[:, :c, c:] += dgram[:, 0]
            qk = rows[..., :2 * c]
            torch.bmm(qk, dfull + dfull.transpose(1, 2), out=drows[..., :2 * c])
            return drows, dt, None, dw, db, None
        torch.mul(rows[..., :2 * c], (2.0 * dsumsq).unsqueeze(1), out=drows[..., :2 * c])
        for q, k, dq, dk, dg in zip(_per_head(rows[..., :c], heads),
                                    _per_head(rows[..., c:2 * c], heads),
                                    _per_head(drows[..., :c], heads),
                                    _per_head(drows[..., c:2 * c], heads),
                                    _per_head(dgram, heads)):
            dq.baddbmm_(k, dg.transpose(1, 2))
            dk.baddbmm_(q, dg)
        return drows, dt, None, dw, db, None


def _packed_differentiable(rows: torch.Tensor, temperature: torch.Tensor, heads: int,
                           weight: torch.Tensor | None = None,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """:class:`_PackedAttention`'s value with plain differentiable ops (grad of grad)."""
    b, n, c3 = rows.shape
    qkv = rows.unsqueeze(2).permute(0, 3, 1, 2)                       # (B, 3C, N, 1), a view
    out = channel_attention_reference(*qkv.chunk(3, dim=1), temperature, heads)
    out = out.permute(0, 2, 3, 1).reshape(b, n, c3 // 3)
    return out if weight is None else F.linear(out, weight, bias)


def _packed_rows(qkv: torch.Tensor, temperature: torch.Tensor, heads: int,
                 weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                 sumsq: torch.Tensor | None = None) -> torch.Tensor:
    """The packed training path: qkv (B, 3C, H, W) channels-fastest -> (B, C, H, W)
    channels_last view (see :class:`_PackedAttention`); with ``weight`` (C, C) and ``bias``
    the 1x1 projection of the attention output; ``sumsq`` (B, 2C): [q | k]'s sums of squares
    over H * W if known."""
    b, c3, h, w = qkv.shape
    rows = qkv.permute(0, 2, 3, 1).reshape(b, h * w, c3)           # a view (channels-fastest)
    out = _PackedAttention.apply(rows, temperature.reshape(-1), heads, weight, bias, sumsq)[0]
    return out.view(b, h, w, c3 // 3).permute(0, 3, 1, 2)


def _like(x: torch.Tensor, shape=None) -> torch.Tensor:
    return empty(*(shape or x.shape), like=x, memory_format=_out_format(x))


if triton_available():
    import triton
    import triton.language as tl

    from ._triton_util import pixel_offset, tile_offset_channels_first

    @triton.jit
    def _gram_kernel(
        x_ptr,  # left operand, (B, C, H, W) with C = heads * head_dim, any strides
        y_ptr,  # right operand, (B, C, H, W), any strides
        gram_ptr,  # partial grams x y^T, (B * heads, num_splits, head_dim, head_dim), float32
        x_sumsq_ptr,  # partial row sums of x^2, (B * heads, num_splits, head_dim), float32
        y_sumsq_ptr,  # partial row sums of y^2, (B * heads, num_splits, head_dim), float32
        head_dim,  # d = C / heads
        heads,  # attention heads
        num_pixels,  # N = H * W
        width,  # W
        pixels_per_split,  # pixels each program sums over (a multiple of BLOCK_SIZE_N)
        num_splits,  # programs per (batch, head) along N
        x_stride_batch,  # stride of x along B
        x_stride_channel,  # stride of x along C
        x_stride_height,  # stride of x along H
        x_stride_width,  # stride of x along W
        y_stride_batch,  # stride of y along B
        y_stride_channel,  # stride of y along C
        y_stride_height,  # stride of y along H
        y_stride_width,  # stride of y along W
        WITH_SUMSQ: tl.constexpr,  # also write the row sums of squares (else sumsq ptrs unused)
        FLAT_PIXELS: tl.constexpr,  # H and W of x and y merge into one pixel axis
        BLOCK_SIZE_D: tl.constexpr,  # head_dim padded to a power of 2 >= 16 (tl.dot minimum)
        BLOCK_SIZE_N: tl.constexpr,  # pixels per tile
        INPUT_PRECISION: tl.constexpr,  # tl.dot input_precision ("tf32x3" on the GPU)
    ):
        """Partial x y^T (d x d) over one slice of N for one (batch, head); optionally row
        sum-squares."""
        batch_head = tl.program_id(0)
        split = tl.program_id(1)
        batch = batch_head // heads
        head = batch_head % heads
        row = tl.arange(0, BLOCK_SIZE_D)
        row_mask = row < head_dim
        x_rows_ptr = x_ptr + batch * x_stride_batch + (head * head_dim + row) * x_stride_channel
        y_rows_ptr = y_ptr + batch * y_stride_batch + (head * head_dim + row) * y_stride_channel
        gram = tl.zeros((BLOCK_SIZE_D, BLOCK_SIZE_D), dtype=tl.float32)
        x_sumsq = tl.zeros((BLOCK_SIZE_D,), dtype=tl.float32)
        y_sumsq = tl.zeros((BLOCK_SIZE_D,), dtype=tl.float32)
        split_start = split * pixels_per_split
        for tile_start in range(0, pixels_per_split, BLOCK_SIZE_N):
            pixel = split_start + tile_start + tl.arange(0, BLOCK_SIZE_N)
            pixel_mask = pixel < num_pixels
            mask = row_mask[:, None] & pixel_mask[None, :]
            x = tl.load(x_rows_ptr[:, None]
                        + pixel_offset(pixel, width, x_stride_height, x_stride_width,
                                       FLAT_PIXELS)[None, :],
                        mask=mask, other=0.0).to(tl.float32)
            y = tl.load(y_rows_ptr[:, None]
                        + pixel_offset(pixel, width, y_stride_height, y_stride_width,
                                       FLAT_PIXELS)[None, :],
                        mask=mask, other=0.0).to(tl.float32)
            gram += tl.dot(x, tl.trans(y), input_precision=INPUT_PRECISION)
            if WITH_SUMSQ:
                x_sumsq += tl.sum(x * x, axis=1)
                y_sumsq += tl.sum(y * y, axis=1)
        col = tl.arange(0, BLOCK_SIZE_D)
        partial = batch_head * num_splits + split
        tl.store(gram_ptr + partial * head_dim * head_dim + row[:, None] * head_dim + col[None, :],
                 gram, mask=row_mask[:, None] & (col < head_dim)[None, :])
        if WITH_SUMSQ:
            tl.store(x_sumsq_ptr + partial * head_dim + row, x_sumsq, mask=row_mask)
            tl.store(y_sumsq_ptr + partial * head_dim + row, y_sumsq, mask=row_mask)

    @triton.jit
    def _load_head_matrix(
        matrix_ptr,  # per-head matrices, (B * heads, head_dim, head_dim), contiguous
        batch_head,  # which matrix: batch * heads + head
        head_dim,  # d
        BLOCK_SIZE_D: tl.constexpr,  # head_dim padded to a power of 2 (padding reads 0)
    ):
        index = tl.arange(0, BLOCK_SIZE_D)
        mask = (index < head_dim)[:, None] & (index < head_dim)[None, :]
        return tl.load(matrix_ptr + batch_head * head_dim * head_dim + index[:, None] * head_dim
                       + index[None, :], mask=mask, other=0.0)

    @triton.jit
    def _apply_kernel(
        attn_ptr,  # attention, (B * heads, head_dim, head_dim), float32, contiguous
        v_ptr,  # values, (B, C, H, W) with C = heads * head_dim, any strides
        out_ptr,  # output attn @ v, (B, C, H, W)
        head_dim,  # d = C / heads
        heads,  # attention heads
        num_pixels,  # N = H * W
        width,  # W
        v_stride_batch,  # stride of v along B
        v_stride_channel,  # stride of v along C
        v_stride_height,  # stride of v along H
        v_stride_width,  # stride of v along W
        out_stride_batch,  # stride of out along B
        out_stride_channel,  # stride of out along C
        out_stride_height,  # stride of out along H
        out_stride_width,  # stride of out along W
        FLAT_PIXELS: tl.constexpr,  # H and W of v and out merge into one pixel axis
        BLOCK_SIZE_D: tl.constexpr,  # head_dim padded to a power of 2 >= 16 (tl.dot minimum)
        BLOCK_SIZE_N: tl.constexpr,  # pixels per program
        INPUT_PRECISION: tl.constexpr,  # tl.dot input_precision ("tf32x3" on the GPU)
    ):
        """out[:, tile] = attn @ v[:, tile] for one (batch, head) and one tile of N."""
        batch_head = tl.program_id(0)
        batch = batch_head // heads
        head = batch_head % heads
        row = tl.arange(0, BLOCK_SIZE_D)
        pixel = tl.program_id(1) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        mask = (row < head_dim)[:, None] & (pixel < num_pixels)[None, :]
        attn = _load_head_matrix(attn_ptr, batch_head, head_dim, BLOCK_SIZE_D)
        channel = head * head_dim + row
        v_offsets = tile_offset_channels_first(batch, pixel, channel, width,
                                               v_stride_batch, v_stride_channel,
                                               v_stride_height, v_stride_width, FLAT_PIXELS)
        v = tl.load(v_ptr + v_offsets, mask=mask, other=0.0).to(tl.float32)
        out = tl.dot(attn, v, input_precision=INPUT_PRECISION)
        out_offsets = tile_offset_channels_first(batch, pixel, channel, width,
                                                 out_stride_batch, out_stride_channel,
                                                 out_stride_height, out_stride_width, FLAT_PIXELS)
        tl.store(out_ptr + out_offsets, out.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_apply_kernel(
        q_ptr,  # queries, (B, C, H, W) with C = heads * head_dim, any strides
        k_ptr,  # keys, (B, C, H, W), any strides
        dq_from_k_ptr,  # Mq, (B * heads, head_dim, head_dim), float32: dq = Mq k + aq * q
        dq_scale_ptr,  # aq, (B * heads, head_dim), float32: per-row scale of q in dq
        dk_from_q_ptr,  # Mk, (B * heads, head_dim, head_dim), float32: dk = Mk q + ak * k
        dk_scale_ptr,  # ak, (B * heads, head_dim), float32: per-row scale of k in dk
        dq_ptr,  # gradient of q (output), (B, C, H, W)
        dk_ptr,  # gradient of k (output), (B, C, H, W)
        head_dim,  # d = C / heads
        heads,  # attention heads
        num_pixels,  # N = H * W
        width,  # W
        q_stride_batch,  # stride of q along B
        q_stride_channel,  # stride of q along C
        q_stride_height,  # stride of q along H
        q_stride_width,  # stride of q along W
        k_stride_batch,  # stride of k along B
        k_stride_channel,  # stride of k along C
        k_stride_height,  # stride of k along H
        k_stride_width,  # stride of k along W
        dq_stride_batch,  # stride of dq along B
        dq_stride_channel,  # stride of dq along C
        dq_stride_height,  # stride of dq along H
        dq_stride_width,  # stride of dq along W
        dk_stride_batch,  # stride of dk along B
        dk_stride_channel,  # stride of dk along C
        dk_stride_height,  # stride of dk along H
        dk_stride_width,  # stride of dk along W
        FLAT_PIXELS: tl.constexpr,  # H and W of q, k, dq and dk merge into one pixel axis
        BLOCK_SIZE_D: tl.constexpr,  # head_dim padded to a power of 2 >= 16 (tl.dot minimum)
        BLOCK_SIZE_N: tl.constexpr,  # pixels per program
        INPUT_PRECISION: tl.constexpr,  # tl.dot input_precision ("tf32x3" on the GPU)
    ):
        """dq = Mq k + aq*q, dk = Mk q + ak*k on one tile of N (dv = A^T dout is _apply_kernel)."""
        batch_head = tl.program_id(0)
        batch = batch_head // heads
        head = batch_head % heads
        row = tl.arange(0, BLOCK_SIZE_D)
        row_mask = row < head_dim
        channel = head * head_dim + row
        pixel = tl.program_id(1) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        mask = row_mask[:, None] & (pixel < num_pixels)[None, :]
        q_offsets = tile_offset_channels_first(batch, pixel, channel, width,
                                               q_stride_batch, q_stride_channel,
                                               q_stride_height, q_stride_width, FLAT_PIXELS)
        q = tl.load(q_ptr + q_offsets, mask=mask, other=0.0)
        k_offsets = tile_offset_channels_first(batch, pixel, channel, width,
                                               k_stride_batch, k_stride_channel,
                                               k_stride_height, k_stride_width, FLAT_PIXELS)
        k = tl.load(k_ptr + k_offsets, mask=mask, other=0.0)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        dq_scale = tl.load(dq_scale_ptr + batch_head * head_dim + row, mask=row_mask, other=0.0)
        dk_scale = tl.load(dk_scale_ptr + batch_head * head_dim + row, mask=row_mask, other=0.0)
        dq = (tl.dot(_load_head_matrix(dq_from_k_ptr, batch_head, head_dim, BLOCK_SIZE_D), k,
                     input_precision=INPUT_PRECISION)
              + dq_scale[:, None] * q)
        dq_offsets = tile_offset_channels_first(batch, pixel, channel, width,
                                                dq_stride_batch, dq_stride_channel,
                                                dq_stride_height, dq_stride_width, FLAT_PIXELS)
        tl.store(dq_ptr + dq_offsets, dq.to(dq_ptr.dtype.element_ty), mask=mask)
        dk = (tl.dot(_load_head_matrix(dk_from_q_ptr, batch_head, head_dim, BLOCK_SIZE_D), q,
                     input_precision=INPUT_PRECISION)
              + dk_scale[:, None] * k)
        dk_offsets = tile_offset_channels_first(batch, pixel, channel, width,
                                                dk_stride_batch, dk_stride_channel,
                                                dk_stride_height, dk_stride_width, FLAT_PIXELS)
        tl.store(dk_ptr + dk_offsets, dk.to(dk_ptr.dtype.element_ty), mask=mask)

    # GPU tiles per padded head dim, checked for zero register spills on sm_90 by
    # tests/kernels/test_compile_sm90.py:
    # (gram BLOCK_SIZE_N, apply BLOCK_SIZE_N, backward BLOCK_SIZE_N, num_warps)
    _GPU_TILES = {16: (32, 64, 64, 4), 32: (32, 64, 64, 4), 64: (32, 64, 32, 8)}
    # tf32x3 = tensor cores with a split-float correction: float32-level accuracy (~1e-6 rel.);
    # the interpreter ignores the precision and multiplies in float32.
    _GPU_PREC = "tf32x3"

    def _cfg(d: int):
        block_d = max(16, triton.next_power_of_2(d))
        gram_n, apply_n, bwd_n, warps = _GPU_TILES[block_d]
        return (block_d, block_size(gpu=gram_n, interpreter=16),
                block_size(gpu=apply_n, interpreter=16), block_size(gpu=bwd_n, interpreter=16),
                warps)

    def _flat(*ts) -> bool:
        return all(t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3) for t in ts)

    def _splits(bh: int, n: int, block_n: int, x: torch.Tensor) -> tuple[int, int]:
        tiles = triton.cdiv(n, block_n)
        if interpreting() or not x.is_cuda:
            want = 2
        else:
            sms = torch.cuda.get_device_properties(x.device).multi_processor_count
            want = max(1, (4 * sms) // max(bh, 1))
        per = triton.cdiv(tiles, max(1, min(want, tiles)))
        return triton.cdiv(tiles, per), per * block_n

    def _gram(x, y, heads, norms):
        b, c, h, w = x.shape
        d, n, bh = c // heads, h * w, b * heads
        block_d, gram_n, _, _, warps = _cfg(d)
        n_split, n_per = _splits(bh, n, gram_n, x)
        g = empty(bh, n_split, d, d, like=x, dtype=torch.float32)
        sx = empty(bh, n_split, d, like=x, dtype=torch.float32)
        sy = empty(bh, n_split, d, like=x, dtype=torch.float32)
        _gram_kernel[(bh, n_split)](
            x,
            y,
            g,
            sx,
            sy,
            d,
            heads,
            n,
            w,
            n_per,
            n_split,
            *x.stride(),  # x_stride_batch, x_stride_channel, x_stride_height, x_stride_width
            *y.stride(),  # y_stride_batch, y_stride_channel, y_stride_height, y_stride_width
            WITH_SUMSQ=norms,
            FLAT_PIXELS=_flat(x, y),
            BLOCK_SIZE_D=block_d,
            BLOCK_SIZE_N=gram_n,
            INPUT_PRECISION=_GPU_PREC,
            num_warps=warps,
        )
        g = g.sum(1).view(b, heads, d, d)
        if not norms:
            return g
        return g, sx.sum(1).view(b, heads, d), sy.sum(1).view(b, heads, d)

    def _fwd_triton(q, k, v, t, heads):
        b, c, h, w = q.shape
        d, n, bh = c // heads, h * w, b * heads
        out = _like(q)
        g, sq, sk = _gram(q, k, heads, True)
        nq, nk = _norms_from_sumsq(sq), _norms_from_sumsq(sk)
        gn = g / nq[..., :, None] / nk[..., None, :]       # kept: the backward needs it
        attn = torch.softmax(gn * t.float().view(1, heads, 1, 1), dim=-1).contiguous()
        block_d, _, apply_n, _, warps = _cfg(d)
        _apply_kernel[(bh, triton.cdiv(n, apply_n))](
            attn,
            v,
            out,
            d,
            heads,
            n,
            w,
            *v.stride(),  # v_stride_batch, v_stride_channel, v_stride_height, v_stride_width
            *out.stride(),  # out_stride_batch, out_stride_channel, out_stride_height, ..._width
            FLAT_PIXELS=_flat(v, out),
            BLOCK_SIZE_D=block_d,
            BLOCK_SIZE_N=apply_n,
            INPUT_PRECISION=_GPU_PREC,
            num_warps=warps,
        )
        return out, gn, nq, nk

    def _bwd_triton(dout, q, k, v, t, gn, nq, nk, heads):
        b, c, h, w = q.shape
        d, n, bh = c // heads, h * w, b * heads
        tf = t.float().view(1, heads, 1, 1)
        attn = torch.softmax(gn * tf, dim=-1)
        da = _gram(dout, v, heads, False)                      # dA_ij = sum_n dout_in v_jn
        ds = attn * (da - (da * attn).sum(-1, keepdim=True))
        dt = (ds * gn).sum((0, 2, 3)).to(t.dtype)
        dg = ds * tf
        r = (dg * gn).sum(-1)                                   # <d qn_i, qn_i>
        cc = (dg * gn).sum(-2)                                  # <d kn_j, kn_j>
        aq = torch.where(nq > _EPS, -r / (nq * nq), torch.zeros_like(r)).contiguous()
        ak = torch.where(nk > _EPS, -cc / (nk * nk), torch.zeros_like(cc)).contiguous()
        mq = (dg / nq[..., :, None] / nk[..., None, :]).contiguous()
        mk = mq.transpose(-1, -2).contiguous()
        at = attn.transpose(-1, -2).contiguous()
        dq, dk, dv = _like(q), _like(k), _like(v)
        block_d, _, apply_n, bwd_n, warps = _cfg(d)
        _bwd_apply_kernel[(bh, triton.cdiv(n, bwd_n))](
            q,
            k,
            mq,
            aq,
            mk,
            ak,
            dq,
            dk,
            d,
            heads,
            n,
            w,
            *q.stride(),  # q_stride_batch, q_stride_channel, q_stride_height, q_stride_width
            *k.stride(),  # k_stride_batch, k_stride_channel, k_stride_height, k_stride_width
            *dq.stride(),  # dq_stride_batch, dq_stride_channel, dq_stride_height, ..._width
            *dk.stride(),  # dk_stride_batch, dk_stride_channel, dk_stride_height, ..._width
            FLAT_PIXELS=_flat(q, k, dq, dk),
            BLOCK_SIZE_D=block_d,
            BLOCK_SIZE_N=bwd_n,
            INPUT_PRECISION=_GPU_PREC,
            num_warps=warps,
        )
        _apply_kernel[(bh, triton.cdiv(n, apply_n))](
            at,
            dout,
            dv,
            d,
            heads,
            n,
            w,
            *dout.stride(),  # v_stride_*: dout's strides (B, C, H, W)
            *dv.stride(),  # out_stride_*: dv's strides (B, C, H, W)
            FLAT_PIXELS=_flat(dout, dv),
            BLOCK_SIZE_D=block_d,
            BLOCK_SIZE_N=apply_n,
            INPUT_PRECISION=_GPU_PREC,
            num_warps=warps,
        )
        return dq, dk, dv, dt



# --------------------------------------------------------------------------- custom ops
def _attn_fake(q, k, v, temperature, heads):
    b, c = q.shape[:2]
    d = c // heads
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device, memory_format=_out_format(q))
    return (out, q.new_empty(b, heads, d, d, dtype=torch.float32),
            q.new_empty(b, heads, d, dtype=torch.float32),
            q.new_empty(b, heads, d, dtype=torch.float32))


def _attn_bwd_fake(dout, q, k, v, temperature, gn, nq, nk, heads):
    return tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device, memory_format=_out_format(t))
                 for t in (q, k, v)) + (torch.empty_like(temperature),)


def _matmul_flops(q_shape, heads) -> int:
    b, c, h, w = q_shape
    d = c // heads
    return 2 * b * heads * d * d * h * w          # one (d x N) @ (N x d) matmul, 2 flops per MAC


def _attn_flops(q_shape, k_shape, v_shape, t_shape, heads, *args, out_shape=None, **kwargs) -> int:
    return 2 * _matmul_flops(q_shape, heads)      # q k^T and attn v


def _attn_bwd_flops(dout_shape, q_shape, *args, out_shape=None, **kwargs) -> int:
    heads = args[-1] if args and isinstance(args[-1], int) else kwargs["heads"]
    return 4 * _matmul_flops(q_shape, heads)      # dA, dq/dk (via Mq k, Mk q), dv


@kernel_op("channel_attention_backward", fake=_attn_bwd_fake, flops=_attn_bwd_flops)
def _attn_bwd_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 temperature: torch.Tensor, gn: torch.Tensor, nq: torch.Tensor, nk: torch.Tensor,
                 heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _bwd_triton(dout, q, k, v, temperature, gn, nq, nk, heads)


def _attn_setup(ctx, inputs, output):
    q, k, v, t, heads = inputs
    _, gn, nq, nk = output
    ctx.mark_non_differentiable(gn, nq, nk)
    ctx.save_for_backward(q, k, v, t, gn, nq, nk)
    ctx.heads = heads


def _attn_backward(ctx, dout, _dgn, _dnq, _dnk):
    q, k, v, t, gn, nq, nk = ctx.saved_tensors
    dq, dk, dv, dt = _attn_bwd_op(dout, q, k, v, t, gn, nq, nk, ctx.heads)
    return dq, dk, dv, dt, None


@kernel_op("channel_attention", fake=_attn_fake, backward=_attn_backward, setup_context=_attn_setup,
           flops=_attn_flops)
def _attn_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor,
             heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (out, normalised gram Gn, |q| rows, |k| rows); the last three are saved for
    backward."""
    return _fwd_triton(q, k, v, temperature, heads)


# --------------------------------------------------------------------------- entry point
@register("kernel", "channel_attention")
def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor,
                      heads: int, impl: str | None = None) -> torch.Tensor:
    """q, k, v: (B, C, H, W); temperature: (heads,) or (heads,1,1) -> (B, C, H, W)."""
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"channel_attention: q, k, v must share one (B, C, H, W) shape, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if heads < 1 or q.shape[1] % heads or temperature.numel() != heads:
        raise ValueError(f"channel_attention: heads={heads} must divide C={q.shape[1]} and match "
                         f"temperature.numel()={temperature.numel()}")
    t = temperature.reshape(-1)
    if (select(impl, q, k, v) == "triton" and q.shape[1] // heads <= MAX_TRITON_HEAD_DIM
            and q.numel() > 0):
        return _attn_op(q, k, v, t, int(heads))[0]
    return channel_attention_reference(q, k, v, t, heads)


PACKED_MIN_PIXELS = 256    # several heads: below this (8x8 maps) the per-batch-item matmuls
                           # cost more in Python overhead than the chunk path's concatenated
                           # gradient; from 16x16 on the packed path was faster (2026-11-30,
                           # whole training step interleaved in one process: AnyIR -2.6%,
                           # Restormer -1.7% against 4096)


def packs(qkv: torch.Tensor, temperature: torch.Tensor, heads: int,
          impl: str | None = None) -> bool:
    """Whether :func:`channel_attention_packed` takes :class:`_PackedAttention` (and so folds
    a given projection into the attention) for these arguments."""
    c = qkv.shape[1] // 3
    return (heads >= 1 and c % heads == 0 and temperature.numel() == heads
            and (heads == 1 or qkv.shape[2] * qkv.shape[3] >= PACKED_MIN_PIXELS)
            and qkv.device.type == "cpu" and qkv.dtype in (torch.float32, torch.float64)
            and torch.is_grad_enabled() and qkv.requires_grad and qkv.numel() > 0
            and not torch.compiler.is_compiling() and not _is_functorch_wrapped(qkv)
            and not torch.is_autocast_enabled("cpu")
            # layout last: torch.func's wrappers cannot answer memory-format queries
            and qkv.stride(1) == 1 and not qkv.is_contiguous()
            and select(impl, qkv) == "reference")


def packs_with_sumsq(qkv: torch.Tensor, temperature: torch.Tensor, heads: int,
                     impl: str | None = None) -> bool:
    """Whether :class:`_PackedAttention` would use given sums of squares of q and k for a qkv
    like this one (it packs, and q k^T and the sums do not come from one gram of [q | k]:
    several heads or more than ``FULL_GRAM_MAX_CHANNELS`` channels)."""
    return not _full_gram(qkv.shape[1] // 3, heads) and packs(qkv, temperature, heads, impl)


def channel_attention_packed(qkv: torch.Tensor, temperature: torch.Tensor, heads: int,
                             impl: str | None = None,
                             project_weight: torch.Tensor | None = None,
                             project_bias: torch.Tensor | None = None,
                             sumsq: torch.Tensor | None = None) -> torch.Tensor:
    """qkv: (B, 3C, H, W) with q, k, v as consecutive channel thirds -> (B, C, H, W);
    ``project_weight`` (C, C, 1, 1) and ``project_bias`` (C,): the 1x1 convolution applied to
    the attention output, if any (MDTA's project_out); ``sumsq`` (B, 2C): the sums of squares
    of qkv's first 2C channels (q and k) over H * W, if the caller has them
    (:func:`irblocks.conv.depthwise3x3_sumsq` computes them while writing qkv). The packed path
    uses them in place of its own pass over q and k; they must be those of ``qkv`` (no
    gradient flows through this argument: qkv's gradient already holds their term); elsewhere
    they are ignored.

    Same value as ``channel_attention(*qkv.chunk(3, dim=1), temperature, heads)`` (then
    ``F.conv2d(out, project_weight, project_bias)``). On the reference path while training on
    CPU (float32/64) with a channels-fastest (channels_last) qkv (:func:`packs`) it takes
    :class:`_PackedAttention` (matmuls on strided views of the pixel rows, the input gradient
    written in one (B, H, W, 3C) tensor, the projection folded into the attention's C x C
    maps; gradients equal to float rounding; several heads from ``PACKED_MIN_PIXELS`` pixels
    on); everywhere else it chunks and calls :func:`channel_attention`.
    """
    if qkv.dim() != 4 or qkv.shape[1] % 3:
        raise ValueError("channel_attention_packed: qkv must be (B, 3C, H, W), got "
                         f"{tuple(qkv.shape)}")
    c = qkv.shape[1] // 3
    if project_weight is not None and tuple(project_weight.shape) != (c, c, 1, 1):
        raise ValueError(f"channel_attention_packed: project_weight must be ({c}, {c}, 1, 1) "
                         f"for qkv of {3 * c} channels, got {tuple(project_weight.shape)}")
    if sumsq is not None and tuple(sumsq.shape) != (qkv.shape[0], 2 * c):
        raise ValueError(f"channel_attention_packed: sumsq must be ({qkv.shape[0]}, {2 * c}) "
                         f"(q and k's sums of squares per image), got {tuple(sumsq.shape)}")
    if packs(qkv, temperature, heads, impl):
        weight = None if project_weight is None else project_weight.flatten(1)
        return _packed_rows(qkv, temperature, heads, weight, project_bias,
                            None if sumsq is None else sumsq.to(qkv.dtype))
    q, k, v = qkv.chunk(3, dim=1)
    out = channel_attention(q, k, v, temperature, heads, impl=impl)
    return out if project_weight is None else F.conv2d(out, project_weight, project_bias)
