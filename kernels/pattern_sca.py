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
  (BLOCK_SIZE_N 64, BLOCK_SIZE_P 16, 8 warps, 1 stage) -- the same entries the sm_90
  compile table (tests/kernels/compile_specs.py) lists (generic strides and the SCA block's
  unit head-dim strides), all with zero register spills on sm_90. Head dims above
  ``MAX_TRITON_HEAD_DIM`` = 128 fall back to the reference path (ClearAIR's widest SCA: 384
  channels / 4 heads = 96).

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
    def _codes_kernel(
        masks_ptr,  # binary masks, (B, K, H * W) view, bool / uint8 / any integer dtype
        codes_ptr,  # output membership codes, (B, H * W), int64, contiguous
        num_masks,  # K <= 62 (bit k of a code is mask k)
        num_pixels,  # H * W
        masks_stride_batch,  # stride of masks along B
        masks_stride_mask,  # stride of masks along K
        masks_stride_pixel,  # stride of masks along H * W
        BLOCK_SIZE: tl.constexpr,  # pixels per program
    ):
        batch = tl.program_id(0)
        pixel = tl.program_id(1) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        pixel_mask = pixel < num_pixels
        code = tl.zeros([BLOCK_SIZE], dtype=tl.int64)
        for mask_index in range(0, num_masks):
            bit = tl.load(masks_ptr + batch * masks_stride_batch + mask_index * masks_stride_mask
                          + pixel * masks_stride_pixel, mask=pixel_mask, other=0)
            code += (bit != 0).to(tl.int64) << mask_index
        tl.store(codes_ptr + batch * num_pixels + pixel, code, mask=pixel_mask)

    @triton.jit
    def _segment_sum_kernel(
        x_ptr,  # pixel features, (B, N, C) view, any strides
        pattern_index_ptr,  # pattern of each pixel, (B, N), int64, contiguous
        sums_ptr,  # output per-pattern sums, (B, P, C), float32, contiguous, zero-filled
        num_pixels,  # N = H * W
        channels,  # C
        num_patterns,  # P
        x_stride_batch,  # stride of x along B
        x_stride_pixel,  # stride of x along N
        x_stride_channel,  # stride of x along C
        BLOCK_SIZE_N: tl.constexpr,  # pixels per program
        BLOCK_SIZE_C: tl.constexpr,  # channels per program
    ):
        batch = tl.program_id(0)
        pixel = tl.program_id(1) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        channel = tl.program_id(2) * BLOCK_SIZE_C + tl.arange(0, BLOCK_SIZE_C)
        pixel_mask = pixel < num_pixels
        channel_mask = channel < channels
        mask = pixel_mask[:, None] & channel_mask[None, :]
        x = tl.load(x_ptr + batch * x_stride_batch + pixel[:, None] * x_stride_pixel
                    + channel[None, :] * x_stride_channel, mask=mask, other=0.0)
        pattern = tl.load(pattern_index_ptr + batch * num_pixels + pixel, mask=pixel_mask,
                          other=0)
        tl.atomic_add(sums_ptr + (batch * num_patterns + pattern[:, None]) * channels
                      + channel[None, :], x.to(tl.float32), mask=mask)

    # The three attention kernels reduce over the head dim in chunks of BLOCK_SIZE_DC columns
    # (q k^T and do v^T are sums of BLOCK_SIZE_DC-wide tl.dot's, operands re-read per chunk
    # from L1/L2), so the registers they need do not grow with BLOCK_SIZE_D; only the output
    # accumulators span BLOCK_SIZE_D (forward, dq) or one BLOCK_SIZE_DC chunk of it (dk/dv,
    # whose grid has one program per output chunk). Token-side tiles are small (P is the
    # number of mask patterns), pixel-side tiles stream.

    @triton.jit
    def _attn_fwd_kernel(
        q_ptr,  # pixel queries, (B, heads, N, D), any strides
        k_ptr,  # pattern-token keys, (B, heads, P, D), any strides
        v_ptr,  # pattern-token values, (B, heads, P, D), any strides
        bias_ptr,  # log pattern area per token (-inf on padding), (B, P)
        out_ptr,  # output softmax(q k^T * scale + bias) v, (B, heads, N, D), float32, contiguous
        lse_ptr,  # output log-sum-exp of each query's logits, (B, heads, N), float32, contiguous
        num_pixels,  # N, queries
        num_tokens,  # P, pattern tokens
        heads,  # attention heads
        head_dim,  # D
        scale,  # logit scale, float32
        q_stride_batch,  # stride of q along B
        q_stride_head,  # stride of q along heads
        q_stride_pixel,  # stride of q along N
        q_stride_dim,  # stride of q along D
        k_stride_batch,  # stride of k along B
        k_stride_head,  # stride of k along heads
        k_stride_token,  # stride of k along P
        k_stride_dim,  # stride of k along D
        v_stride_batch,  # stride of v along B
        v_stride_head,  # stride of v along heads
        v_stride_token,  # stride of v along P
        v_stride_dim,  # stride of v along D
        bias_stride_batch,  # stride of bias along B
        bias_stride_token,  # stride of bias along P
        BLOCK_SIZE_N: tl.constexpr,  # queries per program
        BLOCK_SIZE_P: tl.constexpr,  # tokens per step of the online softmax
        BLOCK_SIZE_D: tl.constexpr,  # head_dim padded to a power of 2 >= 16
        BLOCK_SIZE_DC: tl.constexpr,  # head-dim chunk of the q k^T reduction
        INPUT_PRECISION: tl.constexpr,  # tl.dot input_precision ("tf32x3" on the GPU)
    ):
        batch_head = tl.program_id(0)
        batch = batch_head // heads
        head = batch_head % heads
        offs_n = tl.program_id(1) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        offs_d = tl.arange(0, BLOCK_SIZE_D)
        offs_dc = tl.arange(0, BLOCK_SIZE_DC)
        pixel_mask = offs_n < num_pixels
        dim_mask = offs_d < head_dim
        q_rows_ptr = (q_ptr + batch * q_stride_batch + head * q_stride_head
                      + offs_n[:, None] * q_stride_pixel)
        k_head_ptr = k_ptr + batch * k_stride_batch + head * k_stride_head
        running_max = tl.full([BLOCK_SIZE_N], -float("inf"), tl.float32)
        running_sum = tl.zeros([BLOCK_SIZE_N], tl.float32)
        acc = tl.zeros([BLOCK_SIZE_N, BLOCK_SIZE_D], tl.float32)
        for token_start in range(0, num_tokens, BLOCK_SIZE_P):
            offs_p = token_start + tl.arange(0, BLOCK_SIZE_P)
            token_mask = offs_p < num_tokens
            logits = tl.zeros([BLOCK_SIZE_N, BLOCK_SIZE_P], tl.float32)
            for dim_start in range(0, head_dim, BLOCK_SIZE_DC):
                chunk = dim_start + offs_dc
                chunk_mask = chunk < head_dim
                q = tl.load(q_rows_ptr + chunk[None, :] * q_stride_dim,
                            mask=pixel_mask[:, None] & chunk_mask[None, :], other=0.0)
                k_t = tl.load(k_head_ptr + offs_p[None, :] * k_stride_token
                              + chunk[:, None] * k_stride_dim,
                              mask=token_mask[None, :] & chunk_mask[:, None], other=0.0)  # (DC, P)
                logits += tl.dot(q.to(tl.float32), k_t.to(tl.float32),
                                 input_precision=INPUT_PRECISION)
            bias = tl.load(bias_ptr + batch * bias_stride_batch + offs_p * bias_stride_token,
                           mask=token_mask, other=-float("inf")).to(tl.float32)
            logits = logits * scale + bias[None, :]
            new_max = tl.maximum(running_max, tl.max(logits, 1))
            # rows whose every logit so far is -inf keep the max at -inf; guard the exp
            safe_max = tl.where(new_max == -float("inf"), 0.0, new_max)
            rescale = tl.exp(running_max - safe_max)
            probs = tl.exp(logits - safe_max[:, None])   # unnormalised
            running_sum = running_sum * rescale + tl.sum(probs, 1)
            v = tl.load(v_ptr + batch * v_stride_batch + head * v_stride_head
                        + offs_p[:, None] * v_stride_token + offs_d[None, :] * v_stride_dim,
                        mask=token_mask[:, None] & dim_mask[None, :],
                        other=0.0).to(tl.float32)  # (P, D)
            acc = acc * rescale[:, None] + tl.dot(probs, v, input_precision=INPUT_PRECISION)
            running_max = new_max
        out = acc / running_sum[:, None]
        tl.store(out_ptr + (batch_head * num_pixels + offs_n[:, None]) * head_dim
                 + offs_d[None, :], out, mask=pixel_mask[:, None] & dim_mask[None, :])
        tl.store(lse_ptr + batch_head * num_pixels + offs_n, running_max + tl.log(running_sum),
                 mask=pixel_mask)

    @triton.jit
    def _attn_bwd_dq_kernel(
        q_ptr,  # pixel queries, (B, heads, N, D), any strides
        k_ptr,  # pattern-token keys, (B, heads, P, D), any strides
        v_ptr,  # pattern-token values, (B, heads, P, D), any strides
        bias_ptr,  # log pattern area per token (-inf on padding), (B, P)
        dout_ptr,  # gradient of the output, (B, heads, N, D), float32, contiguous
        lse_ptr,  # forward log-sum-exp, (B, heads, N), float32, contiguous
        delta_ptr,  # rowsum(dout * out), (B, heads, N), float32, contiguous
        dq_ptr,  # output gradient of q, (B, heads, N, D), float32, contiguous
        num_pixels,  # N, queries
        num_tokens,  # P, pattern tokens
        heads,  # attention heads
        head_dim,  # D
        scale,  # logit scale, float32
        q_stride_batch,  # stride of q along B
        q_stride_head,  # stride of q along heads
        q_stride_pixel,  # stride of q along N
        q_stride_dim,  # stride of q along D
        k_stride_batch,  # stride of k along B
        k_stride_head,  # stride of k along heads
        k_stride_token,  # stride of k along P
        k_stride_dim,  # stride of k along D
        v_stride_batch,  # stride of v along B
        v_stride_head,  # stride of v along heads
        v_stride_token,  # stride of v along P
        v_stride_dim,  # stride of v along D
        bias_stride_batch,  # stride of bias along B
        bias_stride_token,  # stride of bias along P
        BLOCK_SIZE_N: tl.constexpr,  # queries per program
        BLOCK_SIZE_P: tl.constexpr,  # tokens per step
        BLOCK_SIZE_D: tl.constexpr,  # head_dim padded to a power of 2 >= 16
        BLOCK_SIZE_DC: tl.constexpr,  # head-dim chunk of the q k^T and dout v^T reductions
        INPUT_PRECISION: tl.constexpr,  # tl.dot input_precision ("tf32x3" on the GPU)
    ):
        batch_head = tl.program_id(0)
        batch = batch_head // heads
        head = batch_head % heads
        offs_n = tl.program_id(1) * BLOCK_SIZE_N + tl.arange(0, BLOCK_SIZE_N)
        offs_d = tl.arange(0, BLOCK_SIZE_D)
        offs_dc = tl.arange(0, BLOCK_SIZE_DC)
        pixel_mask = offs_n < num_pixels
        dim_mask = offs_d < head_dim
        q_rows_ptr = (q_ptr + batch * q_stride_batch + head * q_stride_head
                      + offs_n[:, None] * q_stride_pixel)
        dout_rows_ptr = dout_ptr + (batch_head * num_pixels + offs_n[:, None]) * head_dim
        k_head_ptr = k_ptr + batch * k_stride_batch + head * k_stride_head
        v_head_ptr = v_ptr + batch * v_stride_batch + head * v_stride_head
        lse = tl.load(lse_ptr + batch_head * num_pixels + offs_n, mask=pixel_mask, other=0.0)
        delta = tl.load(delta_ptr + batch_head * num_pixels + offs_n, mask=pixel_mask, other=0.0)
        dq = tl.zeros([BLOCK_SIZE_N, BLOCK_SIZE_D], tl.float32)
        for token_start in range(0, num_tokens, BLOCK_SIZE_P):
            offs_p = token_start + tl.arange(0, BLOCK_SIZE_P)
            token_mask = offs_p < num_tokens
            logits = tl.zeros([BLOCK_SIZE_N, BLOCK_SIZE_P], tl.float32)
            dprobs = tl.zeros([BLOCK_SIZE_N, BLOCK_SIZE_P], tl.float32)
            for dim_start in range(0, head_dim, BLOCK_SIZE_DC):
                chunk = dim_start + offs_dc
                chunk_mask = chunk < head_dim
                pixel_chunk_mask = pixel_mask[:, None] & chunk_mask[None, :]
                chunk_token_mask = chunk_mask[:, None] & token_mask[None, :]
                q = tl.load(q_rows_ptr + chunk[None, :] * q_stride_dim, mask=pixel_chunk_mask,
                            other=0.0).to(tl.float32)
                k_t = tl.load(k_head_ptr + offs_p[None, :] * k_stride_token
                              + chunk[:, None] * k_stride_dim, mask=chunk_token_mask, other=0.0)
                logits += tl.dot(q, k_t.to(tl.float32), input_precision=INPUT_PRECISION)
                dout = tl.load(dout_rows_ptr + chunk[None, :], mask=pixel_chunk_mask, other=0.0)
                v_t = tl.load(v_head_ptr + offs_p[None, :] * v_stride_token
                              + chunk[:, None] * v_stride_dim, mask=chunk_token_mask, other=0.0)
                dprobs += tl.dot(dout, v_t.to(tl.float32), input_precision=INPUT_PRECISION)
            bias = tl.load(bias_ptr + batch * bias_stride_batch + offs_p * bias_stride_token,
                           mask=token_mask, other=-float("inf")).to(tl.float32)
            probs = tl.exp(logits * scale + bias[None, :] - lse[:, None])
            dlogits = probs * (dprobs - delta[:, None])
            k = tl.load(k_head_ptr + offs_p[:, None] * k_stride_token
                        + offs_d[None, :] * k_stride_dim,
                        mask=token_mask[:, None] & dim_mask[None, :],
                        other=0.0).to(tl.float32)  # (P, D)
            dq += tl.dot(dlogits, k, input_precision=INPUT_PRECISION)
        tl.store(dq_ptr + (batch_head * num_pixels + offs_n[:, None]) * head_dim
                 + offs_d[None, :], dq * scale, mask=pixel_mask[:, None] & dim_mask[None, :])

    @triton.jit
    def _attn_bwd_dkdv_kernel(
        q_ptr,  # pixel queries, (B, heads, N, D), any strides
        k_ptr,  # pattern-token keys, (B, heads, P, D), any strides
        v_ptr,  # pattern-token values, (B, heads, P, D), any strides
        bias_ptr,  # log pattern area per token (-inf on padding), (B, P)
        dout_ptr,  # gradient of the output, (B, heads, N, D), float32, contiguous
        lse_ptr,  # forward log-sum-exp, (B, heads, N), float32, contiguous
        delta_ptr,  # rowsum(dout * out), (B, heads, N), float32, contiguous
        dk_partial_ptr,  # output partial dk per pixel chunk, (chunks, B * heads, P, D), float32
        dv_partial_ptr,  # output partial dv per pixel chunk, (chunks, B * heads, P, D), float32
        num_pixels,  # N, queries
        num_tokens,  # P, pattern tokens
        heads,  # attention heads
        head_dim,  # D
        scale,  # logit scale, float32
        pixels_per_chunk,  # pixels each program reduces over (a multiple of BLOCK_SIZE_N)
        q_stride_batch,  # stride of q along B
        q_stride_head,  # stride of q along heads
        q_stride_pixel,  # stride of q along N
        q_stride_dim,  # stride of q along D
        k_stride_batch,  # stride of k along B
        k_stride_head,  # stride of k along heads
        k_stride_token,  # stride of k along P
        k_stride_dim,  # stride of k along D
        v_stride_batch,  # stride of v along B
        v_stride_head,  # stride of v along heads
        v_stride_token,  # stride of v along P
        v_stride_dim,  # stride of v along D
        bias_stride_batch,  # stride of bias along B
        bias_stride_token,  # stride of bias along P
        BLOCK_SIZE_N: tl.constexpr,  # pixels per step
        BLOCK_SIZE_P: tl.constexpr,  # tokens per program
        BLOCK_SIZE_D: tl.constexpr,  # head_dim padded to a power of 2 >= 16
        BLOCK_SIZE_DC: tl.constexpr,  # head-dim chunk: reductions and this program's columns
        INPUT_PRECISION: tl.constexpr,  # tl.dot input_precision ("tf32x3" on the GPU)
    ):
        # program (batch_head, token block x output column chunk, pixel chunk): partial dk, dv
        # of its tokens and BLOCK_SIZE_DC head-dim columns over its pixels. Token-major
        # (transposed) form: p^T and ds^T are the A operands of the accumulating dots (no
        # register transposes).
        NUM_DIM_CHUNKS: tl.constexpr = BLOCK_SIZE_D // BLOCK_SIZE_DC
        batch_head = tl.program_id(0)
        batch = batch_head // heads
        head = batch_head % heads
        token_block = tl.program_id(1) // NUM_DIM_CHUNKS
        out_chunk = tl.program_id(1) % NUM_DIM_CHUNKS
        pixel_chunk = tl.program_id(2)
        offs_p = token_block * BLOCK_SIZE_P + tl.arange(0, BLOCK_SIZE_P)
        offs_dc = tl.arange(0, BLOCK_SIZE_DC)
        offs_out = out_chunk * BLOCK_SIZE_DC + offs_dc     # this program's output columns
        token_mask = offs_p < num_tokens
        out_mask = offs_out < head_dim
        k_rows_ptr = (k_ptr + batch * k_stride_batch + head * k_stride_head
                      + offs_p[:, None] * k_stride_token)
        v_rows_ptr = (v_ptr + batch * v_stride_batch + head * v_stride_head
                      + offs_p[:, None] * v_stride_token)
        q_head_ptr = q_ptr + batch * q_stride_batch + head * q_stride_head
        bias = tl.load(bias_ptr + batch * bias_stride_batch + offs_p * bias_stride_token,
                       mask=token_mask, other=-float("inf")).to(tl.float32)
        dk = tl.zeros([BLOCK_SIZE_P, BLOCK_SIZE_DC], tl.float32)
        dv = tl.zeros([BLOCK_SIZE_P, BLOCK_SIZE_DC], tl.float32)
        chunk_start = pixel_chunk * pixels_per_chunk
        for pixel_start in range(chunk_start, chunk_start + pixels_per_chunk, BLOCK_SIZE_N):
            offs_n = pixel_start + tl.arange(0, BLOCK_SIZE_N)
            pixel_mask = (offs_n < num_pixels) & (offs_n < chunk_start + pixels_per_chunk)
            logits_t = tl.zeros([BLOCK_SIZE_P, BLOCK_SIZE_N], tl.float32)
            dprobs_t = tl.zeros([BLOCK_SIZE_P, BLOCK_SIZE_N], tl.float32)
            for dim_start in range(0, head_dim, BLOCK_SIZE_DC):
                chunk = dim_start + offs_dc
                chunk_mask = chunk < head_dim
                token_chunk_mask = token_mask[:, None] & chunk_mask[None, :]
                chunk_pixel_mask = chunk_mask[:, None] & pixel_mask[None, :]
                # (P, DC)
                k = tl.load(k_rows_ptr + chunk[None, :] * k_stride_dim, mask=token_chunk_mask,
                            other=0.0).to(tl.float32)
                q_t = tl.load(q_head_ptr + offs_n[None, :] * q_stride_pixel
                              + chunk[:, None] * q_stride_dim, mask=chunk_pixel_mask, other=0.0)
                logits_t += tl.dot(k, q_t.to(tl.float32),
                                   input_precision=INPUT_PRECISION)  # (P, N)
                v = tl.load(v_rows_ptr + chunk[None, :] * v_stride_dim, mask=token_chunk_mask,
                            other=0.0).to(tl.float32)
                dout_t = tl.load(dout_ptr
                                 + (batch_head * num_pixels + offs_n[None, :]) * head_dim
                                 + chunk[:, None], mask=chunk_pixel_mask, other=0.0)
                dprobs_t += tl.dot(v, dout_t, input_precision=INPUT_PRECISION)
            lse = tl.load(lse_ptr + batch_head * num_pixels + offs_n, mask=pixel_mask,
                          other=float("inf"))
            delta = tl.load(delta_ptr + batch_head * num_pixels + offs_n, mask=pixel_mask,
                            other=0.0)
            probs_t = tl.exp(logits_t * scale + bias[:, None] - lse[None, :])
            probs_t = tl.where(pixel_mask[None, :], probs_t, 0.0)
            dlogits_t = probs_t * (dprobs_t - delta[None, :])
            pixel_out_mask = pixel_mask[:, None] & out_mask[None, :]
            dout = tl.load(dout_ptr + (batch_head * num_pixels + offs_n[:, None]) * head_dim
                           + offs_out[None, :], mask=pixel_out_mask, other=0.0)
            dv += tl.dot(probs_t, dout, input_precision=INPUT_PRECISION)
            q = tl.load(q_head_ptr + offs_n[:, None] * q_stride_pixel
                        + offs_out[None, :] * q_stride_dim, mask=pixel_out_mask, other=0.0)
            dk += tl.dot(dlogits_t, q.to(tl.float32), input_precision=INPUT_PRECISION)
        # partial buffers are (n_chunks, B * heads, P, D)
        partial_offsets = (((pixel_chunk * tl.num_programs(0) + batch_head) * num_tokens
                            + offs_p[:, None]) * head_dim + offs_out[None, :])
        token_out_mask = token_mask[:, None] & out_mask[None, :]
        tl.store(dk_partial_ptr + partial_offsets, dk * scale, mask=token_out_mask)
        tl.store(dv_partial_ptr + partial_offsets, dv, mask=token_out_mask)



