"""MDTA channel attention core: Restormer's rearrange-based formulation on NCHW chunks (naive)
vs our reference on chunks of a channels_last qkv tensor (what the block passes) vs
torch.compile of the reference vs Triton (CUDA only). heads = 1 (Restormer level 1, d = 48).

``pytest tests/benchmarks/test_bench_mdta.py --benchmark-only``
Bytes read + written (float32, E = B*C*H*W*4): fused 4E (Triton pass 1 reads q, k; pass 2 reads
v and writes out; the d x d work is negligible); unfused 10E (normalize q and k: read for the
norm, read + write for the division each; q k^T reads both; attn v reads v, writes out).
"""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from irblocks.kernels.mdta import channel_attention, channel_attention_reference
from tests.benchmarks._util import compiled_or_skip

DEV = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [(1, 48, 128, 128), (1, 48, 256, 256)]
HEADS = 1


def naive_restormer(q, k, v, temperature, heads):
    h, w = q.shape[-2:]
    q = rearrange(q, "b (head c) h w -> b head c (h w)", head=heads)
    k = rearrange(k, "b (head c) h w -> b head c (h w)", head=heads)
    v = rearrange(v, "b (head c) h w -> b head c (h w)", head=heads)
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = (q @ k.transpose(-2, -1)) * temperature.view(heads, 1, 1)
    attn = attn.softmax(dim=-1)
    out = attn @ v
    return rearrange(out, "b head c (h w) -> b (head c) h w", head=heads, h=h, w=w)


def bytes_moved(shape, itemsize=4):
    e = shape[0] * shape[1] * shape[2] * shape[3] * itemsize
    return {"bytes_fused": 4 * e, "bytes_unfused": 10 * e}


def _impls():
    out = [("naive_restormer_nchw", naive_restormer),
           ("reference_channels_last", channel_attention_reference),
           ("compiled_reference", "compile")]
    if DEV == "cuda":
        out.append(
            ("triton", lambda q, k, v, t, h: channel_attention(q, k, v, t, h, impl="triton")))
    return out


def _inputs(shape, name, grad=False):
    b, c, h, w = shape
    qkv = torch.randn(b, 3 * c, h, w, device=DEV)
    if name != "naive_restormer_nchw":
        qkv = qkv.contiguous(memory_format=torch.channels_last)
    qkv.requires_grad_(grad)
    q, k, v = qkv.chunk(3, dim=1)
    t = torch.ones(HEADS, device=DEV, requires_grad=grad)
    return qkv, (q, k, v, t, HEADS)


def _fn(fn, args):
    if fn != "compile":
        return fn
    return compiled_or_skip(channel_attention_reference, *args)


@pytest.mark.parametrize("shape", SIZES, ids=["x".join(map(str, s)) for s in SIZES])
@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward(benchmark, name, fn, shape):
    benchmark.group = f"mdta {'x'.join(map(str, shape))}"
    _, args = _inputs(shape, name)
    fn = _fn(fn, args)
    bm = bytes_moved(shape)
    benchmark.extra_info.update(bm, heads=HEADS)
    print(f"\nmdta {shape}: bytes read+written fused {bm['bytes_fused'] / 1e6:.1f} MB, "
          f"unfused {bm['bytes_unfused'] / 1e6:.1f} MB")
    with torch.no_grad():
        benchmark(fn, *args)


@pytest.mark.parametrize("name,fn", _impls(), ids=[n for n, _ in _impls()])
def test_forward_backward(benchmark, name, fn):
    shape = SIZES[0]
    benchmark.group = f"mdta forward+backward {'x'.join(map(str, shape))}"
    qkv, args = _inputs(shape, name, grad=True)
    fn = _fn(fn, args)
    go = torch.randn(shape, device=DEV)
    # the gradient arriving from a channels_last model is channels_last
    if not name.startswith("naive"):
        go = go.contiguous(memory_format=torch.channels_last)
    benchmark(lambda: torch.autograd.grad(fn(*args), (qkv, args[3]), go))
