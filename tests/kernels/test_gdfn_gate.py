"""GDFN gate gelu(x1) * x2: Triton (interpreter) vs reference, forward and grad.

Tolerances: float32 atol=rtol=1e-4 (the interpreter evaluates erf with math.erf, so the
observed difference to torch's erf GELU is ~1e-6); float16 inputs 2e-3 on the output and
1e-2 on the grad (the kernel computes in float32 and rounds once; the reference is computed
in float32 and cast).
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import irblocks
from irblocks.kernels.gdfn_gate import gelu_gate, gelu_gate_reference
from tests.kernels.kutil import ALL_LAYOUTS, assert_close, both_paths, cases, grads, make

C2 = 10  # 2 x 5 channels


@pytest.mark.parametrize("shape,layout", cases(layouts=ALL_LAYOUTS))
def test_triton_matches_reference(triton_interp, shape, layout):
    b, h, w = shape
    x = make(b, C2, h, w, layout, requires_grad=True, scale=2.5)
    out_t, g_t = grads(lambda x: gelu_gate(x, impl="triton"), [x])
    out_r, g_r = grads(lambda x: gelu_gate(x, impl="reference"), [x])
    assert out_t.shape == (b, C2 // 2, h, w)
    assert_close(out_t, out_r, msg="forward")
    assert_close(g_t, g_r, grad=True, msg="grad x")


def test_wide_channels_and_tails(triton_interp):
    # more channels than one GPU/interpreter channel block would hold at the GPU size; and
    # large |x| where erf saturates
    x = make(1, 2 * 130, 2, 3, "channels_last", requires_grad=True, scale=6.0)
    out_t, g_t = grads(lambda x: gelu_gate(x, impl="triton"), [x])
    out_r, g_r = grads(gelu_gate_reference, [x])
    assert_close(out_t, out_r)
    assert_close(g_t, g_r, grad=True)


def test_float16(triton_interp):
    x = make(3, 8, 3, 5, "channels_last", dtype=torch.float16, requires_grad=True, scale=2.0)
    go = torch.randn(3, 4, 3, 5).half()
    out_t, (g_t,) = grads(lambda x: gelu_gate(x, impl="triton"), [x], grad_out=go)
    out_r, (g_r,) = grads(gelu_gate_reference, [x.detach().float().requires_grad_()],
                          grad_out=go.float())
    assert out_t.dtype == torch.float16
    assert_close(out_t, out_r.half(), torch.float16)
    assert_close(g_t.float(), g_r, torch.float16, grad=True)


def test_gradcheck_reference_float64():
    x = torch.randn(2, 6, 2, 3,
                    dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(gelu_gate_reference, (x,))


def test_block_same_through_both_paths(triton_interp, monkeypatch):
    block = irblocks.GDFN(6, expansion=2.0)
    x = make(3, 6, 5, 3, "channels_last", requires_grad=True)
    res = both_paths(block, [x], monkeypatch, module=block)
    assert_close(res["triton"], res["reference"], grad=True, msg="GDFN output and grads")


def test_custom_op_registration(triton_interp):
    x = make(1, 6, 2, 3, "channels_last", requires_grad=True)
    torch.library.opcheck(torch.ops.irblocks.gelu_gate.default, (x,),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flops_zero_meta_and_errors(triton_interp):
    with FlopCounterMode(display=False) as fc:
        gelu_gate(make(1, 4, 2, 3), impl="triton")
    assert fc.get_total_flops() == 0
    assert gelu_gate(torch.empty(1, 4, 2, 3, device="meta"), impl="triton").shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="even channel count"):
        gelu_gate(torch.randn(1, 3, 2, 2))
