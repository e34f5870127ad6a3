"""MDTA channel attention: Triton (interpreter) vs reference, forward and grads of q, k, v,
temperature.

Tolerances: float32 atol=rtol=1e-4 (tl.dot runs in IEEE float32; sums over H*W are split
across programs, so summation order differs from torch; observed ~1e-7). float16 inputs:
2e-3 on the output, 1e-2 on grads (kernel math in float32, reference in float32 then cast).
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import irblocks
from irblocks.kernels.mdta import channel_attention, channel_attention_reference
from tests.kernels.kutil import (
    ALL_LAYOUTS,
    assert_close,
    both_paths,
    cases,
    grads,
    make,
)


def _run(impl, heads):
    return lambda q, k, v, t: channel_attention(q, k, v, t, heads, impl=impl)


def _check(q, k, v, t, heads, **tol):
    out_t, g_t = grads(_run("triton", heads), [q, k, v, t])
    out_r, g_r = grads(_run("reference", heads), [q, k, v, t])
    assert_close(out_t, out_r, msg="forward", **tol)
    assert len(g_t) == 4
    for name, a, e in zip(("q", "k", "v", "temperature"), g_t, g_r):
        assert a.shape == e.shape
        assert_close(a, e, grad=True, msg=f"grad {name}", **tol)


@pytest.mark.parametrize("shape,layout", cases(layouts=ALL_LAYOUTS))
def test_triton_matches_reference(triton_interp, shape, layout):
    b, h, w = shape
    heads, c = 2, 8
    q, k, v = (make(b, c, h, w, layout, requires_grad=True) for _ in range(3))
    t = torch.tensor([1.5, 0.6]).view(heads, 1, 1).requires_grad_()
    _check(q, k, v, t, heads)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_chunked_qkv_like_the_block(triton_interp, layout):
    # q, k, v as chunk views of one conv output (what MDTA passes); head dim 20 -> padded to 32
    qkv = make(1, 3 * 40, 5, 6, layout)
    q, k, v = (t.detach().requires_grad_() for t in qkv.chunk(3, dim=1))
    t = torch.tensor([0.8, 1.7], requires_grad=True)
    _check(q, k, v, t, 2)


def test_single_head_and_zero_row(triton_interp):
    q, k, v = (make(3, 6, 4, 3, "channels_last") for _ in range(3))
    q[:, 2].zero_()          # |q| = 0: F.normalize clamps the norm at 1e-12
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    t = torch.ones(1, requires_grad=True)
    _check(q, k, v, t, 1, rtol=1e-4, atol=1e-3)


def test_float16(triton_interp):
    q, k, v = (make(1, 8, 3, 5, "channels_last", dtype=torch.float16, requires_grad=True)
               for _ in range(3))
    t = torch.tensor([1.0, 2.0], requires_grad=True)
    go = torch.randn(1, 8, 3, 5).half()
    out_t, g_t = grads(_run("triton", 2), [q, k, v, t], grad_out=go)
    f32 = [x.detach().float().requires_grad_() for x in (q, k, v)] + [t]
    out_r, g_r = grads(_run("reference", 2), f32, grad_out=go.float())
    assert out_t.dtype == torch.float16
    assert_close(out_t, out_r.half(), torch.float16)
    assert_close([g.float() for g in g_t], g_r, torch.float16, grad=True)


def test_gradcheck_reference_float64():
    q, k, v = (torch.randn(1, 4, 2, 3, dtype=torch.float64).to(memory_format=torch.channels_last)
               .requires_grad_() for _ in range(3))
    t = torch.tensor([1.2, 0.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v, t: channel_attention_reference(q, k, v, t, 2),
                                    (q, k, v, t))


@pytest.mark.parametrize("heads", [1, 2])
def test_block_same_through_both_paths(triton_interp, monkeypatch, heads):
    block = irblocks.MDTA(8, heads=heads)
    with torch.no_grad():
        block.temperature.uniform_(0.5, 2.0)
    x = make(3, 8, 5, 3, "channels_last", requires_grad=True)
    res = both_paths(block, [x], monkeypatch, module=block)
    assert_close(res["triton"], res["reference"], grad=True, msg="MDTA output and grads")


def test_custom_op_registration(triton_interp):
    q, k, v = (make(1, 4, 2, 3, "channels_last", requires_grad=True) for _ in range(3))
    t = torch.ones(2, requires_grad=True)
    torch.library.opcheck(torch.ops.irblocks.channel_attention.default, (q, k, v, t, 2),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flop_formula_counts_the_matmuls(triton_interp):
    b, c, h, w, heads = 2, 8, 4, 5, 2
    expected_fwd = 2 * (2 * b * heads * (c // heads) ** 2 * h * w)
    counts = {}
    for impl in ("triton", "reference"):
        q, k, v = (make(b, c, h, w, requires_grad=True) for _ in range(3))
        t = torch.ones(heads, requires_grad=True)
        with FlopCounterMode(display=False) as fc:
            out = channel_attention(q, k, v, t, heads, impl=impl)
        fwd = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            out.sum().backward()
        counts[impl] = (fwd, fc.get_total_flops())
    assert counts["triton"][0] == expected_fwd
    assert counts["triton"] == counts["reference"]
    # meta tensors (model-size checks) take the reference path and count the same
    with torch.device("meta"), FlopCounterMode(display=False) as fc:
        channel_attention(torch.empty(b, c, h, w), torch.empty(b, c, h, w), torch.empty(b, c, h, w),
                          torch.ones(heads), heads, impl="triton")
    assert fc.get_total_flops() == expected_fwd


def test_errors_are_one_line():
    q = torch.randn(1, 6, 2, 2)
    with pytest.raises(ValueError, match="heads=4 must divide C=6"):
        channel_attention(q, q, q, torch.ones(4), 4)
    with pytest.raises(ValueError, match="share one"):
        channel_attention(q, q[:, :4], q, torch.ones(1), 1)
