"""Depthwise 3x3 convolution: the compiled C kernel (CPU) vs ``F.conv2d``.

Tolerances: float32, relative to the largest magnitude: output and input gradient 1e-5
against the float64 reference (observed ~2e-7); weight and bias gradients 2e-5 (sums over
every pixel in another order than oneDNN's: observed ~5e-6 against the float32 reference).
Outputs come NaN-prefilled (tests/kernels/conftest.py).
"""
import pytest
import torch

from irblocks.kernels import _cpu_build
from irblocks.kernels import dwconv3x3 as dwconv3x3_module
from irblocks.kernels._dispatch import out_format
from irblocks.kernels.dwconv3x3 import (
    LIBRARY,
    STREAM_MIN_BYTES,
    dwconv3x3,
    dwconv3x3_reference,
    dwconv3x3_sumsq,
    streams,
    tap_major,
)
from tests._compare import assert_rel_close, rel_error
from tests.kernels.kutil import LAYOUTS, StreamSpy, grads, make

pytestmark = pytest.mark.skipif(
    _cpu_build.load(LIBRARY) is None,
    reason=f"C kernel unavailable here: {_cpu_build.unavailable(LIBRARY)}")

TOL = {"out": 1e-5, "dx": 1e-5, "dweight": 2e-5, "dbias": 2e-5}


def _inputs(b, c, h, w, layout="channels_last", bias=True, scale=1.0, seed=0):
    torch.manual_seed(seed)
    x = make(b, c, h, w, layout, requires_grad=True, scale=scale)
    weight = torch.randn(c, 1, 3, 3).requires_grad_()
    return [x, weight] + ([torch.randn(c).requires_grad_()] if bias else [])


def _run(fn, inputs, dtype=torch.float32):
    cast = [t.detach().to(dtype).requires_grad_() for t in inputs]
    return grads(fn, cast)


def _check(inputs):
    out_c, g_c = _run(lambda *a: dwconv3x3(*a, impl="cpu"), inputs)
    out_64, g_64 = _run(dwconv3x3_reference, inputs, torch.float64)
    if out_format(inputs[0]) == torch.channels_last:        # the C kernel ran
        assert out_c.is_contiguous(memory_format=torch.channels_last)
    names = ["out", "dx", "dweight", "dbias"][:1 + len(g_c)]
    assert_rel_close(names, [out_c, *g_c], [out_64, *g_64], TOL)


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 1, 9), (1, 6, 1), (2, 4, 4), (1, 9, 40)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("c", [1, 5, 16, 37])
def test_matches_reference(shape, c):
    b, h, w = shape
    _check(_inputs(b, c, h, w))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout_and_no_bias(layout):
    _check(_inputs(2, 12, 5, 6, layout=layout, bias=False))


