"""FSB dynamic 3x3 filter microbenchmarks (pytest tests/benchmarks/test_bench_fsb_filter.py
--benchmark-only).

Compared: the naive formulation (reflect pad + ``F.unfold`` -> B x C*k*k x HW, multiply by the
per-sample weights, sum over the taps -- the paper's "unfold into local patches"), our
shift-and-add reference (same reflect padding; never materialises the k*k copies), its
torch.compile, and Triton (CUDA only). Bytes moved (fp32, k=3): fused = read x + write L =
2N*4 bytes; shift-and-add ~ pad (2N) + k*k multiply-adds over shifted views (3N each) ~ 29N*4;
unfold ~ pad (2N) + unfold write k*k N + product read/write 2 k*k N + sum k*k N + N ~ 39N*4.
"""
import pytest
import torch
import torch.nn.functional as F

from irblocks.kernels.fsb_filter import fsb_filter, fsb_filter_reference
from tests.benchmarks._util import compiled_or_skip

B, C, H, W, K, G = 1, 48, 128, 128, 3, 4
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def unfold_naive(x, weight, k):
    b, c, h, w = x.shape
    p = k // 2
    cols = F.unfold(F.pad(x, (p, p, p, p), mode="reflect"), k).view(b, c, k * k, h, w)
    wc = weight.repeat_interleave(c // weight.shape[1], dim=1)
    return (cols * wc[..., None, None]).sum(2)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    n_el = B * C * H * W
    print(f"\nfsb_filter {B}x{C}x{H}x{W} k={K}: fused bytes read+written {n_el * 8 / 1e6:.1f} MB, "
          f"shift-and-add ~{n_el * 4 * 29 / 1e6:.1f} MB, unfold ~{n_el * 4 * 39 / 1e6:.1f} MB")
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("impl", ["naive_unfold", "reference", "compiled", "triton"])
def test_fsb_filter(benchmark, impl, fmt):
    benchmark.group = f"fsb_filter {B}x{C}x{H}x{W} k{K} {fmt}"
    x = torch.randn(B, C, H, W).contiguous(memory_format=FORMATS[fmt])
    w = torch.softmax(torch.randn(B, G, K * K), dim=-1)
    if impl == "naive_unfold":
        fn = lambda: unfold_naive(x, w, K)  # noqa: E731
    elif impl == "reference":
        fn = lambda: fsb_filter_reference(x, w, K)  # noqa: E731
    elif impl == "compiled":
        comp = compiled_or_skip(fsb_filter_reference, x, w, K)
        fn = lambda: comp(x, w, K)  # noqa: E731
    else:
        if not torch.cuda.is_available():
            pytest.skip("Triton path is benchmarked on CUDA only")
        x, w = x.cuda(), w.cuda()
        fn = lambda: fsb_filter(x, w, K, impl="triton")  # noqa: E731
    benchmark(fn)


def test_naive_and_reference_agree():
    x = torch.randn(2, 8, 9, 7)
    w = torch.softmax(torch.randn(2, 4, 9), -1)
    torch.testing.assert_close(fsb_filter_reference(x, w, 3), unfold_naive(x, w, 3), atol=1e-5,
                               rtol=1e-5)
