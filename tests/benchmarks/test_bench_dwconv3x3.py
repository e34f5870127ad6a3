"""Depthwise 3x3 convolution on CPU, forward + backward: ``F.conv2d`` on NCHW (the released
code) vs the one-pass compiled C kernel ``dwconv3x3`` (one forward pass, one backward pass for
both gradients; what :func:`irblocks.conv.depthwise_conv2d` runs for a 3x3 while training)
vs the oneDNN path ``depthwise_conv2d`` takes for other kernel sizes (oneDNN channels_last
forward, flipped-kernel forward for the input gradient, the C kernel of
``kernels/depthwise_weight_grad.py`` for the weight gradient; README "Kernels").

Sizes: MDTA's qkv depthwise convolution at AnyIR's first level (2 x 84 x 128 x 128) and
Restormer's decoder (2 x 288 x 128 x 128).
``OMP_NUM_THREADS=2 pytest tests/benchmarks/test_bench_dwconv3x3.py --benchmark-only``
"""
import pytest
import torch
import torch.nn.functional as F

from irblocks.conv import _DepthwiseConv
from irblocks.kernels import _cpu_build
from irblocks.kernels.dwconv3x3 import LIBRARY, dwconv3x3

SHAPES = [(2, 84, 128, 128), (2, 288, 128, 128)]


def _impls():
    out = [("released_nchw", lambda x, w: F.conv2d(x, w, padding=1, groups=w.shape[0])),
           ("onednn_c_weight_grad", lambda x, w: _DepthwiseConv.apply(x, w, None, 1))]
    if _cpu_build.load(LIBRARY) is not None:
        out.append(("c_kernel", lambda x, w: dwconv3x3(x, w, impl="cpu")))
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward_backward(benchmark, name, fn, shape):
    benchmark.group = f"dwconv3x3 forward+backward {'x'.join(map(str, shape))}"
    torch.manual_seed(0)
    memory_format = torch.contiguous_format if name == "released_nchw" else torch.channels_last
    x = torch.randn(shape).contiguous(memory_format=memory_format).requires_grad_()
    weight = torch.randn(shape[1], 1, 3, 3, requires_grad=True)
    dy = torch.randn(shape).contiguous(memory_format=memory_format)
    benchmark(lambda: torch.autograd.grad(fn(x, weight), (x, weight), dy))
