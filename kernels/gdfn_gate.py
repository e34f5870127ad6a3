"""GDFN gate: ``gelu(x1) * x2`` over the two channel halves of one tensor (exact erf GELU).

Implementations
- reference: ``chunk`` (two views, no copy) + ``F.gelu`` + multiply; plain torch ops.
- triton: one program handles ``BLOCK_P`` pixels x ``BLOCK_C`` channels of the output,
  reading x1 and x2 straight from the input through its strides (no chunk/contiguous
  copy, no gelu(x1) temporary): reads 2C, writes C per pixel. The backward reads x and
  dy once and writes dx (2C) in one pass, recomputing gelu from x.
  GELU uses ``tl.math.erf`` (an intrinsic the interpreter evaluates with ``math.erf``
  and the CUDA backend lowers to a float32 polynomial; no libdevice call), so the same
  code runs in the interpreter and on sm_90. Tolerance vs torch's erf GELU: float32
  within 1e-6 relative in the interpreter; on GPU the erf approximation is accurate to
  a few float32 ulp.
  Exposed as custom ops ``irblocks::gelu_gate`` / ``irblocks::gelu_gate_backward``
  (fake impls, autograd, FLOP formula 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import flop_registry, register_flop_formula

from ._dispatch import block_size, empty, select, triton_available

__all__ = ["gelu_gate", "gelu_gate_reference", "COMPILE_SPECS"]


def gelu_gate_reference(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=1)
    return F.gelu(x1) * x2


def _out_format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last) or (x.stride(1) == 1 and x.shape[1] > 1):
        return torch.channels_last
    return torch.contiguous_format


if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _offsets(pid_p, pid_c, P, C, HW, Wd, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        b = p // HW
        hw = p % HW
        mask = (p < P)[:, None] & (c < C)[None, :]
        return b, hw // Wd, hw % Wd, c, mask

    @triton.jit
    def _gate_fwd_kernel(X, Y, P, C, HW, Wd, sxb, sxc, sxh, sxw, syb, syc, syh, syw,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        b, h, w, c, mask = _offsets(tl.program_id(0), tl.program_id(1), P, C, HW, Wd, BLOCK_P, BLOCK_C)
        xo = (b * sxb + h * sxh + w * sxw)[:, None] + (c * sxc)[None, :]
        x1 = tl.load(X + xo, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + xo + C * sxc, mask=mask, other=0.0).to(tl.float32)
        y = 0.5 * x1 * (1.0 + tl.math.erf(x1 * 0.7071067811865476)) * x2
        yo = (b * syb + h * syh + w * syw)[:, None] + (c * syc)[None, :]
        tl.store(Y + yo, y.to(Y.dtype.element_ty), mask=mask)

    @triton.jit
    def _gate_bwd_kernel(DY, X, DX, P, C, HW, Wd, sdb, sdc, sdh, sdw, sxb, sxc, sxh, sxw,
                         sgb, sgc, sgh, sgw, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        b, h, w, c, mask = _offsets(tl.program_id(0), tl.program_id(1), P, C, HW, Wd, BLOCK_P, BLOCK_C)
        xo = (b * sxb + h * sxh + w * sxw)[:, None] + (c * sxc)[None, :]
        do = (b * sdb + h * sdh + w * sdw)[:, None] + (c * sdc)[None, :]
        go = (b * sgb + h * sgh + w * sgw)[:, None] + (c * sgc)[None, :]
        x1 = tl.load(X + xo, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(X + xo + C * sxc, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(DY + do, mask=mask, other=0.0).to(tl.float32)
        cdf = 0.5 * (1.0 + tl.math.erf(x1 * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x1 * x1) * 0.3989422804014327
        tl.store(DX + go, (dy * x2 * (cdf + x1 * pdf)).to(DX.dtype.element_ty), mask=mask)
        tl.store(DX + go + C * sgc, (dy * x1 * cdf).to(DX.dtype.element_ty), mask=mask)

    def _blocks(c: int, gpu_elems: int):
        block_c = min(triton.next_power_of_2(max(c, 1)), 128)
        block_p = block_size(gpu=max(1, gpu_elems // block_c), interpreter=16)
        return block_p, block_c

    def _fwd_triton(x):
        b, c2, h, w = x.shape
        c = c2 // 2
        y = empty(b, c, h, w, like=x, memory_format=_out_format(x))
        p = b * h * w
        if p and c:
            block_p, block_c = _blocks(c, 2048)
            grid = (triton.cdiv(p, block_p), triton.cdiv(c, block_c))
            _gate_fwd_kernel[grid](x, y, p, c, h * w, w, *x.stride(), *y.stride(),
                                   BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
        return y

    def _bwd_triton(dy, x):
        b, c2, h, w = x.shape
        c = c2 // 2
        dx = empty(b, c2, h, w, like=x, memory_format=_out_format(x))
        p = b * h * w
        if p and c:
            block_p, block_c = _blocks(c, 2048)
            grid = (triton.cdiv(p, block_p), triton.cdiv(c, block_c))
            _gate_bwd_kernel[grid](dy, x, dx, p, c, h * w, w, *dy.stride(), *x.stride(), *dx.stride(),
                                   BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
        return dx

    _S = {f"s{t}{a}": "i32" for t in "xy" for a in "bchw"}
    _SB = {f"s{t}{a}": "i32" for t in "dxg" for a in "bchw"}
    _I = {"P": "i32", "C": "i32", "HW": "i32", "Wd": "i32"}
    COMPILE_SPECS = [
        (_gate_fwd_kernel, {"X": "*fp32", "Y": "*fp32", **_I, **_S,
                            "BLOCK_P": "constexpr", "BLOCK_C": "constexpr"}, {"BLOCK_P": 32, "BLOCK_C": 64}),
        (_gate_fwd_kernel, {"X": "*fp16", "Y": "*fp16", **_I, **_S,
                            "BLOCK_P": "constexpr", "BLOCK_C": "constexpr"}, {"BLOCK_P": 16, "BLOCK_C": 128}),
        (_gate_bwd_kernel, {"DY": "*fp32", "X": "*fp32", "DX": "*fp32", **_I, **_SB,
                            "BLOCK_P": "constexpr", "BLOCK_C": "constexpr"}, {"BLOCK_P": 32, "BLOCK_C": 64}),
        (_gate_bwd_kernel, {"DY": "*fp32", "X": "*fp32", "DX": "*fp32", **_I, **_SB,
                            "BLOCK_P": "constexpr", "BLOCK_C": "constexpr"}, {"BLOCK_P": 16, "BLOCK_C": 128}),
    ]
else:  # pragma: no cover
    COMPILE_SPECS = []

    def _fwd_triton(*a, **k):
        raise RuntimeError("Triton is not importable")

    _bwd_triton = _fwd_triton


def _half_shape(x):
    b, c2, h, w = x.shape
    return b, c2 // 2, h, w


@torch.library.custom_op("irblocks::gelu_gate", mutates_args=())
def _gate_op(x: torch.Tensor) -> torch.Tensor:
    return _fwd_triton(x)


@_gate_op.register_fake
def _gate_op_fake(x):
    return torch.empty(_half_shape(x), dtype=x.dtype, device=x.device, memory_format=_out_format(x))


@torch.library.custom_op("irblocks::gelu_gate_backward", mutates_args=())
def _gate_bwd_op(dy: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _bwd_triton(dy, x)


@_gate_bwd_op.register_fake
def _gate_bwd_op_fake(dy, x):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=_out_format(x))


def _gate_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _gate_backward(ctx, dy):
    (x,) = ctx.saved_tensors
    return torch.ops.irblocks.gelu_gate_backward(dy, x)


_gate_op.register_autograd(_gate_backward, setup_context=_gate_setup)

for _op in (torch.ops.irblocks.gelu_gate, torch.ops.irblocks.gelu_gate_backward):
    if _op not in flop_registry:
        register_flop_formula(_op)(lambda *args, out_shape=None, **kwargs: 0)  # elementwise


def gelu_gate(x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """x: (B, 2C, H, W) -> (B, C, H, W) = gelu(x[:, :C]) * x[:, C:] (exact erf GELU)."""
    if x.dim() != 4 or x.shape[1] % 2:
        raise ValueError(f"gelu_gate: expected (B, 2C, H, W) with an even channel count, got {tuple(x.shape)}")
    if select(impl, x) == "triton":
        return torch.ops.irblocks.gelu_gate(x)
    return gelu_gate_reference(x)
