"""Pattern-token semantic cross-attention (ClearAIR's SCA without the (HW)^2 matrix).

ClearAIR's SCA attends from every pixel to the mask-average-pooled (MAP) map. The
MAP feature at a pixel depends only on the set of masks covering it (its
*membership pattern*; the empty pattern gives 0), and keys/values are pointwise
projections of it, so they are constant on every pattern. Dense attention over
H*W keys therefore equals attention over one token per distinct pattern present,
with log(pattern area) added to that token's logit:

    sum_j exp(s_ij) v_j / sum_j exp(s_ij)
        = sum_p n_p exp(s_ip) v_p / sum_p n_p exp(s_ip)
        = softmax_p(s_ip + log n_p) v_p.

Three pieces live here:

* :func:`membership_codes` -- a 64-bit code per pixel (bit k set when mask k
  covers it; K <= 62), Triton kernel + torch reference.
* :func:`pattern_tokens` -- distinct patterns (``torch.unique`` on the codes), their
  areas n_p, per-pattern feature sums (one pass over the feature; Triton kernel
  with atomics, or ``index_add``), and from them the per-mask means and the
  pattern tokens (sum of the means of the masks in the pattern). Returns tokens
  (B, P, C), the log-area bias (B, P) (``-inf`` on padding when images of a batch
  have different P) and the per-pixel pattern index.
* :func:`pattern_attention` -- the functional entry point the SCA block calls:
  softmax(q k^T * scale + bias) v of N pixel queries over P tokens per batch item,
  forward and backward. Reference: matmul + softmax on the N x P logits (small: P is
  the number of patterns), ``scaled_dot_product_attention`` with the bias as a float
  mask when they would exceed 2^24 elements; Triton: a flash-style
  forward (online softmax over token blocks, saves the log-sum-exp), a dq kernel
  and a dk/dv kernel (token-major: p^T, ds^T feed the dots untransposed) that
  reduces over pixel chunks into a partial buffer (deterministic, no atomics).
  The logits q k^T and do v^T are accumulated over 16/32-wide head-dim chunks, so
  register use does not grow with the head dim; dk/dv programs own one output chunk.
  ``tl.dot`` runs with ``input_precision="tf32x3"`` on the GPU (float32-level
  accuracy on tensor cores). GPU tiles per padded head dim are ``_GPU_TILES``
  (BLOCK_N 64, BLOCK_P 16, 8 warps, 1 stage) -- the same entries the sm_90 compile
  table (tests/kernels/compile_specs.py) lists (generic strides and the SCA block's unit head-dim
  strides), all with zero
  register spills on sm_90. Head dims above ``MAX_TRITON_HEAD_DIM`` = 128 fall
  back to the reference path (ClearAIR's widest SCA: 384 channels / 4 heads = 96).

Dispatch: ``impl`` / ``IRBLOCKS_KERNELS`` (see ``irblocks.kernels._dispatch``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from irblocks.registry import register

from . import _dispatch
from ._dispatch import block_size, empty, select, triton_available
from ._op import kernel_op

__all__ = ["membership_codes", "membership_codes_reference", "pattern_tokens",
           "pattern_attention", "pattern_attention_reference", "MAX_CODE_BITS",
           "MAX_TRITON_HEAD_DIM"]

MAX_CODE_BITS = 62
REFERENCE_MAX_LOGITS = 1 << 24


# =========================================================================== references
def membership_codes_reference(masks: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) binary (bool or {0,1}) -> (B, H*W) int64 codes, K <= 62."""
    b, k = masks.shape[:2]
    if k > MAX_CODE_BITS:
        raise ValueError(f"membership_codes: at most {MAX_CODE_BITS} masks fit a 64-bit code, got "
                         f"{k}")
    m = masks.reshape(b, k, masks.shape[2] * masks.shape[3]).to(torch.int64)
    shifts = torch.arange(k, device=masks.device, dtype=torch.int64).view(1, k, 1)
    return (m << shifts).sum(1)


