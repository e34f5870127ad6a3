"""Channel LayerNorm: Restormer's to_3d/to_4d formulation on NCHW (naive) vs our reference
(F.layer_norm on the channels-last view of a channels_last input) vs torch.compile of the
reference vs Triton (CUDA only; the interpreter is not a speed path).

``pytest tests/benchmarks/test_bench_layernorm.py --benchmark-only``
Bytes read + written (float32, E = B*C*H*W*4): fused (reference / Triton, one pass) 2E;
naive 10E (mean, var, x-mu, /sqrt, *w, +b: 6 full reads, 4 full writes).
"""
import pytest
import torch
from einops import rearrange

from irblocks.kernels import _cpu_build
from irblocks.kernels.layernorm import LIBRARY, channel_layer_norm, channel_layer_norm_reference
from tests.benchmarks._util import compiled_or_skip

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(1, 48, 128, 128), (1, 48, 256, 256)]


def naive_restormer(x, weight, bias, eps=1e-5):
    """Restormer's WithBias_LayerNorm wrapped in to_3d / to_4d, on an NCHW tensor."""
    h, w = x.shape[-2:]
    t = rearrange(x, "b c h w -> b (h w) c")
    mu = t.mean(-1, keepdim=True)
    sigma = t.var(-1, keepdim=True, unbiased=False)
    t = (t - mu) / torch.sqrt(sigma + eps) * weight + bias
    return rearrange(t, "b (h w) c -> b c h w", h=h, w=w)


def naive_restormer_bias_free(x, weight, eps=1e-5):
    """Restormer's BiasFree_LayerNorm wrapped in to_3d / to_4d, on an NCHW tensor."""
    h, w = x.shape[-2:]
    t = rearrange(x, "b c h w -> b (h w) c")
    sigma = t.var(-1, keepdim=True, unbiased=False)
    t = t / torch.sqrt(sigma + eps) * weight
    return rearrange(t, "b (h w) c -> b c h w", h=h, w=w)


def bytes_moved(shape, itemsize=4):
    e = shape[0] * shape[1] * shape[2] * shape[3] * itemsize
    return {"bytes_fused": 2 * e, "bytes_unfused": 10 * e}


def _impls():
    out = [("naive_restormer_nchw", naive_restormer),
           ("reference_channels_last", channel_layer_norm_reference),
           ("compiled_reference", "compile")]
    if DEV == "cuda":
        out.append(("triton", lambda x, w, b: channel_layer_norm(x, w, b, impl="triton")))
    elif _cpu_build.load(LIBRARY) is not None:
        out.append(("c_kernel", lambda x, w, b: channel_layer_norm(x, w, b, impl="cpu")))
    return out


def _inputs(shape, name, grad=False):
    x = torch.randn(shape, device=DEV)
    if name != "naive_restormer_nchw":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.rand(shape[1], device=DEV) + 0.5
    b = torch.randn(shape[1], device=DEV)
    return x.requires_grad_(grad), w.requires_grad_(grad), b.requires_grad_(grad)


def _fn(fn, args):
    if fn != "compile":
        return fn
    return compiled_or_skip(channel_layer_norm_reference, *args)


def _report(benchmark, shape):
    bm = bytes_moved(shape)
    benchmark.extra_info.update(bm)
    print(f"\nlayernorm {shape}: bytes read+written fused {bm['bytes_fused'] / 1e6:.1f} MB, "
          f"unfused (naive) {bm['bytes_unfused'] / 1e6:.1f} MB")


@pytest.mark.parametrize("shape", SIZES, ids=["x".join(map(str, s)) for s in SIZES])
@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward(benchmark, name, fn, shape):
    benchmark.group = f"layernorm {'x'.join(map(str, shape))}"
    args = _inputs(shape, name)
    fn = _fn(fn, args)
    _report(benchmark, shape)
    with torch.no_grad():
        benchmark(fn, *args)


@pytest.mark.parametrize("name", ["naive_restormer_nchw", "reference_channels_last"])
def test_forward_bias_free(benchmark, name):
    shape = SIZES[0]
    benchmark.group = f"layernorm bias_free {'x'.join(map(str, shape))}"
    x, w, _ = _inputs(shape, name)
    fn = naive_restormer_bias_free if name.startswith("naive") else \
        (lambda x, w: channel_layer_norm_reference(x, w, None))
    with torch.no_grad():
        benchmark(fn, x, w)


@pytest.mark.parametrize("name", ["naive_nchw", "reference_channels_last", "triton"])
def test_forward_centered(benchmark, name):
    """ClearAIR's scaffold LayerNorm (mean subtracted, no bias, eps 1e-6): a to_3d/to_4d
    formulation on NCHW vs our reference vs Triton (CUDA only)."""
    if name == "triton" and DEV != "cuda":
        pytest.skip("Triton is benchmarked on CUDA only")
    shape = SIZES[0]
    benchmark.group = f"layernorm centered {'x'.join(map(str, shape))}"
    x, w, _ = _inputs(shape, "naive_restormer_nchw" if name == "naive_nchw" else name)
    if name == "naive_nchw":
        fn = lambda x, w: naive_restormer(x, w, 0.0, 1e-6)  # noqa: E731
    else:
        impl = "triton" if name == "triton" else "reference"
        fn = lambda x, w: channel_layer_norm(x, w, None, 1e-6, impl=impl, center=True)  # noqa: E731
    with torch.no_grad():
        benchmark(fn, x, w)


@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward_backward(benchmark, name, fn):
    shape = SIZES[0]
    benchmark.group = f"layernorm forward+backward {'x'.join(map(str, shape))}"
    args = _inputs(shape, name, grad=True)
    fn = _fn(fn, args)
    go = torch.randn(shape, device=DEV)
    # the gradient arriving from a channels_last model is channels_last
    if not name.startswith("naive"):
        go = go.contiguous(memory_format=torch.channels_last)
    benchmark(lambda: torch.autograd.grad(fn(*args), args, go))


def test_bench_entry_point_finds_benchmarks_and_rejects_missing_folder(tmp_path, capsys):
    # plain test (no benchmark fixture): runs in the default suite
    from irblocks import bench
    assert bench.find_benchmarks() is not None
    assert bench.main(["--tests", str(tmp_path / "nope")]) == 1
    assert "no tests/benchmarks folder" in capsys.readouterr().err
