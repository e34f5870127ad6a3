"""MDTA channel attention core: L2-normalise q, k over H*W, q k^T * temperature, softmax, @ v.

Per batch b and head h (d = C / heads channels, N = H * W pixels):
``qn = q / max(|q|, 1e-12)`` (row-wise over N, like ``F.normalize``), same for k;
``A = softmax(qn kn^T * t_h)`` (d x d); ``out = A v``.

Implementations
- reference: plain torch ops: raw gram + row norms (no normalised copies of q and k),
  channel-major for NCHW and pixel-major for channels_last inputs (see its docstring).
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

from irblocks.registry import register

from ._dispatch import block_size, empty, interpreting, select, triton_available
from ._dispatch import out_format as _out_format
from ._op import kernel_op

__all__ = ["channel_attention", "channel_attention_reference", "MAX_TRITON_HEAD_DIM"]

MAX_TRITON_HEAD_DIM = 64
_EPS = 1e-12  # F.normalize's clamp


def _row_norms(x: torch.Tensor, dim: int) -> torch.Tensor:
    """max(|x|, 1e-12) along ``dim``, as F.normalize divides by (gradient 0 below the clamp)."""
    if x.dtype in (torch.float16, torch.bfloat16) or x.stride(dim) == 1:
        return torch.linalg.vector_norm(x, dim=dim).clamp_min(_EPS)
    # reducing over a strided (outer) axis: square+sum is ~4x faster than vector_norm on CPU;
    # clamping the squared sum keeps the gradient finite (0) for all-zero rows
    return x.square().sum(dim).clamp_min(_EPS * _EPS).sqrt()


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
    attn = (g / (nq.unsqueeze(-1) * nk.unsqueeze(-2)) * t).softmax(dim=-1)
    if pixel_major:
        outp = vp @ attn.transpose(-2, -1)                            # B, heads, N, d
        return outp.transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
    return (attn @ vh).reshape(b, c, h, w)


def _like(x: torch.Tensor, shape=None) -> torch.Tensor:
    return empty(*(shape or x.shape), like=x, memory_format=_out_format(x))


if triton_available():
    import triton
    import triton.language as tl

    from ._triton_util import pixel_offset as _pix

    @triton.jit
    def _gram_kernel(X, Y, G, SX, SY, d, heads, N, Wd, N_PER_SPLIT, n_split,
                     sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                     NORMS: tl.constexpr, FLAT: tl.constexpr, BLOCK_D: tl.constexpr,
                     BLOCK_N: tl.constexpr, PREC: tl.constexpr):
        """Partial X Y^T (d x d) over one slice of N for one (batch, head); optionally row
        sum-squares."""
        bh = tl.program_id(0)
        sp = tl.program_id(1)
        b = bh // heads
        hd = bh % heads
        i = tl.arange(0, BLOCK_D)
        im = i < d
        xrow = X + b * sxb + (hd * d + i) * sxc
        yrow = Y + b * syb + (hd * d + i) * syc
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
        sqx = tl.zeros((BLOCK_D,), dtype=tl.float32)
        sqy = tl.zeros((BLOCK_D,), dtype=tl.float32)
        n0 = sp * N_PER_SPLIT
        for s in range(0, N_PER_SPLIT, BLOCK_N):
            n = n0 + s + tl.arange(0, BLOCK_N)
            nm = n < N
            m = im[:, None] & nm[None, :]
            x = tl.load(xrow[:, None] + _pix(n, Wd, sxh, sxw, FLAT)[None, :], mask=m,
                        other=0.0).to(tl.float32)
            y = tl.load(yrow[:, None] + _pix(n, Wd, syh, syw, FLAT)[None, :], mask=m,
                        other=0.0).to(tl.float32)
            acc += tl.dot(x, tl.trans(y), input_precision=PREC)
            if NORMS:
                sqx += tl.sum(x * x, axis=1)
                sqy += tl.sum(y * y, axis=1)
        j = tl.arange(0, BLOCK_D)
        base = bh * n_split + sp
        tl.store(G + base * d * d + i[:, None] * d + j[None, :], acc,
                 mask=im[:, None] & (j < d)[None, :])
        if NORMS:
            tl.store(SX + base * d + i, sqx, mask=im)
            tl.store(SY + base * d + i, sqy, mask=im)

    @triton.jit
    def _load_dd(M, bh, d, BLOCK_D: tl.constexpr):
        i = tl.arange(0, BLOCK_D)
        m = (i < d)[:, None] & (i < d)[None, :]
        return tl.load(M + bh * d * d + i[:, None] * d + i[None, :], mask=m, other=0.0)

    @triton.jit
    def _apply_kernel(A, V, O, d, heads, N, Wd, svb, svc, svh, svw, sob, soc, soh, sow,
                      FLAT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                      PREC: tl.constexpr):
        """O[:, tile] = A @ V[:, tile] for one (batch, head) and one tile of N."""
        bh = tl.program_id(0)
        b = bh // heads
        hd = bh % heads
        i = tl.arange(0, BLOCK_D)
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = (i < d)[:, None] & (n < N)[None, :]
        a = _load_dd(A, bh, d, BLOCK_D)
        v = tl.load(V + b * svb + ((hd * d + i) * svc)[:, None]
                    + _pix(n, Wd, svh, svw, FLAT)[None, :],
                    mask=m, other=0.0).to(tl.float32)
        o = tl.dot(a, v, input_precision=PREC)
        tl.store(O + b * sob + ((hd * d + i) * soc)[:, None] + _pix(n, Wd, soh, sow, FLAT)[None, :],
                 o.to(O.dtype.element_ty), mask=m)

    @triton.jit
    def _bwd_apply_kernel(Q, K, MQ, AQ, MK, AK, DQ, DK, d, heads, N, Wd,
                          sqb, sqc, sqh, sqw, skb, skc, skh, skw,
                          s1b, s1c, s1h, s1w, s2b, s2c, s2h, s2w,
                          FLAT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                          PREC: tl.constexpr):
        """dq = Mq k + aq*q, dk = Mk q + ak*k on one tile of N (dv = A^T dout is _apply_kernel)."""
        bh = tl.program_id(0)
        b = bh // heads
        hd = bh % heads
        i = tl.arange(0, BLOCK_D)
        im = i < d
        ch = hd * d + i
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        m = im[:, None] & (n < N)[None, :]
        q = tl.load(Q + b * sqb + (ch * sqc)[:, None] + _pix(n, Wd, sqh, sqw, FLAT)[None, :],
                    mask=m, other=0.0)
        k = tl.load(K + b * skb + (ch * skc)[:, None] + _pix(n, Wd, skh, skw, FLAT)[None, :],
                    mask=m, other=0.0)
        q = q.to(tl.float32)
        k = k.to(tl.float32)
        aq = tl.load(AQ + bh * d + i, mask=im, other=0.0)
        ak = tl.load(AK + bh * d + i, mask=im, other=0.0)
        dq = tl.dot(_load_dd(MQ, bh, d, BLOCK_D), k, input_precision=PREC) + aq[:, None] * q
        tl.store(DQ + b * s1b + (ch * s1c)[:, None] + _pix(n, Wd, s1h, s1w, FLAT)[None, :],
                 dq.to(DQ.dtype.element_ty), mask=m)
        dk = tl.dot(_load_dd(MK, bh, d, BLOCK_D), q, input_precision=PREC) + ak[:, None] * k
        tl.store(DK + b * s2b + (ch * s2c)[:, None] + _pix(n, Wd, s2h, s2w, FLAT)[None, :],
                 dk.to(DK.dtype.element_ty), mask=m)

    # GPU tiles per padded head dim, checked for zero register spills on sm_90 by
    # tests/kernels/test_compile_sm90.py: (gram BLOCK_N, apply BLOCK_N, backward BLOCK_N, num_warps)
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
        _gram_kernel[(bh, n_split)](x, y, g, sx, sy, d, heads, n, w, n_per, n_split, *x.stride(),
                                    *y.stride(), NORMS=norms, FLAT=_flat(x, y), BLOCK_D=block_d,
                                    BLOCK_N=gram_n, PREC=_GPU_PREC, num_warps=warps)
        g = g.sum(1).view(b, heads, d, d)
        if not norms:
            return g
        return g, sx.sum(1).view(b, heads, d), sy.sum(1).view(b, heads, d)

    def _fwd_triton(q, k, v, t, heads):
        b, c, h, w = q.shape
        d, n, bh = c // heads, h * w, b * heads
        out = _like(q)
        g, sq, sk = _gram(q, k, heads, True)
        nq = sq.sqrt().clamp_min(_EPS)
        nk = sk.sqrt().clamp_min(_EPS)
        gn = g / nq[..., :, None] / nk[..., None, :]
        attn = torch.softmax(gn * t.float().view(1, heads, 1, 1), dim=-1).contiguous()
        block_d, _, apply_n, _, warps = _cfg(d)
        _apply_kernel[(bh, triton.cdiv(n, apply_n))](attn, v, out, d, heads, n, w, *v.stride(),
                                                     *out.stride(), FLAT=_flat(v, out),
                                                     BLOCK_D=block_d, BLOCK_N=apply_n,
                                                     PREC=_GPU_PREC, num_warps=warps)
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
            q, k, mq, aq, mk, ak, dq, dk, d, heads, n, w, *q.stride(), *k.stride(), *dq.stride(),
            *dk.stride(), FLAT=_flat(q, k, dq, dk), BLOCK_D=block_d, BLOCK_N=bwd_n, PREC=_GPU_PREC,
            num_warps=warps)
        _apply_kernel[(bh, triton.cdiv(n, apply_n))](at, dout, dv, d, heads, n, w, *dout.stride(),
                                                     *dv.stride(), FLAT=_flat(dout, dv),
                                                     BLOCK_D=block_d, BLOCK_N=apply_n,
                                                     PREC=_GPU_PREC, num_warps=warps)
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