def pattern_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                bias: torch.Tensor, scale: float) -> torch.Tensor:
    """q (B, h, N, d), k/v (B, h, P, d), bias (B, P) -> (B, h, N, d).

    Plain matmul + softmax (FlopCounterMode and torch.compile see through it) while the
    B x h x N x P logits stay below ``REFERENCE_MAX_LOGITS`` elements; beyond that
    (pathological masks with thousands of patterns) ``scaled_dot_product_attention`` with
    the bias as a float mask, which does not materialise them on the fused CPU path."""
    mask = bias[:, None, None, :].to(q.dtype)
    if q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] > REFERENCE_MAX_LOGITS:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return ((q @ k.transpose(-2, -1)) * scale + mask).softmax(-1) @ v


# =========================================================================== triton
if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _codes_kernel(m_ptr, out_ptr, K, N, s_mb, s_mk, s_mn, BLOCK_N: tl.constexpr):
        b = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        valid = offs < N
        code = tl.zeros([BLOCK_N], dtype=tl.int64)
        for kk in range(0, K):
            bit = tl.load(m_ptr + b * s_mb + kk * s_mk + offs * s_mn, mask=valid, other=0)
            code += (bit != 0).to(tl.int64) << kk
        tl.store(out_ptr + b * N + offs, code, mask=valid)

    @triton.jit
    def _segment_sum_kernel(x_ptr, idx_ptr, out_ptr, N, C, P, s_xb, s_xn, s_xc,
                            BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr):
        b = tl.program_id(0)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        vn = offs_n < N
        vc = offs_c < C
        m2 = vn[:, None] & vc[None, :]
        x = tl.load(x_ptr + b * s_xb + offs_n[:, None] * s_xn + offs_c[None, :] * s_xc, mask=m2,
                    other=0.0)
        p = tl.load(idx_ptr + b * N + offs_n, mask=vn, other=0)
        tl.atomic_add(out_ptr + (b * P + p[:, None]) * C + offs_c[None, :], x.to(tl.float32),
                      mask=m2)

    # The three attention kernels reduce over the head dim in chunks of BLOCK_DC columns
    # (q k^T and do v^T are sums of BLOCK_DC-wide tl.dot's, operands re-read per chunk
    # from L1/L2), so the registers they need do not grow with BLOCK_D; only the output
    # accumulators span BLOCK_D (forward, dq) or one BLOCK_DC chunk of it (dk/dv, whose
    # grid has one program per output chunk). Token-side tiles are small (P is the number
    # of mask patterns), pixel-side tiles stream.

    @triton.jit
    def _attn_fwd_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, lse_ptr,
                         N, P, HEADS, D, scale,
                         s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kp, s_kd,
                         s_vb, s_vh, s_vp, s_vd, s_bb, s_bp,
                         BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_DC: tl.constexpr, PREC: tl.constexpr):
        bh = tl.program_id(0)
        b = bh // HEADS
        h = bh % HEADS
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_c = tl.arange(0, BLOCK_DC)
        vn = offs_n < N
        vd = offs_d < D
        q_base = q_ptr + b * s_qb + h * s_qh + offs_n[:, None] * s_qn
        k_base = k_ptr + b * s_kb + h * s_kh
        m_i = tl.full([BLOCK_N], -float("inf"), tl.float32)
        l_i = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            vp = offs_p < P
            s = tl.zeros([BLOCK_N, BLOCK_P], tl.float32)
            for d0 in range(0, D, BLOCK_DC):
                dc = d0 + offs_c
                vc = dc < D
                q = tl.load(q_base + dc[None, :] * s_qd, mask=vn[:, None] & vc[None, :], other=0.0)
                kt = tl.load(k_base + offs_p[None, :] * s_kp + dc[:, None] * s_kd,
                             mask=vp[None, :] & vc[:, None], other=0.0)                    # (DC, P)
                s += tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision=PREC)
            bias = tl.load(bias_ptr + b * s_bb + offs_p * s_bp, mask=vp,
                           other=-float("inf")).to(tl.float32)
            s = s * scale + bias[None, :]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # rows whose every logit so far is -inf keep m = -inf; guard the exp
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            pexp = tl.exp(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(pexp, 1)
            vv = tl.load(v_ptr + b * s_vb + h * s_vh + offs_p[:, None] * s_vp
                         + offs_d[None, :] * s_vd,
                         mask=vp[:, None] & vd[None, :], other=0.0).to(tl.float32)  # (P, D)
            acc = acc * alpha[:, None] + tl.dot(pexp, vv, input_precision=PREC)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(o_ptr + (bh * N + offs_n[:, None]) * D + offs_d[None, :], out,
                 mask=vn[:, None] & vd[None, :])
        tl.store(lse_ptr + bh * N + offs_n, m_i + tl.log(l_i), mask=vn)

    @triton.jit
    def _attn_bwd_dq_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                            N, P, HEADS, D, scale,
                            s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kp, s_kd,
                            s_vb, s_vh, s_vp, s_vd, s_bb, s_bp,
                            BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                            BLOCK_DC: tl.constexpr, PREC: tl.constexpr):
        bh = tl.program_id(0)
        b = bh // HEADS
        h = bh % HEADS
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        offs_c = tl.arange(0, BLOCK_DC)
        vn = offs_n < N
        vd = offs_d < D
        q_base = q_ptr + b * s_qb + h * s_qh + offs_n[:, None] * s_qn
        do_base = do_ptr + (bh * N + offs_n[:, None]) * D
        k_base = k_ptr + b * s_kb + h * s_kh
        v_base = v_ptr + b * s_vb + h * s_vh
        lse = tl.load(lse_ptr + bh * N + offs_n, mask=vn, other=0.0)
        delta = tl.load(delta_ptr + bh * N + offs_n, mask=vn, other=0.0)
        dq = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for p0 in range(0, P, BLOCK_P):
            offs_p = p0 + tl.arange(0, BLOCK_P)
            vp = offs_p < P
            s = tl.zeros([BLOCK_N, BLOCK_P], tl.float32)
            dp = tl.zeros([BLOCK_N, BLOCK_P], tl.float32)
            for d0 in range(0, D, BLOCK_DC):
                dc = d0 + offs_c
                vc = dc < D
                mnc = vn[:, None] & vc[None, :]
                mcp = vc[:, None] & vp[None, :]
                q = tl.load(q_base + dc[None, :] * s_qd, mask=mnc, other=0.0).to(tl.float32)
                kt = tl.load(k_base + offs_p[None, :] * s_kp + dc[:, None] * s_kd, mask=mcp,
                             other=0.0)
                s += tl.dot(q, kt.to(tl.float32), input_precision=PREC)
                do = tl.load(do_base + dc[None, :], mask=mnc, other=0.0)
                vt = tl.load(v_base + offs_p[None, :] * s_vp + dc[:, None] * s_vd, mask=mcp,
                             other=0.0)
                dp += tl.dot(do, vt.to(tl.float32), input_precision=PREC)
            bias = tl.load(bias_ptr + b * s_bb + offs_p * s_bp, mask=vp,
                           other=-float("inf")).to(tl.float32)
            p = tl.exp(s * scale + bias[None, :] - lse[:, None])
            ds = p * (dp - delta[:, None])
            kk = tl.load(k_base + offs_p[:, None] * s_kp + offs_d[None, :] * s_kd,
                         mask=vp[:, None] & vd[None, :], other=0.0).to(tl.float32)          # (P, D)
            dq += tl.dot(ds, kk, input_precision=PREC)
        tl.store(dq_ptr + (bh * N + offs_n[:, None]) * D + offs_d[None, :], dq * scale,
                 mask=vn[:, None] & vd[None, :])

    @triton.jit
    def _attn_bwd_dkdv_kernel(q_ptr, k_ptr, v_ptr, bias_ptr, do_ptr, lse_ptr, delta_ptr,
                              dk_ptr, dv_ptr, N, P, HEADS, D, scale, CHUNK,
                              s_qb, s_qh, s_qn, s_qd, s_kb, s_kh, s_kp, s_kd,
                              s_vb, s_vh, s_vp, s_vd, s_bb, s_bp,
                              BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                              BLOCK_DC: tl.constexpr, PREC: tl.constexpr):
        # program (bh, token block x output column chunk, pixel chunk): partial dk, dv of its
        # tokens and BLOCK_DC head-dim columns over its pixels. Token-major (transposed) form:
        # p^T and ds^T are the A operands of the accumulating dots (no register transposes).
        NUM_DC: tl.constexpr = BLOCK_D // BLOCK_DC
        bh = tl.program_id(0)
        b = bh // HEADS
        h = bh % HEADS
        pb = tl.program_id(1) // NUM_DC
        oc = tl.program_id(1) % NUM_DC
        ch = tl.program_id(2)
        offs_p = pb * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_c = tl.arange(0, BLOCK_DC)
        offs_o = oc * BLOCK_DC + offs_c                   # this program's output columns
        vp = offs_p < P
        vo = offs_o < D
        k_base = k_ptr + b * s_kb + h * s_kh + offs_p[:, None] * s_kp
        v_base = v_ptr + b * s_vb + h * s_vh + offs_p[:, None] * s_vp
        q_base = q_ptr + b * s_qb + h * s_qh
        bias = tl.load(bias_ptr + b * s_bb + offs_p * s_bp, mask=vp,
                       other=-float("inf")).to(tl.float32)
        dk = tl.zeros([BLOCK_P, BLOCK_DC], tl.float32)
        dv = tl.zeros([BLOCK_P, BLOCK_DC], tl.float32)
        n_start = ch * CHUNK
        for n0 in range(n_start, n_start + CHUNK, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            vn = (offs_n < N) & (offs_n < n_start + CHUNK)
            st = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
            dpt = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
            for d0 in range(0, D, BLOCK_DC):
                dc = d0 + offs_c
                vc = dc < D
                mpc = vp[:, None] & vc[None, :]
                mcn = vc[:, None] & vn[None, :]
                # (P, DC)
                kk = tl.load(k_base + dc[None, :] * s_kd, mask=mpc, other=0.0).to(tl.float32)
                qt = tl.load(q_base + offs_n[None, :] * s_qn + dc[:, None] * s_qd, mask=mcn,
                             other=0.0)
                st += tl.dot(kk, qt.to(tl.float32), input_precision=PREC)  # (P, N)
                vv = tl.load(v_base + dc[None, :] * s_vd, mask=mpc, other=0.0).to(tl.float32)
                dot_ = tl.load(do_ptr + (bh * N + offs_n[None, :]) * D + dc[:, None], mask=mcn,
                               other=0.0)
                dpt += tl.dot(vv, dot_, input_precision=PREC)
            lse = tl.load(lse_ptr + bh * N + offs_n, mask=vn, other=float("inf"))
            delta = tl.load(delta_ptr + bh * N + offs_n, mask=vn, other=0.0)
            pt = tl.exp(st * scale + bias[:, None] - lse[None, :])
            pt = tl.where(vn[None, :], pt, 0.0)
            dst = pt * (dpt - delta[None, :])
            mno = vn[:, None] & vo[None, :]
            do = tl.load(do_ptr + (bh * N + offs_n[:, None]) * D + offs_o[None, :], mask=mno,
                         other=0.0)
            dv += tl.dot(pt, do, input_precision=PREC)
            q = tl.load(q_base + offs_n[:, None] * s_qn + offs_o[None, :] * s_qd, mask=mno,
                        other=0.0)
            dk += tl.dot(dst, q.to(tl.float32), input_precision=PREC)
        # partial buffers are (n_chunks, B * heads, P, D)
        out_off = ((ch * tl.num_programs(0) + bh) * P + offs_p[:, None]) * D + offs_o[None, :]
        mp = vp[:, None] & vo[None, :]
        tl.store(dk_ptr + out_off, dk * scale, mask=mp)
        tl.store(dv_ptr + out_off, dv, mask=mp)



# GPU tiles per padded head dim BLOCK_D: (BLOCK_N pixels, BLOCK_P tokens, BLOCK_DC head-dim chunk,
# num_warps, num_stages), the same for the forward, dq and dk/dv kernels. These are exactly the
# configs tests/kernels/compile_specs.py lists, checked for zero register spills on sm_90 by
# tests/kernels/test_compile_sm90.py (``python -m irblocks.kernels.report --module pattern_sca``
# prints registers/spills). One pipeline stage: the token loop is short (P = number of mask
# patterns) and deeper software pipelining of the streamed pixel tiles is what spilled.
_GPU_TILES = {16: (64, 16, 16, 8, 1), 32: (64, 16, 32, 8, 1), 64: (64, 16, 32, 8, 1),
              128: (64, 16, 32, 8, 1)}
# interpreter: tiny tiles, and 16-wide head-dim chunks so tests with d > 16 exercise the chunk loop
_INTERP_TILES = (16, 16, 16, 4, 1)
# tf32x3 = tensor cores with a split-float correction (float32-level accuracy); the interpreter
# ignores the precision and multiplies in float32.
_GPU_PREC = "tf32x3"
MAX_TRITON_HEAD_DIM = max(_GPU_TILES)


def _blocks(d: int):
    """(BLOCK_N, BLOCK_P, BLOCK_D, BLOCK_DC, launch options) for head dim d <=
    MAX_TRITON_HEAD_DIM."""
    bd = max(16, triton.next_power_of_2(d))
    gpu = _GPU_TILES[bd]
    bn, bp, dc, warps, stages = (block_size(gpu=g, interpreter=i)
                                 for g, i in zip(gpu, _INTERP_TILES))
    return bn, bp, bd, min(dc, bd), {"num_warps": warps, "num_stages": stages}


def _attn_fwd_triton(q, k, v, bias, scale):
    bsz, heads, n, d = q.shape
    p = k.shape[2]
    bn, bp, bd, dc, opts = _blocks(d)
    o = empty(bsz, heads, n, d, like=q, dtype=torch.float32)
    lse = empty(bsz, heads, n, like=q, dtype=torch.float32)
    grid = (bsz * heads, triton.cdiv(n, bn))
    _attn_fwd_kernel[grid](q, k, v, bias, o, lse, n, p, heads, d, float(scale),
                           *q.stride(), *k.stride(), *v.stride(), *bias.stride(),
                           BLOCK_N=bn, BLOCK_P=bp, BLOCK_D=bd, BLOCK_DC=dc, PREC=_GPU_PREC, **opts)
    return o, lse


def _attn_bwd_triton(q, k, v, bias, scale, o, lse, do):
    bsz, heads, n, d = q.shape
    p = k.shape[2]
    bn, bp, bd, dc, opts = _blocks(d)
    do = do.to(torch.float32).contiguous()
    delta = (do * o).sum(-1).contiguous()                       # (B, h, N)
    dq = empty(bsz, heads, n, d, like=q, dtype=torch.float32)
    strides = (*q.stride(), *k.stride(), *v.stride(), *bias.stride())
    consts = dict(BLOCK_N=bn, BLOCK_P=bp, BLOCK_D=bd, BLOCK_DC=dc, PREC=_GPU_PREC, **opts)
    _attn_bwd_dq_kernel[(bsz * heads, triton.cdiv(n, bn))](
        q, k, v, bias, do, lse, delta, dq, n, p, heads, d, float(scale), *strides, **consts)
    chunk = max(bn, triton.cdiv(triton.cdiv(n, 8), bn) * bn)   # <= 8 pixel chunks per token block
    n_chunks = triton.cdiv(n, chunk)
    dk_part = empty(n_chunks, bsz * heads, p, d, like=q, dtype=torch.float32)
    dv_part = empty(n_chunks, bsz * heads, p, d, like=q, dtype=torch.float32)
    # axis 1: token blocks x output head-dim chunks (BLOCK_D // BLOCK_DC per token block)
    _attn_bwd_dkdv_kernel[(bsz * heads, triton.cdiv(p, bp) * (bd // dc), n_chunks)](
        q, k, v, bias, do, lse, delta, dk_part, dv_part, n, p, heads, d, float(scale), chunk,
        *strides, **consts)
    dk = dk_part.sum(0).view(bsz, heads, p, d)
    dv = dv_part.sum(0).view(bsz, heads, p, d)
    return dq, dk, dv


# =========================================================================== custom op
def _flops_attention(q_shape, k_shape) -> int:
    bsz, heads, n, d = q_shape
    p = k_shape[2]
    return 2 * 2 * bsz * heads * n * p * d     # q k^T and p v, 2 flops per multiply-add


def _flop_attention_bwd(q_shape, k_shape, *args, **kwargs) -> int:
    return 2 * _flops_attention(q_shape, k_shape)    # dq, dk, dv, dp: twice the forward


def _codes_fake(masks):
    return masks.new_empty(masks.shape[0], masks.shape[2] * masks.shape[3], dtype=torch.int64)


@kernel_op("pattern_codes", fake=_codes_fake)        # bit packing: no multiply-adds
def _codes_op(masks: torch.Tensor) -> torch.Tensor:
    b, k, h, w = masks.shape
    # integer output: under tests fill with -1 (codes are >= 0) instead of NaN
    out = torch.empty(b, h * w, device=masks.device, dtype=torch.int64)
    if _dispatch.OUTPUT_FILL[0] is not None:
        out.fill_(-1)
    bn = block_size(gpu=1024, interpreter=64)
    # (B, K, H, W) with any strides: index pixels through a (B, K, H*W) view when possible
    m = masks if masks.stride(2) == w * masks.stride(3) else masks.contiguous()
    _codes_kernel[(b, triton.cdiv(h * w, bn))](m, out, k, h * w, m.stride(0), m.stride(1),
                                               m.stride(3), BLOCK_N=bn)
    return out


def _segment_sum_fake(src, inverse, num_patterns):
    return src.new_empty(src.shape[0], num_patterns, src.shape[1])


def _segsum_setup(ctx, inputs, output):
    src, inverse, _ = inputs
    ctx.save_for_backward(inverse)
    ctx.shape = src.shape


def _segsum_backward(ctx, dsums):
    (inverse,) = ctx.saved_tensors
    b, c, h, w = ctx.shape
    g = torch.gather(dsums, 1, inverse.unsqueeze(-1).expand(b, h * w, c))      # (B, N, C)
    return g.view(b, h, w, c).permute(0, 3, 1, 2), None, None


# a scatter-add reduction: 0 FLOPs
@kernel_op("pattern_segment_sum", fake=_segment_sum_fake, backward=_segsum_backward,
           setup_context=_segsum_setup)
def _segment_sum_op(src: torch.Tensor, inverse: torch.Tensor, num_patterns: int) -> torch.Tensor:
    """(B, C, H, W), (B, H*W) pattern index -> (B, P, C) per-pattern feature sums."""
    b, c, h, w = src.shape
    n = h * w
    flat = src.permute(0, 2, 3, 1)
    if flat.stride(1) != w * flat.stride(2):
        flat = flat.contiguous()
    flat = flat.reshape(b, n, c)
    sums = torch.zeros(b, num_patterns, c, device=src.device, dtype=torch.float32)
    bn, bc = block_size(gpu=128, interpreter=16), block_size(gpu=32, interpreter=16)
    _segment_sum_kernel[(b, triton.cdiv(n, bn), triton.cdiv(c, bc))](
        flat, inverse.contiguous(), sums, n, c, num_patterns, *flat.stride(), BLOCK_N=bn,
        BLOCK_C=bc)
    return sums.to(src.dtype)


def _attention_fake(q, k, v, bias, scale):
    bsz, heads, n, d = q.shape
    return q.new_empty(bsz, heads, n, d), q.new_empty(bsz, heads, n, dtype=torch.float32)


def _attention_bwd_fake(q, k, v, bias, scale, o, lse, do):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@kernel_op("pattern_attention_bwd", fake=_attention_bwd_fake, flops=_flop_attention_bwd)
def _pattern_attention_bwd_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                              scale: float, o: torch.Tensor, lse: torch.Tensor,
                              do: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _attn_bwd_triton(q, k, v, bias, scale, o.to(torch.float32), lse, do)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, bias, o, lse)
    ctx.scale = scale


def _backward(ctx, do, dlse):
    q, k, v, bias, o, lse = ctx.saved_tensors
    dq, dk, dv = _pattern_attention_bwd_op(q, k, v, bias, ctx.scale, o, lse, do.contiguous())
    return dq, dk, dv, None, None


@kernel_op("pattern_attention", fake=_attention_fake, backward=_backward,
           setup_context=_setup_context,
           flops=lambda q_shape, k_shape, *args, **kwargs: _flops_attention(q_shape, k_shape))
def _pattern_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                          scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    o, lse = _attn_fwd_triton(q, k, v, bias, scale)
    return o.to(q.dtype), lse


# =========================================================================== entry points
@register("kernel", "membership_codes")
def membership_codes(masks: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """(B, K, H, W) binary masks -> (B, H*W) int64 membership codes (bit k = mask k), K <= 62."""
    b, k, h, w = masks.shape
    if k > MAX_CODE_BITS:
        raise ValueError(f"membership_codes: at most {MAX_CODE_BITS} masks fit a 64-bit code, got "
                         f"{k}")
    if select(impl, masks) == "reference" or k == 0 or h * w == 0:
        return membership_codes_reference(masks)
    m = masks.to(torch.uint8) if masks.dtype == torch.bool else masks
    return _codes_op(m)


def _unique_patterns(masks: torch.Tensor, impl: str | None):
    """Per image: inverse (N,), counts (P,), membership (P, K) bool."""
    b, k = masks.shape[:2]
    res = []
    if k <= MAX_CODE_BITS:
        codes = membership_codes(masks, impl)
        shifts = torch.arange(k, device=masks.device, dtype=torch.int64)
        for i in range(b):
            uniq, inv, cnt = torch.unique(codes[i], return_inverse=True, return_counts=True)
            res.append((inv, cnt, ((uniq[:, None] >> shifts) & 1).bool()))
    else:
        rows = masks.reshape(b, k, masks.shape[2] * masks.shape[3]).transpose(1, 2).bool()
        for i in range(b):
            uniq, inv, cnt = torch.unique(rows[i], dim=0, return_inverse=True, return_counts=True)
            res.append((inv, cnt, uniq))
    return res


@register("kernel", "pattern_tokens")
def pattern_tokens(masks: torch.Tensor, src: torch.Tensor, impl: str | None = None):
    """Pattern tokens of a feature map.

    Args:
        masks: (B, K, H, W) binary masks (bool or {0, 1}) at the feature's resolution.
        src: (B, C, H, W) feature to pool (any memory layout).

    Returns:
        tokens (B, P, C): per pattern, the sum over its masks of the mask's mean feature
            (the MAP value of its pixels; 0 for the empty pattern and for padding);
        bias (B, P): log(pattern area), ``-inf`` for padding slots;
        inverse (B, H*W) int64: pattern index of every pixel.
    P is the largest number of distinct patterns over the batch. On the meta device
    (size/FLOP counting) P is taken as K + 1.
    """
    b, k, h, w = masks.shape
    c = src.shape[1]
    n = h * w
    if src.shape[0] != b or tuple(src.shape[-2:]) != (h, w):
        raise ValueError(f"pattern_tokens: masks {tuple(masks.shape)} and feature "
                         f"{tuple(src.shape)} must share B, H and W")
    if src.device.type == "meta" or masks.device.type == "meta":
        p = min(n, k + 1)
        return (src.new_zeros(b, p, c), src.new_zeros(b, p),
                torch.zeros(b, n, dtype=torch.int64, device=src.device))
    per = _unique_patterns(masks, impl)
    pmax = max(int(cnt.numel()) for _, cnt, _ in per)
    inverse = torch.stack([inv.reshape(-1) for inv, _, _ in per])                       # (B, N)
    counts = torch.zeros(b, pmax, dtype=src.dtype, device=src.device)
    memb = torch.zeros(b, pmax, k, dtype=src.dtype, device=src.device)
    for i, (_, cnt, mb) in enumerate(per):
        counts[i, : cnt.numel()] = cnt.to(src.dtype)
        memb[i, : mb.shape[0]] = mb.to(src.dtype)
    flat = src.permute(0, 2, 3, 1).reshape(b, n, c)   # a view for channels_last input
    if select(impl, src) == "triton":
        sums = _segment_sum_op(src, inverse, pmax)
    else:
        idx = (inverse + torch.arange(b, device=src.device).view(b, 1) * pmax).reshape(-1)
        sums = torch.zeros(b * pmax, c, device=src.device, dtype=src.dtype).index_add(
            0, idx, flat.reshape(b * n, c)).view(b, pmax, c)
    mt = memb.transpose(1, 2)                                    # (B, K, P)
    area = (mt @ counts.unsqueeze(-1))                           # (B, K, 1) mask areas
    means = (mt @ sums) / area.clamp_min(1)                      # (B, K, C) mask means
    tokens = memb @ means                                        # (B, P, C)
    bias = torch.where(counts > 0, counts.clamp_min(1).log(), torch.full_like(counts, -math.inf))
    return tokens, bias, inverse


@register("kernel", "pattern_attention")
def pattern_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      scale: float, impl: str | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over pattern tokens.

    Args:
        q: (B, heads, N, d) pixel queries (any strides).
        k, v: (B, heads, P, d) token keys / values.
        bias: (B, P) log-area bias; ``-inf`` marks padding (every row needs one finite entry).
        scale: logit scale (d ** -0.5 in ClearAIR).
    Returns (B, heads, N, d); differentiable in q, k and v (not in bias).
    Head dims d > ``MAX_TRITON_HEAD_DIM`` (128) always take the reference path (even with
    ``impl="triton"``): the GPU configs cover padded head dims 16..128 only.
    """
    if q.dim() != 4 or k.shape != v.shape or k.shape[:2] != q.shape[:2] \
            or k.shape[-1] != q.shape[-1] or tuple(bias.shape) != (k.shape[0], k.shape[2]):
        raise ValueError("pattern_attention: expected q (B,h,N,d), k = v (B,h,P,d), bias (B,P); "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, bias "
                         f"{tuple(bias.shape)}")
    if select(impl, q, k, v) == "reference" or q.shape[-1] > MAX_TRITON_HEAD_DIM:
        # head dims above MAX_TRITON_HEAD_DIM (128) have no spill-free GPU config: reference path
        return pattern_attention_reference(q, k, v, bias, scale)
    out, _ = _pattern_attention_op(q, k, v, bias.detach(), float(scale))
    return out


