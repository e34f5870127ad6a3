"""Haar DWT / IDWT microbenchmarks (run: pytest tests/benchmarks/test_bench_haar_dwt.py
--benchmark-only).

Compared: the naive formulation the papers' code uses (pytorch-wavelets' strided-conv
DWTForward / conv-transpose DWTInverse, J=1, haar, mode='zero'), our PyTorch reference,
torch.compile of the reference (skipped if compile fails here), and Triton (CUDA only).
Bytes moved (fp32): fused = read x + write 4 subbands = 2 * N * 4 bytes; the reference
reads x once per butterfly stage (~4 passes); the naive conv path pads, runs two grouped
1-D convolutions per axis and concatenates (~6 passes).
"""
import pytest
import torch

from irblocks.kernels.haar_dwt import haar_dwt, haar_dwt_reference, haar_idwt, haar_idwt_reference
from tests.benchmarks._util import compiled_or_skip

B, C, H, W = 1, 48, 128, 128
FORMATS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


def _x(fmt, shape=(B, C, H, W)):
    return torch.randn(*shape).contiguous(memory_format=FORMATS[fmt])


def _bytes(n_elems: int, passes: int) -> int:
    return n_elems * 4 * passes


@pytest.fixture(scope="module", autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    n_el = B * C * H * W
    print(f"\nhaar_dwt {B}x{C}x{H}x{W}: fused bytes read+written {_bytes(n_el, 2) / 1e6:.1f} MB, "
          f"reference ~{_bytes(n_el, 5) / 1e6:.1f} MB, naive conv ~{_bytes(n_el, 8) / 1e6:.1f} MB")
    yield
    torch.set_num_threads(n)


def _naive_modules():
    from pytorch_wavelets import DWTForward, DWTInverse
    return DWTForward(J=1, wave="haar", mode="zero"), DWTInverse(wave="haar", mode="zero")


def _split(y):
    c = y.shape[1] // 4
    return y[:, :c].contiguous(), [y[:, c:].unflatten(1, (3, c)).transpose(1, 2).contiguous()]


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("impl", ["naive", "reference", "compiled", "triton"])
def test_dwt(benchmark, impl, fmt):
    benchmark.group = f"haar_dwt {B}x{C}x{H}x{W} {fmt}"
    x = _x(fmt)
    if impl == "naive":
        fwd = _naive_modules()[0]
        fn = lambda: fwd(x)  # noqa: E731
    elif impl == "reference":
        fn = lambda: haar_dwt_reference(x)  # noqa: E731
    elif impl == "compiled":
        comp = compiled_or_skip(haar_dwt_reference, x)
        fn = lambda: comp(x)  # noqa: E731
    else:
        if not torch.cuda.is_available():
            pytest.skip("Triton path is benchmarked on CUDA only")
        x = x.cuda()
        fn = lambda: haar_dwt(x, impl="triton")  # noqa: E731
    benchmark(fn)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("impl", ["naive", "reference", "compiled", "triton"])
def test_idwt(benchmark, impl, fmt):
    benchmark.group = f"haar_idwt {B}x{C}x{H}x{W} {fmt}"
    y = haar_dwt_reference(_x(fmt))
    if impl == "naive":
        inv = _naive_modules()[1]
        yl, yh = _split(y)
        fn = lambda: inv((yl, yh))  # noqa: E731
    elif impl == "reference":
        fn = lambda: haar_idwt_reference(y)  # noqa: E731
    elif impl == "compiled":
        comp = compiled_or_skip(haar_idwt_reference, y)
        fn = lambda: comp(y)  # noqa: E731
    else:
        if not torch.cuda.is_available():
            pytest.skip("Triton path is benchmarked on CUDA only")
        y = y.cuda()
        fn = lambda: haar_idwt(y, impl="triton")  # noqa: E731
    benchmark(fn)