@pytest.mark.parametrize("threads", [1, 3, 5])
def test_thread_counts(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(_inputs(1, 18, 7, 5))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("c, streamed", [(48, 1), (18, 1), (48, 0)])
@pytest.mark.parametrize("threads", [1, 3])
def test_streamed_input_gradient_is_the_plain_one(monkeypatch, c, streamed, threads):
    # from STREAM_MIN_BYTES on, dx goes out with non-temporal stores (C a multiple of 16;
    # 18 keeps plain stores inside the kernel): bitwise the same values, every element
    # written (NaN-prefilled outputs), the flag reaches the kernel
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    inputs = _inputs(2, c, 9, 40)
    run = lambda *a: dwconv3x3(*a, impl="cpu")          # noqa: E731
    out_plain, g_plain = _run(run, inputs)
    spy = StreamSpy(dwconv3x3_module.library(), "dwconv3x3_backward")
    monkeypatch.setattr(dwconv3x3_module, "library", spy)
    monkeypatch.setattr(dwconv3x3_module, "STREAM_MIN_BYTES", 0 if streamed else 1 << 40)
    out, g = _run(run, inputs)
    assert spy.streams == [streamed]
    for a, b in zip([out, *g], [out_plain, *g_plain]):
        assert torch.equal(a, b)


def test_streams_from_the_threshold():
    below = torch.empty(STREAM_MIN_BYTES // 4 - 1)
    assert (streams(None), streams(below), streams(torch.empty(STREAM_MIN_BYTES // 4))) == (
        0, 0, 1)
    assert streams(torch.empty(STREAM_MIN_BYTES // 8, dtype=torch.float64)) == 1


def test_only_the_needed_gradients():
    x, weight, bias = _inputs(1, 6, 4, 5)
    out = dwconv3x3(x.detach(), weight, bias, impl="cpu")
    out.square().sum().backward()
    ref_w, ref_b = [t.detach().clone().requires_grad_() for t in (weight, bias)]
    dwconv3x3_reference(x.detach(), ref_w, ref_b).square().sum().backward()
    assert rel_error(weight.grad, ref_w.grad) < TOL["dweight"]
    assert rel_error(bias.grad, ref_b.grad) < TOL["dbias"]
    x2 = x.detach().requires_grad_()
    dwconv3x3(x2, weight.detach(), None, impl="cpu").sum().backward()
    assert rel_error(x2.grad, torch.autograd.grad(
        dwconv3x3_reference(x2, weight.detach()).sum(), x2)[0]) < TOL["dx"]


def test_grad_of_grad_matches_reference():
    def second_order(impl):
        x, weight, bias = [t.detach().requires_grad_() for t in _inputs(1, 4, 4, 3)]
        (g,) = torch.autograd.grad(dwconv3x3(x, weight, bias, impl=impl).square().sum(), x,
                                   create_graph=True)
        g.square().sum().backward()
        return [g, x.grad, weight.grad, bias.grad]

    for a, r in zip(second_order("cpu"), second_order("reference")):
        assert rel_error(a, r) < TOL["dweight"]


def test_tap_major_padding_is_an_odd_number_of_lines():
    for c in (1, 16, 17, 32, 288, 510):
        taps = tap_major(torch.randn(c, 1, 3, 3))
        assert taps.shape[0] == 9 and taps.shape[1] >= c and taps.shape[1] % 32 == 16


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got \(3, 2, 2\)"):
        dwconv3x3(torch.randn(3, 2, 2), torch.randn(3, 1, 3, 3))
    with pytest.raises(ValueError, match=r"\(4, 1, 3, 3\) for 4 channels, got \(4, 1, 5, 5\)"):
        dwconv3x3(torch.randn(1, 4, 2, 2), torch.randn(4, 1, 5, 5))
    with pytest.raises(ValueError, match=r"bias of shape \(4,\), got \(3,\)"):
        dwconv3x3(torch.randn(1, 4, 2, 2), torch.randn(4, 1, 3, 3), torch.randn(3))


def test_gradcheck_reference_float64():
    x, weight, bias = [t.detach().double().requires_grad_() for t in _inputs(1, 3, 3, 4)]
    assert torch.autograd.gradcheck(dwconv3x3_reference, (x, weight, bias))


@pytest.mark.parametrize("c,summed,shape", [(5, 3, (2, 5, 7)), (16, 16, (1, 4, 4)),
                                            (37, 24, (2, 9, 40)), (96, 64, (2, 3, 5)),
                                            (288, 192, (2, 6, 6)), (12, 0, (1, 3, 3))])
@pytest.mark.parametrize("threads", [1, 3])
def test_sums_of_squares_match_reference(c, summed, shape, threads):
    """dwconv3x3_sumsq: y is dwconv3x3's, and the sums of squares of y's first channels over
    each image's pixels equal float64 ones within 1e-5 (float per row, double per image);
    full and partial 16-channel blocks, several images, thread counts that split an image."""
    b, h, w = shape
    x, weight, bias = _inputs(b, c, h, w, scale=2.0)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, sumsq = dwconv3x3_sumsq(x, weight, bias, summed, impl="cpu")
    finally:
        torch.set_num_threads(old)
    assert torch.equal(y, dwconv3x3(x, weight, bias, impl="cpu"))
    ref = dwconv3x3_reference(*[t.detach().double() for t in (x, weight, bias)])
    want = ref[:, :summed].square().sum((2, 3))
    assert sumsq.shape == (b, summed) and sumsq.dtype == torch.float32
    assert not sumsq.requires_grad
    if summed:
        assert rel_error(sumsq.double(), want) < 1e-5
    (gx,) = torch.autograd.grad(y.square().sum(), x)       # y's gradient is unaffected
    (gx_ref,) = torch.autograd.grad(dwconv3x3(x, weight, bias, impl="cpu").square().sum(), x)
    assert torch.equal(gx, gx_ref)


def test_sums_of_squares_off_the_kernel_and_errors():
    x, weight, bias = _inputs(2, 6, 5, 4, layout="nchw")    # the reference path
    y, sumsq = dwconv3x3_sumsq(x, weight, bias, 4)
    assert rel_error(sumsq, y.detach()[:, :4].square().sum((2, 3))) < 1e-6
    assert not sumsq.requires_grad
    with pytest.raises(ValueError, match="sums of squares of 7 channels requested, expected 0 "
                                         "to C=6"):
        dwconv3x3_sumsq(x, weight, bias, 7)