# GPU tiles per padded head dim BLOCK_SIZE_D: (BLOCK_SIZE_N pixels, BLOCK_SIZE_P tokens,
# BLOCK_SIZE_DC head-dim chunk, num_warps, num_stages), the same for the forward, dq and dk/dv
# kernels. These are exactly the configs tests/kernels/compile_specs.py lists, checked for zero
# register spills on sm_90 by tests/kernels/test_compile_sm90.py
# (``python -m irblocks.kernels.report --module pattern_sca`` prints registers/spills). One
# pipeline stage: the token loop is short (P = number of mask patterns) and deeper software
# pipelining of the streamed pixel tiles is what spilled.
_GPU_TILES = {16: (64, 16, 16, 8, 1), 32: (64, 16, 32, 8, 1), 64: (64, 16, 32, 8, 1),
              128: (64, 16, 32, 8, 1)}
# interpreter: tiny tiles, and 16-wide head-dim chunks so tests with d > 16 exercise the chunk loop
_INTERP_TILES = (16, 16, 16, 4, 1)
# tf32x3 = tensor cores with a split-float correction (float32-level accuracy); the interpreter
# ignores the precision and multiplies in float32.
_GPU_PREC = "tf32x3"
MAX_TRITON_HEAD_DIM = max(_GPU_TILES)


