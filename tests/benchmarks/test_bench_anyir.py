"""AnyIR's spatial-frequency fusion: the ``fft`` branch as written vs the ``direct`` sum.

``pytest tests/benchmarks/test_bench_anyir.py --benchmark-only``. The whole-network
AnyIR group (our execution vs the released code's) is in test_bench_models.py.
Equality of the two modes is asserted in tests/anyir/test_blocks.py.
"""
import pytest
import torch

_MEANS: dict = {}


@pytest.mark.parametrize("frequency", ["direct", "fft"])
def test_fusion_frequency_modes(benchmark, frequency):
    from irblocks.anyir import SpatialFrequencyFusion
    benchmark.group = "anyir sf_fusion 1x28x128x128 (fft vs direct)"
    blk = SpatialFrequencyFusion(dim=28, frequency=frequency)
    a = torch.randn(1, 14, 128, 128).contiguous(memory_format=torch.channels_last)
    g = torch.randn(1, 14, 128, 128).contiguous(memory_format=torch.channels_last)

    def run():
        with torch.no_grad():
            return blk(a, g)

    benchmark(run)
    _MEANS[("fusion", frequency)] = benchmark.stats.stats.mean
    if ("fusion", "direct") in _MEANS and ("fusion", "fft") in _MEANS:
        ratio = _MEANS[("fusion", "fft")] / _MEANS[("fusion", "direct")]
        benchmark.extra_info["speedup"] = round(ratio, 3)
        print(f"\nsf_fusion: fft / direct = {ratio:.2f}x")
