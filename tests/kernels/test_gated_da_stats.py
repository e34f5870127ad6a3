"""GatedDA temperature statistics + gate kernel: Triton (interpreter) vs reference vs released.

Tolerances: float32 kutil 1e-4 (per-plane sums in float32: observed ~5e-7 forward, ~2e-6 on
the tau gradient, which sums over batch and planes). float16: kutil 2e-3 forward, 1e-2 grads
(statistics accumulate in float32).
"""
import pytest
import torch
from kutil import SMALL_SHAPES, assert_close, both_paths, cases, grads, make

from irblocks.kernels.gated_da_stats import (
    bytes_moved,
    gated_da_modulate,
    gated_da_modulate_naive,
    gated_da_modulate_reference,
)

C = 3


def _tau(c=C, dtype=torch.float32):
    return (1 + 0.5 * torch.randn(1, c, 1, 1, dtype=dtype)).requires_grad_(True)


@pytest.mark.parametrize("alpha_ch", [2, 3, 7])        # fewer, equal and more alpha channels than C
@pytest.mark.parametrize("shape,layout", cases())
def test_triton_matches_reference(shape, layout, alpha_ch, triton_interp):
    b, h, w = shape
    f = make(b, C, h, w, layout, requires_grad=True, scale=2.0, offset=0.5)
    al = make(b, alpha_ch, h, w, layout, requires_grad=True)
    tau = _tau()
    out_r, gr = grads(lambda x, y, t: gated_da_modulate(x, y, t, impl="reference"), [f, al, tau])
    out_t, gt = grads(lambda x, y, t: gated_da_modulate(x, y, t, impl="triton"), [f, al, tau])
    assert_close(out_t, out_r, msg="forward")
    assert_close(gt, gr, grad=True, msg="grads f, alpha, tau")


def test_channels_last_preserved(triton_interp):
    f = make(2, 4, 5, 6, "channels_last")
    al = make(2, 3, 5, 6, "channels_last")
    for impl in ("reference", "triton"):
        out = gated_da_modulate(f, al, _tau(4), impl=impl)
        assert out.is_contiguous(memory_format=torch.channels_last), impl


def test_float16_forward(triton_interp):
    f = make(2, 4, 5, 7, "nchw", dtype=torch.float16)
    al = make(2, 3, 5, 7, "nchw", dtype=torch.float16)
    tau = torch.ones(1, 4, 1, 1)
    ref = gated_da_modulate_reference(f.float(), al.float(), tau)
    out = gated_da_modulate(f, al, tau, impl="triton")
    assert out.dtype == torch.float16
    assert_close(out, ref, dtype=torch.float16)


@pytest.mark.parametrize("shape,layout", cases(SMALL_SHAPES, ("nchw", "channels_last")))
@pytest.mark.parametrize("alpha_ch", [2, 7])
def test_reference_equals_released_formulation(shape, layout, alpha_ch):
    b, h, w = shape
    f = make(b, C, h, w, layout, requires_grad=True)
    al = make(b, alpha_ch, h, w, layout, requires_grad=True)
    tau = _tau()
    out_n, gn = grads(gated_da_modulate_naive, [f, al, tau])
    out_r, gr = grads(gated_da_modulate_reference, [f, al, tau])
    torch.testing.assert_close(out_r, out_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gr, gn, atol=1e-5, rtol=1e-5)


def test_gradcheck_reference_float64():
    f = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    al = torch.randn(2, 5, 4, 5, dtype=torch.float64, requires_grad=True)
    tau = torch.randn(1, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gated_da_modulate_reference, (f, al, tau))


def test_custom_op_registrations(triton_interp):
    f, al = torch.randn(1, 3, 4, 5, requires_grad=True), torch.randn(1, 2, 4, 5)
    tau = torch.ones(1, 3, 1, 1, requires_grad=True)
    torch.library.opcheck(torch.ops.irblocks.gated_da_modulate.default, (f, al, tau, 1e-6),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flop_formula_zero(triton_interp):
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc:
        gated_da_modulate(torch.randn(1, 3, 4, 5), torch.randn(1, 2, 4, 5), torch.ones(3),
                          impl="triton")
    assert fc.get_total_flops() == 0


def test_block_same_output_and_grads_both_paths(triton_interp, monkeypatch):
    from irblocks.anyir import GatedDegradationAdaptation
    blk = GatedDegradationAdaptation(dim=6).train()
    x = make(2, 6, 5, 4, "channels_last", requires_grad=True)
    res = both_paths(blk, [x], monkeypatch, module=blk)
    assert_close(res["triton"], res["reference"], grad=True, msg="gated_da output and grads")


def test_bad_inputs():
    with pytest.raises(ValueError, match="tau must hold C=3"):
        gated_da_modulate(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4), torch.ones(4))
    with pytest.raises(ValueError, match="share B, H, W"):
        gated_da_modulate(torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 5), torch.ones(3))


def test_bytes_moved():
    bm = bytes_moved((1, 24, 128, 128), 16)
    assert bm["fused"] < bm["unfused"]


def test_float16_grads(triton_interp):
    f = make(2, 4, 3, 5, "channels_last", dtype=torch.float16, requires_grad=True)
    al = make(2, 3, 3, 5, "channels_last", dtype=torch.float16, requires_grad=True)
    tau = torch.ones(1, 4, 1, 1, requires_grad=True)
    go = torch.randn(2, 3, 3, 5, generator=torch.Generator().manual_seed(1))
    _, gt = grads(lambda x, y, t: gated_da_modulate(x, y, t, impl="triton"), [f, al, tau],
                  grad_out=go.half())
    f32 = f.detach().float().requires_grad_()
    al32 = al.detach().float().requires_grad_()
    _, gr = grads(gated_da_modulate_reference, [f32, al32, tau], grad_out=go)
    assert_close(gt[:2], gr[:2], dtype=torch.float16, grad=True)
    assert_close(gt[2], gr[2], atol=1e-2, rtol=1e-2)
