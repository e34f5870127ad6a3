"""Whole-network speed: our execution vs the official code's way of executing, same weights.

    pytest tests/benchmarks/test_bench_models.py --benchmark-only

The "official" style (``irblocks.set_execution(model, "official")``) runs NCHW with the
permute-and-reshape LayerNorm, unfused GDFN gating and rearrange-based MDTA (plus, for
AnyIR, the FFT frequency branch and the unfused GatedDA statistics). The second
benchmark of each group prints official / fast and stores it in
``extra_info["speedup"]`` (target: >= 2x). Output equality of the two styles is a normal
test (tests/test_blocks_and_models.py, tests/anyir/test_model.py).
"""
import pytest
import torch

import irblocks

MODELS = ["restormer", "promptir", "anyir"]
_MEANS: dict = {}
_CACHE: dict = {}


def _model(name):
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE.clear()                      # keep one full-size model in memory at a time
        _CACHE[name] = irblocks.create_model(name).eval()
    return _CACHE[name]


@pytest.mark.parametrize("size", [128, 256])
@pytest.mark.parametrize("style", ["fast", "official"])
@pytest.mark.parametrize("name", MODELS)
def test_model_forward(benchmark, name, size, style):
    if name not in irblocks.list_models():
        pytest.skip(f"no recipe {name!r}")
    model = _model(name)
    benchmark.group = f"{name} forward 1x3x{size}x{size}"
    irblocks.set_execution(model, style)
    x = torch.randn(1, 3, size, size)

    def run():
        with torch.no_grad():
            return model(x)

    try:
        benchmark.pedantic(run, rounds=3, warmup_rounds=1, iterations=1)
    finally:
        irblocks.set_execution(model, "fast")
    _MEANS[(name, size, style)] = benchmark.stats.stats.median
    if (name, size, "fast") in _MEANS and (name, size, "official") in _MEANS:
        ratio = _MEANS[(name, size, "official")] / _MEANS[(name, size, "fast")]
        benchmark.extra_info["speedup"] = round(ratio, 3)
        print(f"\n{name} 1x3x{size}x{size}: official / fast = {ratio:.2f}x (target >= 2x)")
