"""GDFN depthwise 3x3 + GELU gate on CPU: the released code's sequence (NCHW conv, chunk, gelu,
multiply) vs the reference (each half convolved dense, channels_last) vs the compiled C
kernel (one pass forward, one pass backward; CPU only).

Sizes are the gate's input p at the first level of AnyIR and Restormer (batch 2 at 128x128,
as in the training-step benchmark): 2 x 112 and 2 x 224 (AnyIR's encoder, width 28, and
decoder, width 56), 2 x 254 and 2 x 510 (Restormer's encoder, width 48, and decoder, 96);
112, 254 and 510 are not multiples of 32, i.e. each half ends in a partial vector.
``OMP_NUM_THREADS=2 pytest tests/benchmarks/test_bench_dwconv_gelu_gate.py --benchmark-only``
Bytes read + written per forward (float32, E = B*C*H*W*4 with C the gate's output channels):
C kernel 3E (read p, write y); eager chain 9E (conv: read 2E, write 2E; gelu: read E, write E;
multiply: read 2E, write E).
"""
import pytest
import torch
import torch.nn.functional as F

from irblocks.kernels import _cpu_build
from irblocks.kernels.dwconv3x3 import LIBRARY
from irblocks.kernels.dwconv_gelu_gate import dwconv_gelu_gate, dwconv_gelu_gate_reference

SHAPES = [(2, 112, 128, 128), (2, 224, 128, 128), (2, 254, 128, 128), (2, 510, 128, 128)]


def released(p, weight, bias=None):
    z1, z2 = F.conv2d(p, weight, bias, padding=1, groups=weight.shape[0]).chunk(2, dim=1)
    return F.gelu(z1) * z2


def _impls():
    out = [("released_nchw", released), ("reference_channels_last", dwconv_gelu_gate_reference)]
    if _cpu_build.load(LIBRARY) is not None:
        out.append(("c_kernel", lambda p, w: dwconv_gelu_gate(p, w, impl="cpu")))
    return out


def _inputs(shape, name, grad=False):
    torch.manual_seed(0)
    p = torch.randn(shape)
    if name != "released_nchw":
        p = p.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(shape[1], 1, 3, 3) * 0.3
    return p.requires_grad_(grad), weight.requires_grad_(grad)


def _id(shape):
    return "x".join(map(str, shape))


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward(benchmark, name, fn, shape):
    benchmark.group = f"dwconv_gelu_gate forward {_id(shape)}"
    p, weight = _inputs(shape, name)
    with torch.no_grad():
        benchmark(fn, p, weight)


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward_backward(benchmark, name, fn, shape):
    benchmark.group = f"dwconv_gelu_gate forward+backward {_id(shape)}"
    p, weight = _inputs(shape, name, grad=True)
    dy = torch.randn(shape[0], shape[1] // 2, *shape[2:])
    if name != "released_nchw":           # the gradient arriving from a channels_last model
        dy = dy.contiguous(memory_format=torch.channels_last)
    benchmark(lambda: torch.autograd.grad(fn(p, weight), (p, weight), dy))
