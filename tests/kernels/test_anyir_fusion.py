"""AnyIR fusion kernel: Triton (interpreter) vs reference vs the released FFT formulation.

Tolerances: float32 uses kutil's 1e-4 (forward is element-wise: observed ~2e-7; the lam
gradient is a sum over all elements, summed per block then in torch: observed ~4e-6).
float16: kutil's 2e-3 forward, 1e-2 grads (the kernel computes in float32 and rounds once);
the lam grad in float16 is compared at 2e-2 (a sum over every element).
"""
import pytest
import torch
from kutil import SMALL_SHAPES, assert_close, both_paths, c_kernel_or_skip, cases, grads, make

from irblocks.kernels._dispatch import out_format
from irblocks.kernels.anyir_fusion import (
    anyir_fusion,
    anyir_fusion_naive,
    anyir_fusion_reference,
    bytes_moved,
)
from tests._compare import assert_rel_close

C_HALF = 3   # C' (odd on purpose: the released layout interleaves c0, c0, c1, c1, ...)


def _lam(v=0.3, dtype=torch.float32):
    return torch.tensor(v, dtype=dtype, requires_grad=True)


@pytest.mark.parametrize("shape,layout", cases())
def test_triton_matches_reference_forward_and_grads(shape, layout, triton_interp):
    b, h, w = shape
    a = make(b, C_HALF, h, w, layout, requires_grad=True)
    g = make(b, C_HALF, h, w, layout, requires_grad=True)
    lam = _lam()
    out_r, gr = grads(lambda x, y, l: anyir_fusion(x, y, l, impl="reference"), [a, g, lam])
    out_t, gt = grads(lambda x, y, l: anyir_fusion(x, y, l, impl="triton"), [a, g, lam])
    assert out_t.shape == (b, 2 * C_HALF, h, w)
    assert_close(out_t, out_r, msg="forward")
    assert_close(gt, gr, grad=True, msg="grads a, g, lam")


def test_mixed_layouts(triton_interp):
    a = make(2, 4, 5, 6, "channels_last", requires_grad=True)
    g = make(2, 4, 5, 6, "strided", requires_grad=True)
    lam = _lam(0.7)
    out_r, gr = grads(lambda x, y, l: anyir_fusion(x, y, l, impl="reference"), [a, g, lam])
    out_t, gt = grads(lambda x, y, l: anyir_fusion(x, y, l, impl="triton"), [a, g, lam])
    assert_close(out_t, out_r)
    assert_close(gt, gr, grad=True)


def test_channels_last_output_stays_channels_last(triton_interp):
    a = make(1, 4, 5, 6, "channels_last")
    g = make(1, 4, 5, 6, "channels_last")
    for impl in ("reference", "triton"):
        out = anyir_fusion(a, g, _lam(), impl=impl)
        assert out.is_contiguous(memory_format=torch.channels_last), impl


def test_float16_forward(triton_interp):
    a = make(1, 4, 5, 7, "nchw", dtype=torch.float16)
    g = make(1, 4, 5, 7, "nchw", dtype=torch.float16)
    lam = torch.tensor(0.4)
    ref = anyir_fusion_reference(a.float(), g.float(), lam)
    out = anyir_fusion(a, g, lam, impl="triton")
    assert out.dtype == torch.float16
    assert_close(out, ref, dtype=torch.float16)


@pytest.mark.parametrize("shape,layout", cases(SMALL_SHAPES, ("nchw", "channels_last")))
def test_reference_equals_released_fft_formulation(shape, layout):
    b, h, w = shape
    a = make(b, C_HALF, h, w, layout, requires_grad=True)
    g = make(b, C_HALF, h, w, layout, requires_grad=True)
    out_n, gn = grads(anyir_fusion_naive, [a, g, _lam()])
    out_r, gr = grads(anyir_fusion_reference, [a, g, _lam()])
    torch.testing.assert_close(out_r, out_n, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gr, gn, atol=1e-5, rtol=1e-5)


def test_released_channel_layout():
    a = torch.arange(2.0).reshape(1, 2, 1, 1)
    g = 10 + torch.arange(2.0).reshape(1, 2, 1, 1)
    out = anyir_fusion_reference(a, g, torch.tensor(1.0)).flatten()
    exp = torch.cat([a + torch.sigmoid(g), g + torch.sigmoid(a)], 1).flatten()
    torch.testing.assert_close(out, exp)
    out = anyir_fusion_reference(a, g, torch.tensor(0.0)).flatten()  # (a+g) repeated c0, c0, c1, c1
    torch.testing.assert_close(out, torch.tensor([10.0, 10.0, 12.0, 12.0]))


def test_gradcheck_reference_float64():
    a = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(anyir_fusion_reference, (a, g, lam))


