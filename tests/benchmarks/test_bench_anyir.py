"""AnyIR speed: our execution vs the released code's way of executing, same weights.

``pytest tests/benchmarks/test_bench_anyir.py --benchmark-only``. The "official"
style (``irblocks.set_execution(model, "official")``) runs NCHW, the permute-and-
reshape LayerNorm, the FFT frequency branch and the unfused GatedDA statistics.
The second test of each group prints the ratio official / fast and stores it in
``extra_info["speedup"]`` (target: >= 2x). Output equality of the two styles is
asserted in tests/anyir/test_model.py::test_fast_and_official_execution_agree.

The model forward is timed in process CPU time (``time.process_time``): on a shared
machine wall-clock times of multi-second forwards swing by 2x between rounds, CPU
time much less. (With several intra-op threads CPU time sums the threads.)
"""
import time

import pytest
import torch

import irblocks

_MEANS: dict = {}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return irblocks.create_model("anyir").eval()


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("style", ["fast", "official"])
def test_anyir_forward(benchmark, model, size, style):
    benchmark.group = f"anyir forward 1x3x{size}x{size}"
    irblocks.set_execution(model, style)
    x = torch.randn(1, 3, size, size)

    def run():
        with torch.no_grad():
            return model(x)

    benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    irblocks.set_execution(model, "fast")
    _MEANS[(size, style)] = benchmark.stats.stats.mean
    if (size, "fast") in _MEANS and (size, "official") in _MEANS:
        ratio = _MEANS[(size, "official")] / _MEANS[(size, "fast")]
        benchmark.extra_info["speedup"] = round(ratio, 3)
        print(f"\nanyir 1x3x{size}x{size}: official / fast = {ratio:.2f}x (target >= 2x)")


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
