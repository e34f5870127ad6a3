"""Benchmarks of ClearAIR's semantic cross-attention: dense (the scaffold's (HW)^2
attention) vs pattern tokens (irblocks.kernels.pattern_sca), forward + backward on a
1 x 48 x S x S feature (level 1 of ClearAIR, 4 heads) with 16 k-means region masks.

Run: ``pytest tests/benchmarks/test_bench_sca.py --benchmark-only -s``.
Time: pytest-benchmark groups "sca 1x48x64x64" / "sca 1x48x128x128". Peak memory: each
variant runs once more in a fresh subprocess and the growth of its peak RSS (VmHWM,
reset after setup via /proc/self/clear_refs) over the post-setup RSS is stored in
``extra_info`` and printed.
Dense at 128x128 needs ~2 x 4.3 GB (logits + softmax, fp32) plus their gradients: it
runs only with IRBLOCKS_BENCH_BIG=1 (the machine is shared); otherwise its size is
estimated from shapes. Triton only on CUDA.
"""
import os
import subprocess
import sys

import pytest
import torch

from tests.benchmarks._util import PROC_MEMORY, compiled_or_skip

C, HEADS = 48, 4
SIZES = (64, 128)

_SCRIPT = PROC_MEMORY + r"""
import sys, time, torch, irblocks
from irblocks.guidance import Guidance
from irblocks.registry import build
torch.set_num_threads(1)
mode, size = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
blk = build({"type": "semantic_cross_attention", "mode": mode, "mask_dropout": 0.0}, "block",
            dim=48).train()
img = torch.rand(1, 3, size, size)
masks = build({"type": "kmeans_regions", "k": 16}, "prior")(img)["masks"]
x = torch.randn(1, 48, size, size, requires_grad=True).contiguous(memory_format=torch.channels_last)
g = Guidance({"prior.masks": masks})
reset_peak()                 # setup does not count
base = status("VmRSS")
t = time.perf_counter()
blk(x, g).square().mean().backward()
dt = time.perf_counter() - t
print(f"RESULT {status('VmHWM') - base} {dt}")
"""


def peak_memory(mode: str, size: int) -> tuple[int, float]:
    """(peak RSS growth in bytes, seconds) of one forward + backward in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", _SCRIPT, mode, str(size)], capture_output=True,
                       text=True, env=env, timeout=1800)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT")]
    if r.returncode != 0 or not line:
        raise RuntimeError(r.stderr[-2000:])
    _, b, t = line[0].split()
    return int(b), float(t)


def dense_bytes(size: int, dtype_bytes: int = 4) -> int:
    """Logits + softmax probabilities of the dense formulation (forward), per image."""
    n = size * size
    return 2 * HEADS * n * n * dtype_bytes


def pattern_bytes(size: int, patterns: int = 17, dtype_bytes: int = 4) -> int:
    n = size * size
    return 2 * HEADS * n * patterns * dtype_bytes


def kernel_bytes(size: int, patterns: int = 17, dtype_bytes: int = 4) -> dict:
    """Bytes read + written by the pattern attention forward: the fused Triton kernel
    (q, k, v, bias in; out, lse out) vs the unfused reference (logits and probabilities
    written and read back once each)."""
    n, d = size * size, C // HEADS
    fused = (2 * HEADS * n * d + 2 * HEADS * patterns * d + patterns + HEADS * n) * dtype_bytes
    unfused = fused + 2 * 2 * HEADS * n * patterns * dtype_bytes
    return {"fused": fused, "unfused": unfused}


def _setup(mode, size):
    from irblocks.guidance import Guidance
    from irblocks.registry import build
    torch.manual_seed(0)
    blk = build({"type": "semantic_cross_attention", "mode": mode, "mask_dropout": 0.0}, "block",
                dim=C).train()
    prior = build({"type": "kmeans_regions", "k": 16}, "prior")
    masks = prior(torch.rand(1, 3, size, size))["masks"]
    x = torch.randn(1, C, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    return blk, x, Guidance({"prior.masks": masks})


def _step(blk, x, g):
    blk(x, g).square().mean().backward()


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("variant", ["dense", "pattern", "pattern_compiled", "pattern_triton"])
def test_bench_sca(benchmark, variant, size):
    benchmark.group = f"sca 1x{C}x{size}x{size}"
    big = os.environ.get("IRBLOCKS_BENCH_BIG") == "1"
    if variant == "dense" and size > 64 and not big:
        print(f"\n[sca {size}] dense: skipped (needs >= {2 * dense_bytes(size) / 1e9:.1f} GB); "
              f"pattern logits {pattern_bytes(size) / 1e6:.1f} MB vs dense "
              f"{dense_bytes(size) / 1e9:.2f} GB")
        pytest.skip(f"dense SCA at {size}x{size} needs >= {2 * dense_bytes(size) / 1e9:.1f} GB; "
                    "set IRBLOCKS_BENCH_BIG=1")
    if variant == "pattern_triton" and not torch.cuda.is_available():
        pytest.skip("Triton path benchmarked on CUDA only")
    mode = "dense" if variant == "dense" else "pattern"
    blk, x, g = _setup(mode, size)
    step = _step
    if variant == "pattern_compiled":
        cblk = compiled_or_skip(blk, x, g)
        blk = cblk
    if variant == "pattern_triton":
        blk, x = blk.cuda(), x.detach().cuda().requires_grad_()
        g.put("prior.masks", g.get("prior.masks").cuda())
    benchmark.pedantic(step, args=(blk, x, g), rounds=3, iterations=1, warmup_rounds=1)
    if variant in ("dense", "pattern"):
        peak, secs = peak_memory(mode, size)
        benchmark.extra_info.update(peak_rss_bytes=peak, subprocess_seconds=secs,
                                    attention_bytes=dense_bytes(size) if mode == "dense"
                                    else pattern_bytes(size))
        print(f"\n[sca {size}] {variant}: peak RSS growth {peak / 1e6:.1f} MB, one fwd+bwd "
              f"{secs:.3f} s; attention matrices "
              f"{benchmark.extra_info['attention_bytes'] / 1e6:.1f} MB")
        if mode == "pattern":
            kb = kernel_bytes(size)
            print(f"[sca {size}] pattern attention forward bytes: fused {kb['fused'] / 1e6:.1f} MB "
                  f"vs unfused {kb['unfused'] / 1e6:.1f} MB")
