"""Depthwise k x k weight/bias gradient: the compiled C kernel (CPU) vs ATen's
``convolution_backward`` in float64.

Tolerances: float32, relative to the largest magnitude, 1e-5 for dW and db (sums over every
pixel in another order; observed 3e-8..1e-7). The C kernel's column tiles, row groups, the
fold into double every 16 groups, channel counts that are not a multiple of 16 and band
starts inside an image are all exercised by the shapes and thread counts below.
"""
import pytest
import torch

from irblocks.conv import depthwise_conv2d
from irblocks.kernels import _cpu_build
from irblocks.kernels._dispatch import out_format
from irblocks.kernels.depthwise_weight_grad import (
    LIBRARY,
    MAX_KERNEL_SIZE,
    depthwise_weight_grad,
    depthwise_weight_grad_reference,
)
from tests._compare import rel_error
from tests.kernels.kutil import LAYOUTS, make

pytestmark = pytest.mark.skipif(
    _cpu_build.load(LIBRARY) is None,
    reason=f"C kernel unavailable here: {_cpu_build.unavailable(LIBRARY)}")

TOL = 1e-5


def _pair(b, c, h, w, layout="channels_last", seed=0):
    torch.manual_seed(seed)
    return make(b, c, h, w, layout), make(b, c, h, w, layout)


def _check(dy, x, k, with_bias=True, impl="cpu"):
    dw, db = depthwise_weight_grad(dy, x, k, with_bias, impl=impl)
    ref_w, ref_b = depthwise_weight_grad_reference(dy.double(), x.double(), k, with_bias)
    assert dw.shape == (x.shape[1], 1, k, k) and dw.dtype == x.dtype
    assert rel_error(dw, ref_w) < TOL
    if with_bias:
        assert rel_error(db, ref_b) < TOL
    else:
        assert db is None


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 1, 9), (1, 6, 1), (2, 4, 4), (1, 9, 40),
                                   (1, 300, 3)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("c", [1, 5, 16, 19, 37])
@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_matches_reference(shape, c, k):
    b, h, w = shape
    _check(*_pair(b, c, h, w), k)


@pytest.mark.parametrize("c,w", [(200, 30), (3000, 2)])
def test_column_tiles(c, w):
    """More than one column tile per row (2560 floats each), and a 1-pixel tile."""
    _check(*_pair(2, c, 5, w), 7)


@pytest.mark.parametrize("threads", [1, 3, 5])
def test_thread_counts(threads):
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(*_pair(2, 21, 7, 6), 7)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout(layout, monkeypatch):
    """Inputs with channels as the fastest axis run the C kernel (on a dense copy when they
    are views); the others keep the reference."""
    from irblocks.kernels import depthwise_weight_grad as module
    calls = []
    real = module._cpu
    monkeypatch.setattr(module, "_cpu", lambda *a: calls.append(1) or real(*a))
    dy, x = _pair(1, 6, 5, 5, layout)
    _check(dy, x, 5, impl="auto")
    assert calls == ([1] if out_format(x) == torch.channels_last else [])


def test_without_bias_and_empty_maps():
    _check(*_pair(1, 6, 5, 5), 7, with_bias=False)
    dw, db = depthwise_weight_grad(*_pair(0, 4, 5, 5), 7, True, impl="cpu")
    assert dw.abs().sum() == 0 and db.abs().sum() == 0


def test_kernel_sizes_the_c_kernel_does_not_take_run_the_reference(monkeypatch):
    from irblocks.kernels import depthwise_weight_grad as module
    calls = []
    real = module._cpu
    monkeypatch.setattr(module, "_cpu", lambda *a: calls.append(a[2]) or real(*a))
    _check(*_pair(1, 3, 9, 9), 1)
    _check(*_pair(1, 3, 20, 20), MAX_KERNEL_SIZE + 2)
    _check(*_pair(1, 3, 20, 20), MAX_KERNEL_SIZE)
    assert calls == [MAX_KERNEL_SIZE]


@pytest.mark.parametrize("k,kernels", [(3, "cpu"), (3, "reference"), (7, "cpu")])
def test_depthwise_conv2d_backward_uses_it(k, kernels, monkeypatch):
    """depthwise_conv2d's backward takes this weight gradient, except for a 3x3 while the C
    kernels run: then the one-pass dwconv3x3 kernel does forward and backward."""
    from irblocks import conv
    monkeypatch.setenv("IRBLOCKS_KERNELS", kernels)
    calls = []
    real = conv.depthwise_weight_grad
    monkeypatch.setattr(conv, "depthwise_weight_grad",
                        lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    x = make(2, 19, 9, 11, "channels_last", requires_grad=True)
    weight = torch.randn(19, 1, k, k, requires_grad=True)
    bias = torch.randn(19, requires_grad=True)
    dy = torch.randn(2, 19, 9, 11)
    y = depthwise_conv2d(x, weight, bias)
    one_pass = k == 3 and kernels == "cpu" and conv.runs_cpu_kernel(x, weight, bias)
    assert (type(y.grad_fn).__name__ == "_Dwconv3x3CpuBackward") == one_pass
    grads = torch.autograd.grad(y, (x, weight, bias), dy)
    ref = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    ref_grads = torch.autograd.grad(torch.nn.functional.conv2d(*ref, padding=k // 2, groups=19),
                                    ref, dy.double())
    assert calls == ([] if one_pass else [k])
    for g, r in zip(grads, ref_grads):
        assert rel_error(g, r) < TOL


def test_grad_of_grad_through_depthwise_conv2d_matches_conv2d():
    """create_graph=True: the weight gradient must stay differentiable (the reference runs)."""
    def second_order(conv):
        torch.manual_seed(0)
        x = make(1, 5, 6, 7, "channels_last", requires_grad=True)
        weight = torch.randn(5, 1, 7, 7, requires_grad=True)
        (gw,) = torch.autograd.grad(conv(x, weight).square().sum(), weight, create_graph=True)
        gw.square().sum().backward()
        return [gw, x.grad, weight.grad]

    ours = second_order(depthwise_conv2d)
    ref = second_order(lambda a, w: torch.nn.functional.conv2d(a, w, padding=3, groups=5))
    for a, r in zip(ours, ref):
        assert rel_error(a, r) < TOL


def test_errors():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(ValueError, match=r"one \(B, C, H, W\) shape, got \(1, 4, 5, 4\) and "
                                         r"\(1, 4, 5, 5\)"):
        depthwise_weight_grad(torch.randn(1, 4, 5, 4), x, 3)
    with pytest.raises(ValueError, match="kernel_size must be a positive odd number, got 4"):
        depthwise_weight_grad(x, x, 4)


def test_gradcheck_reference_float64(monkeypatch):
    """float64 takes the reference (``convolution_backward``) inside depthwise_conv2d's custom
    backward: its weight and bias gradients (and the flipped-kernel input gradient) against
    numerical differences, with the path asserted."""
    from irblocks import conv
    calls = []
    real = conv.depthwise_weight_grad
    monkeypatch.setattr(conv, "depthwise_weight_grad",
                        lambda *a, **kw: calls.append(a[2]) or real(*a, **kw))
    torch.manual_seed(0)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(3, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(depthwise_conv2d, (x, weight, bias))
    assert calls and set(calls) == {5}
