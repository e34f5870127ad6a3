"""Depthwise 7x7 weight + bias gradient on CPU: ATen's ``convolution_backward`` (oneDNN; what
the released code's backward and our previous fast path ran) vs the compiled C kernel.

Sizes: AnyIR's GatedDA depthwise 7x7 at the first two levels (alpha channels 19 and 37).
Measured 2026-11-30, 2 threads, min: 2x19x128x128 0.83 vs 4.14 ms, 2x37x64x64 0.42 vs 1.88 ms.
``OMP_NUM_THREADS=2 pytest tests/benchmarks/test_bench_depthwise_weight_grad.py --benchmark-only``
"""
import pytest
import torch

from irblocks.kernels import _cpu_build
from irblocks.kernels.depthwise_weight_grad import (
    LIBRARY,
    depthwise_weight_grad,
    depthwise_weight_grad_reference,
)

SHAPES = [(2, 19, 128, 128), (2, 37, 64, 64)]


def _impls():
    out = [("convolution_backward",
            lambda dy, x: depthwise_weight_grad_reference(dy, x, 7, True))]
    if _cpu_build.load(LIBRARY) is not None:
        out.append(("c_kernel", lambda dy, x: depthwise_weight_grad(dy, x, 7, True, impl="cpu")))
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_backward_weight_grad(benchmark, name, fn, shape):
    benchmark.group = f"depthwise 7x7 weight+bias gradient {'x'.join(map(str, shape))}"
    torch.manual_seed(0)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    benchmark(lambda: fn(dy, x))