def _blocks(d: int):
    """(BLOCK_SIZE_N, BLOCK_SIZE_P, BLOCK_SIZE_D, BLOCK_SIZE_DC, launch options) for head dim
    d <= MAX_TRITON_HEAD_DIM."""
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
    _attn_fwd_kernel[grid](
        q,
        k,
        v,
        bias,
        o,
        lse,
        n,
        p,
        heads,
        d,
        float(scale),
        *q.stride(),  # q_stride_batch, q_stride_head, q_stride_pixel, q_stride_dim
        *k.stride(),  # k_stride_batch, k_stride_head, k_stride_token, k_stride_dim
        *v.stride(),  # v_stride_batch, v_stride_head, v_stride_token, v_stride_dim
        *bias.stride(),  # bias_stride_batch, bias_stride_token
        BLOCK_SIZE_N=bn,
        BLOCK_SIZE_P=bp,
        BLOCK_SIZE_D=bd,
        BLOCK_SIZE_DC=dc,
        INPUT_PRECISION=_GPU_PREC,
        **opts,
    )
    return o, lse


def _attn_bwd_triton(q, k, v, bias, scale, o, lse, do):
    bsz, heads, n, d = q.shape
    p = k.shape[2]
    bn, bp, bd, dc, opts = _blocks(d)
    do = do.to(torch.float32).contiguous()
    delta = (do * o).sum(-1).contiguous()                       # (B, h, N)
    dq = empty(bsz, heads, n, d, like=q, dtype=torch.float32)
    # q_stride_{batch,head,pixel,dim}, k_/v_stride_{batch,head,token,dim}, bias_stride_*
    strides = (*q.stride(), *k.stride(), *v.stride(), *bias.stride())
    consts = dict(BLOCK_SIZE_N=bn, BLOCK_SIZE_P=bp, BLOCK_SIZE_D=bd, BLOCK_SIZE_DC=dc,
                  INPUT_PRECISION=_GPU_PREC, **opts)
    _attn_bwd_dq_kernel[(bsz * heads, triton.cdiv(n, bn))](
        q,
        k,
        v,
        bias,
        do,
        lse,
        delta,
        dq,
        n,
        p,
        heads,
        d,
        float(scale),
        *strides,
        **consts,
    )
    chunk = max(bn, triton.cdiv(triton.cdiv(n, 8), bn) * bn)   # <= 8 pixel chunks per token block
    n_chunks = triton.cdiv(n, chunk)
    dk_part = empty(n_chunks, bsz * heads, p, d, like=q, dtype=torch.float32)
    dv_part = empty(n_chunks, bsz * heads, p, d, like=q, dtype=torch.float32)
    # axis 1: token blocks x output head-dim chunks (BLOCK_SIZE_D // BLOCK_SIZE_DC per block)
    _attn_bwd_dkdv_kernel[(bsz * heads, triton.cdiv(p, bp) * (bd // dc), n_chunks)](
        q,
        k,
        v,
        bias,
        do,
        lse,
        delta,
        dk_part,
        dv_part,
        n,
        p,
        heads,
        d,
        float(scale),
        chunk,
        *strides,
        **consts,
    )
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
    _codes_kernel[(b, triton.cdiv(h * w, bn))](
        m,
        out,
        k,
        h * w,
        m.stride(0),  # masks_stride_batch
        m.stride(1),  # masks_stride_mask
        m.stride(3),  # masks_stride_pixel (H and W merge)
        BLOCK_SIZE=bn,
    )
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
        flat,
        inverse.contiguous(),
        sums,
        n,
        c,
        num_patterns,
        *flat.stride(),  # x_stride_batch, x_stride_pixel, x_stride_channel
        BLOCK_SIZE_N=bn,
        BLOCK_SIZE_C=bc,
    )
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


