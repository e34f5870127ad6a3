"""GDFN gate gelu(x1) * x2: the released code's chunk + F.gelu + multiply on NCHW (naive) vs
our reference (same ops on a channels_last tensor) vs torch.compile of the reference vs Triton
(CUDA only).

Sizes name the block input (1x48xHxW); the gate sees GDFN's hidden tensor:
2 * int(48 * 2.66) = 254 channels in, 127 out.
``pytest tests/benchmarks/test_bench_gdfn_gate.py --benchmark-only``
Bytes read + written (float32, E = B*127*H*W*4): fused 3E (read x1, x2; write y);
unfused 5E (gelu: read E, write E; multiply: read 2E, write E).
"""
import pytest
import torch
import torch.nn.functional as F

from irblocks.kernels.gdfn_gate import gelu_gate, gelu_gate_reference
from tests.benchmarks._util import compiled_or_skip

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(1, 48, 128, 128), (1, 48, 256, 256)]
HIDDEN = int(48 * 2.66)


def naive_released(x):
    x1, x2 = x.chunk(2, dim=1)
    return F.gelu(x1) * x2


def bytes_moved(shape, itemsize=4):
    e = shape[0] * HIDDEN * shape[2] * shape[3] * itemsize
    return {"bytes_fused": 3 * e, "bytes_unfused": 5 * e}


def _impls():
    out = [("naive_released_nchw", naive_released),
           ("reference_channels_last", gelu_gate_reference), ("compiled_reference", "compile")]
    if DEV == "cuda":
        out.append(("triton", lambda x: gelu_gate(x, impl="triton")))
    return out


def _input(shape, name, grad=False):
    x = torch.randn(shape[0], 2 * HIDDEN, shape[2], shape[3], device=DEV)
    if name != "naive_released_nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(grad)


def _fn(fn, x):
    if fn != "compile":
        return fn
    return compiled_or_skip(gelu_gate_reference, x)


@pytest.mark.parametrize("shape", SIZES, ids=["x".join(map(str, s)) for s in SIZES])
@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward(benchmark, name, fn, shape):
    benchmark.group = f"gdfn_gate {'x'.join(map(str, shape))}"
    x = _input(shape, name)
    fn = _fn(fn, x)
    bm = bytes_moved(shape)
    benchmark.extra_info.update(bm, gate_input=[shape[0], 2 * HIDDEN, shape[2], shape[3]])
    print(f"\ngdfn_gate {shape}: bytes read+written fused {bm['bytes_fused'] / 1e6:.1f} MB, "
          f"unfused {bm['bytes_unfused'] / 1e6:.1f} MB")
    with torch.no_grad():
        benchmark(fn, x)


@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward_backward(benchmark, name, fn):
    shape = SIZES[0]
    benchmark.group = f"gdfn_gate forward+backward {'x'.join(map(str, shape))}"
    x = _input(shape, name, grad=True)
    fn = _fn(fn, x)
    go = torch.randn(shape[0], HIDDEN, shape[2], shape[3], device=DEV)
    # the gradient arriving from a channels_last model is channels_last
    if not name.startswith("naive"):
        go = go.contiguous(memory_format=torch.channels_last)
    benchmark(lambda: torch.autograd.grad(fn(x), (x,), go))
