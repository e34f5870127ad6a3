"""What ``IRBLOCKS_MALLOC`` (``irblocks.keep_freed_memory``) buys: full-size Restormer, our
default execution, each policy in its own fresh process (the setting is process-wide and
one-way), the two alternating round by round:

    OMP_NUM_THREADS=2 pytest tests/benchmarks/test_bench_allocator.py --benchmark-only -s

pytest-benchmark times the whole ``keep`` process (model build included); the ``system``
process runs before each round as its setup. ``extra_info`` holds, per policy, the median
time of one forward / training step inside the process (first one dropped), its page faults
and the process's peak resident memory above the built model, and ``speedup`` = system /
keep of those per-step medians. README, "Execution switches" and the allocator paragraph.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tests.benchmarks._util import PROC_MEMORY, median

NAME = "restormer"
WORKLOADS = {"forward": (1, 256, 6), "train": (2, 128, 8)}     # batch, size, steps

_SCRIPT = PROC_MEMORY + textwrap.dedent("""
    import json, resource, sys, time
    import torch, irblocks

    applied = irblocks.keep_freed_memory()
    name, workload = sys.argv[1], sys.argv[2]
    batch, size, steps = map(int, sys.argv[3:6])
    torch.manual_seed(0)
    model = irblocks.create_model(name).train(workload == "train")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)

    def step():
        if workload == "forward":
            with torch.no_grad():
                model(x)
        else:
            opt.zero_grad(set_to_none=True)
            (model(x) - y).abs().mean().backward()
            opt.step()

    base = status("VmRSS")
    reset_peak()
    times, faults = [], []
    for _ in range(steps):
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"applied": applied, "times": times, "faults": faults,
                      "peak_mb": (status("VmHWM") - base) / 2**20}))
""")


def _run(policy: str, workload: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["IRBLOCKS_MALLOC"] = policy
    env.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    out = subprocess.run([sys.executable, "-c", _SCRIPT, NAME, workload,
                          *map(str, WORKLOADS[workload])],
                         capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{policy} {workload} subprocess failed: {out.stderr[-500:]}")
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc, /proc: Linux")
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_allocator_policy(benchmark, workload):
    batch, size, _ = WORKLOADS[workload]
    benchmark.group = f"allocator {NAME} {workload} {batch}x3x{size}x{size}"
    runs: dict = {"system": [], "keep": []}
    benchmark.pedantic(lambda: runs["keep"].append(_run("keep", workload)),
                       setup=lambda: runs["system"].append(_run("system", workload)),
                       rounds=2, iterations=1)
    summary = {}
    for policy, results in runs.items():
        steps = [t for r in results for t in r["times"][1:]]     # first step: warm-up
        faults = [f for r in results for f in r["faults"][1:]]
        summary[policy] = {"applied": all(r["applied"] for r in results),
                           "step_s": round(median(steps), 3),
                           "faults_per_step": median(faults),
                           "peak_mb": round(max(r["peak_mb"] for r in results), 1)}
    benchmark.extra_info.update(summary)
    speedup = summary["system"]["step_s"] / summary["keep"]["step_s"]
    benchmark.extra_info["speedup"] = round(speedup, 3)
    print(f"\n{NAME} {workload} {batch}x3x{size}x{size}, per step (median), system -> keep: "
          f"{summary['system']['step_s']:.2f} s -> {summary['keep']['step_s']:.2f} s "
          f"({speedup:.2f}x), page faults {summary['system']['faults_per_step']:,} -> "
          f"{summary['keep']['faults_per_step']:,}, peak above the model "
          f"{summary['system']['peak_mb']:.0f} -> {summary['keep']['peak_mb']:.0f} MiB "
          f"({torch.get_num_threads()} threads; keep applied: {summary['keep']['applied']})")
