"""Haar DWT / IDWT butterfly: Triton (interpreter) vs reference vs pytorch-wavelets, forward
and backward, adjointness, every layout.

Tolerances: float32 atol=rtol=1e-5 (four adds and a scale: the two paths differ only by
rounding order); float16 2e-3 (the kernel computes in float32 and rounds once; the reference
is compared after computing in float32). Shapes: ``SHAPES`` from kutil are the SUBBAND sizes
(so the IDWT sees odd, 1-pixel-wide and 1-pixel-high maps; the DWT sees twice those).
"""
import pytest
import torch
from pytorch_wavelets import DWTForward, DWTInverse
from torch.utils.flop_counter import FlopCounterMode

from irblocks.clusir import DWT, IDWT
from irblocks.kernels.haar_dwt import haar_dwt, haar_dwt_reference, haar_idwt, haar_idwt_reference
from tests.kernels.kutil import SHAPES, assert_close, both_paths, cases, grads, make

C = 3
F32 = {"atol": 1e-5, "rtol": 1e-5}


def oracle_dwt(x):
    yl, yh = DWTForward(J=1, wave="haar", mode="zero")(x)
    return torch.cat([yl, yh[0].transpose(1, 2).flatten(1, 2)], dim=1)


def oracle_idwt(y):
    c = y.shape[1] // 4
    yh = y[:, c:].unflatten(1, (3, c)).transpose(1, 2).contiguous()
    return DWTInverse(wave="haar", mode="zero")((y[:, :c].contiguous(), [yh]))


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_pytorch_wavelets(shape):
    b, h, w = shape
    x = torch.randn(b, C, 2 * h, 2 * w)
    assert_close(haar_dwt_reference(x), oracle_dwt(x), **F32)
    y = torch.randn(b, 4 * C, h, w)
    assert_close(haar_idwt_reference(y), oracle_idwt(y), **F32)


@pytest.mark.parametrize("shape,layout", cases())
def test_dwt_triton_matches_reference(triton_interp, shape, layout):
    b, h, w = shape
    x = make(b, C, 2 * h, 2 * w, layout, requires_grad=True)
    out_t, g_t = grads(lambda x: haar_dwt(x, impl="triton"), [x])
    out_r, g_r = grads(lambda x: haar_dwt(x, impl="reference"), [x])
    assert out_t.shape == (b, 4 * C, h, w)
    assert_close(out_t, out_r, msg="dwt forward", **F32)
    assert_close(g_t, g_r, msg="dwt grad x", **F32)
    assert_close(out_t, oracle_dwt(x.detach().contiguous()), msg="dwt vs pytorch-wavelets", **F32)


@pytest.mark.parametrize("shape,layout", cases())
def test_idwt_triton_matches_reference(triton_interp, shape, layout):
    b, h, w = shape
    y = make(b, 4 * C, h, w, layout, requires_grad=True)
    out_t, g_t = grads(lambda y: haar_idwt(y, impl="triton"), [y])
    out_r, g_r = grads(lambda y: haar_idwt(y, impl="reference"), [y])
    assert out_t.shape == (b, C, 2 * h, 2 * w)
    assert_close(out_t, out_r, msg="idwt forward", **F32)
    assert_close(g_t, g_r, msg="idwt grad", **F32)


@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_inverse_and_adjoint(impl, request):
    if impl == "triton":
        request.getfixturevalue("triton_interp")
    x = torch.randn(2, C, 6, 10, dtype=torch.float64 if impl == "reference" else torch.float32)
    y = torch.randn(2, 4 * C, 3, 5, dtype=x.dtype)
    assert_close(haar_idwt(haar_dwt(x, impl=impl), impl=impl), x, **F32)
    assert_close(haar_dwt(haar_idwt(y, impl=impl), impl=impl), y, **F32)
    lhs = (haar_dwt(x, impl=impl) * y).sum()
    rhs = (x * haar_idwt(y, impl=impl)).sum()
    assert abs(lhs.item() - rhs.item()) < 1e-4 * max(1.0, abs(lhs.item()))


def test_float16(triton_interp):
    x = make(3, C, 4, 6, "channels_last", dtype=torch.float16, requires_grad=True)
    out_t, (g_t,) = grads(lambda x: haar_dwt(x, impl="triton"), [x])
    out_r, (g_r,) = grads(haar_dwt_reference, [x.detach().float().requires_grad_()])
    assert out_t.dtype == torch.float16
    assert_close(out_t, out_r.half(), torch.float16)
    assert_close(g_t.float(), g_r, torch.float16, grad=True)


def test_gradcheck_reference_float64():
    x = torch.randn(2, 2, 4, 6,
                    dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(haar_dwt_reference, (x,))
    y = torch.randn(1, 8, 3, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(haar_idwt_reference, (y,))


def test_modules_same_through_both_paths(triton_interp, monkeypatch):
    x = make(3, C, 5, 7, "channels_last", requires_grad=True)     # odd: padded and cropped
    res = {}
    for impl in ("triton", "reference"):
        monkeypatch.setenv("IRBLOCKS_KERNELS", impl)
        out, (gx,) = grads(lambda x: IDWT()(DWT()(x) * 1.5, (5, 7)), [x])
        res[impl] = [out, gx]
    assert_close(res["triton"], res["reference"], **F32)


def test_wave_attention_same_through_both_paths(triton_interp, monkeypatch):
    from irblocks.clusir import WaveAttention
    blk = WaveAttention(8, heads=2, sr=2).eval()
    x = make(1, 8, 5, 6, "channels_last", requires_grad=True)
    res = both_paths(blk, [x], monkeypatch, module=blk)
    assert_close(res["triton"], res["reference"], grad=True)


def test_custom_op_registration(triton_interp):
    x = make(1, 2, 4, 2, "channels_last", requires_grad=True)
    y = make(1, 8, 2, 1, "nchw", requires_grad=True)
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.irblocks.haar_dwt.default, (x,), test_utils=utils)
    torch.library.opcheck(torch.ops.irblocks.haar_idwt.default, (y,), test_utils=utils)


def test_flops_zero_meta_errors_and_specs(triton_interp):
    with FlopCounterMode(display=False) as fc:
        haar_dwt(make(1, 2, 4, 4), impl="triton")
        haar_idwt(make(1, 8, 2, 2), impl="triton")
    assert fc.get_total_flops() == 0
    assert haar_dwt(torch.empty(1, 2, 4, 6, device="meta"), impl="triton").shape == (1, 8, 2, 3)
    with pytest.raises(ValueError, match="even"):
        haar_dwt(torch.randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="multiple of 4"):
        haar_idwt(torch.randn(1, 6, 2, 2))
