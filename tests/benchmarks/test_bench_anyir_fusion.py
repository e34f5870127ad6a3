"""anyir_fusion kernel: the released code's formulation (FFT branch, separate ops) vs our
reference vs torch.compile of the reference vs Triton (CUDA only).

``pytest tests/benchmarks/test_bench_anyir_fusion.py --benchmark-only``
"""
import pytest
import torch

from irblocks.kernels import _cpu_build
from irblocks.kernels.anyir_fusion import (
    LIBRARY,
    anyir_fusion,
    anyir_fusion_naive,
    anyir_fusion_reference,
    bytes_moved,
)
from tests.benchmarks._util import compiled_or_skip

SHAPE = (1, 24, 128, 128)      # C' = 24 -> output 1x48x128x128
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(grad=False):
    a = torch.randn(SHAPE, device=DEV).contiguous(memory_format=torch.channels_last)
    a.requires_grad_(grad)
    g = torch.randn(SHAPE, device=DEV).contiguous(memory_format=torch.channels_last)
    g.requires_grad_(grad)
    return a, g, torch.tensor(0.5, device=DEV, requires_grad=grad)


def _impls():
    out = [("naive_released", anyir_fusion_naive), ("reference", anyir_fusion_reference)]
    out.append(("compiled_reference", "compile"))
    if DEV == "cuda":
        out.append(("triton", lambda a, g, l: anyir_fusion(a, g, l, impl="triton")))
    elif _cpu_build.load(LIBRARY) is not None:
        out.append(("c_kernel", lambda a, g, l: anyir_fusion(a, g, l, impl="cpu")))
    return out


def _fn(fn):
    if fn != "compile":
        return fn
    return compiled_or_skip(anyir_fusion_reference, *_inputs())


@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward(benchmark, name, fn):
    benchmark.group = "anyir_fusion forward 1x24x128x128 -> 1x48x128x128"
    fn = _fn(fn)
    a, g, lam = _inputs()
    bm = bytes_moved(SHAPE)
    benchmark.extra_info.update(bm)
    print(f"\nbytes read+written: fused {bm['fused'] / 1e6:.1f} MB, released unfused "
          f"{bm['unfused'] / 1e6:.1f} MB")
    with torch.no_grad():
        benchmark(fn, a, g, lam)


@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward_backward(benchmark, name, fn):
    benchmark.group = "anyir_fusion forward+backward 1x24x128x128"
    fn = _fn(fn)
    a, g, lam = _inputs(grad=True)
    go = torch.randn(1, 48, 128, 128, device=DEV)

    def run():
        return torch.autograd.grad(fn(a, g, lam), (a, g, lam), go)

    benchmark(run)
