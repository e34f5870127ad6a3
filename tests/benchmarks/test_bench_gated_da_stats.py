"""gated_da_modulate kernel (GatedDA temperature statistics + gate): the released code's
formulation vs our reference vs torch.compile of the reference vs Triton (CUDA only).

``pytest tests/benchmarks/test_bench_gated_da_stats.py --benchmark-only``
"""
import pytest
import torch

from irblocks.kernels.gated_da_stats import (
    bytes_moved,
    gated_da_modulate,
    gated_da_modulate_naive,
    gated_da_modulate_reference,
)
from tests.benchmarks._util import compiled_or_skip

F_SHAPE = (1, 24, 128, 128)     # GatedDA at C' = 24: alpha = round(8/3 * 24) - 48 = 16 channels
A_CH = 16
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(grad=False):
    f = torch.randn(F_SHAPE, device=DEV).contiguous(memory_format=torch.channels_last)
    f.requires_grad_(grad)
    al = torch.randn(F_SHAPE[0], A_CH, *F_SHAPE[2:], device=DEV).contiguous(
        memory_format=torch.channels_last).requires_grad_(grad)
    return f, al, torch.ones(1, F_SHAPE[1], 1, 1, device=DEV, requires_grad=grad)


def _impls():
    out = [("naive_released", gated_da_modulate_naive), ("reference", gated_da_modulate_reference),
           ("compiled_reference", "compile")]
    if DEV == "cuda":
        out.append(("triton", lambda f, a, t: gated_da_modulate(f, a, t, impl="triton")))
    return out


def _fn(fn):
    if fn != "compile":
        return fn
    return compiled_or_skip(gated_da_modulate_reference, *_inputs())


@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward(benchmark, name, fn):
    benchmark.group = "gated_da_modulate forward 1x24x128x128 (alpha 16)"
    fn = _fn(fn)
    f, al, tau = _inputs()
    bm = bytes_moved(F_SHAPE, A_CH)
    benchmark.extra_info.update(bm)
    print(f"\nbytes read+written: fused {bm['fused'] / 1e6:.1f} MB, released unfused "
          f"{bm['unfused'] / 1e6:.1f} MB")
    with torch.no_grad():
        benchmark(fn, f, al, tau)


@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward_backward(benchmark, name, fn):
    benchmark.group = "gated_da_modulate forward+backward 1x24x128x128"
    fn = _fn(fn)
    f, al, tau = _inputs(grad=True)
    go = torch.randn(1, A_CH, 128, 128, device=DEV)
    benchmark(lambda: torch.autograd.grad(fn(f, al, tau), (f, al, tau), go))