def test_custom_op_registrations(triton_interp):
    a, g = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    lam = torch.tensor(0.5, requires_grad=True)
    torch.library.opcheck(torch.ops.irblocks.anyir_fusion.default, (a.requires_grad_(), g, lam),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flop_formula_zero(triton_interp):
    from torch.utils.flop_counter import FlopCounterMode
    a, g = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    with FlopCounterMode(display=False) as fc:
        anyir_fusion(a, g, torch.tensor(0.5), impl="triton")
    assert fc.get_total_flops() == 0


def test_block_same_output_and_grads_both_paths(triton_interp, monkeypatch):
    from irblocks.anyir import SpatialFrequencyFusion
    blk = SpatialFrequencyFusion(dim=6)
    a = make(2, 3, 5, 4, "channels_last", requires_grad=True)
    g = make(2, 3, 5, 4, "channels_last", requires_grad=True)
    res = both_paths(blk, [a, g], monkeypatch, module=blk)
    assert_close(res["triton"], res["reference"], grad=True, msg="sf_fusion output and grads")


def test_bad_shapes():
    with pytest.raises(ValueError, match="same shape|B x C'"):
        anyir_fusion(torch.randn(1, 2, 3, 3), torch.randn(1, 3, 3, 3), torch.tensor(0.5))


def test_bytes_moved():
    bm = bytes_moved((1, 24, 128, 128))
    assert bm["fused"] < bm["unfused"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided", "sliced"])
def test_reference_inference_branch(layout):
    """Without grad the reference updates its own intermediates in place: same values, inputs
    untouched."""
    a, g = make(2, C_HALF, 5, 7, layout), make(2, C_HALF, 5, 7, layout)
    a0, g0 = a.clone(), g.clone()
    lam = torch.tensor(0.35)
    with torch.no_grad():
        out = anyir_fusion_reference(a, g, lam)
    torch.testing.assert_close(out, anyir_fusion_naive(a, g, lam), atol=1e-5, rtol=1e-5)
    assert torch.equal(a, a0) and torch.equal(g, g0)


def test_float16_grads(triton_interp):
    a = make(1, 4, 3, 5, "channels_last", dtype=torch.float16, requires_grad=True)
    g = make(1, 4, 3, 5, "channels_last", dtype=torch.float16, requires_grad=True)
    lam = torch.tensor(0.4, requires_grad=True)
    _, gt = grads(lambda x, y, l: anyir_fusion(x, y, l, impl="triton"), [a, g, lam])
    a32 = a.detach().float().requires_grad_()
    g32 = g.detach().float().requires_grad_()
    go = torch.randn(1, 8, 3, 5, generator=torch.Generator().manual_seed(1))
    _, gr = grads(anyir_fusion_reference, [a32, g32, lam], grad_out=go)
    assert_close(gt[:2], gr[:2], dtype=torch.float16, grad=True)
    assert_close(gt[2], gr[2], atol=2e-2, rtol=2e-2)   # lam: a float16-rounded sum over 120 terms


# --- the compiled C kernel (CPU, float32): csrc/anyir_fusion.c ---------------------------
# Tolerance vs the float64 reference, relative to the largest magnitude: 1e-5 (element-wise
# outputs and a, g gradients observed ~1e-7; the lam gradient sums every element in float
# per pixel and double across pixels: observed ~5e-7).

def _c_vs_float64(a, g, lam):
    out_c, g_c = grads(lambda x, y, l: anyir_fusion(x, y, l, impl="cpu"), [a, g, lam])
    as64 = [t.detach().double().requires_grad_() for t in (a, g, lam)]
    out_r, g_r = grads(anyir_fusion_reference, as64)
    if out_format(a) == torch.channels_last:                # the C kernel ran
        assert out_c.is_contiguous(memory_format=torch.channels_last)
    assert_rel_close(["out", "da", "dg", "dlam"], [out_c, *g_c], [out_r, *g_r], 1e-5)


@pytest.mark.parametrize("c_half", [1, 3, 14, 17, 56])
@pytest.mark.parametrize("shape,layout", cases(shapes=SMALL_SHAPES))
def test_c_kernel_matches_reference(shape, layout, c_half):
    c_kernel_or_skip("anyir_fusion")
    b, h, w = shape
    a = make(b, c_half, h, w, layout, requires_grad=True, scale=3.0)
    g = make(b, c_half, h, w, layout, requires_grad=True, scale=3.0)
    _c_vs_float64(a, g, _lam(0.37))


@pytest.mark.parametrize("threads", [1, 3])
def test_c_kernel_thread_counts_and_saturation(threads):
    c_kernel_or_skip("anyir_fusion")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:                                    # |x| up to ~200: sigmoid saturates both ways
        a = make(1, 5, 7, 3, "channels_last", requires_grad=True, scale=60.0)
        g = make(1, 5, 7, 3, "channels_last", requires_grad=True, scale=60.0)
        _c_vs_float64(a, g, _lam(0.8))
    finally:
        torch.set_num_threads(old)


def test_c_kernel_picked_and_grad_of_grad():
    c_kernel_or_skip("anyir_fusion")
    a = make(1, 4, 3, 3, "channels_last", requires_grad=True)
    g = make(1, 4, 3, 3, "channels_last", requires_grad=True)
    assert type(anyir_fusion(a, g, _lam()).grad_fn).__name__.startswith("_FusionCpu")

    def second_order(fn):
        x, y, lam = [t.detach().clone().requires_grad_() for t in (a, g, _lam())]
        (gx,) = torch.autograd.grad(fn(x, y, lam).square().sum(), x, create_graph=True)
        gx.square().sum().backward()
        return [gx, x.grad, y.grad, lam.grad]

    # the released formulation through plain autograd (FFT branch included) is the truth
    truth = second_order(anyir_fusion_naive)
    for impl in ("cpu", "reference"):
        got = second_order(lambda x, y, lam: anyir_fusion(x, y, lam, impl=impl))
        for c, r in zip(got, truth):
            assert_close(c, r, grad=True, msg=f"grad of grad, {impl}")
