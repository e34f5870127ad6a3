"""Benchmark session extras (active only when benchmarks actually run, i.e. ``--benchmark-only``
or without the default ``--benchmark-skip``):

- writes a compact JSON summary to ``bench-summary.json`` in the current directory (path via
  ``$IRBLOCKS_BENCH_SUMMARY``): per group, each implementation's median/mean/min seconds, its
  speed-up over the group's naive/released formulation, and the benchmark's extra_info (bytes
  read+written fused vs unfused). The full pytest-benchmark record is written by
  ``--benchmark-json=bench-results.json`` (``irblocks bench`` / ``python -m irblocks.bench`` passes
  it);
- prints the same per-group table at the end of the terminal report.

"Naive" = the implementation whose name starts with ``naive`` in the group (the papers' code
formulation); speed-up = naive median / this median.
"""
import json
import os

import pytest

SUMMARY_ENV = "IRBLOCKS_BENCH_SUMMARY"


def _summary(config) -> dict:
    bs = getattr(config, "_benchmarksession", None)
    if bs is None or getattr(bs, "disabled", False) or getattr(bs, "skip", False):
        return {}
    groups: dict = {}
    for bench in getattr(bs, "benchmarks", []) or []:
        stats = getattr(bench, "stats", None)
        if stats is None or not getattr(stats, "data", None):
            continue
        impl = bench.name.split("[", 1)[-1].rstrip("]") if "[" in bench.name else bench.name
        groups.setdefault(bench.group or "", {})[impl] = {
            "median_s": stats.median, "mean_s": stats.mean, "min_s": stats.min,
            "rounds": stats.rounds, "extra_info": dict(bench.extra_info or {}),
        }
    for impls in groups.values():
        naive = [v["median_s"] for k, v in impls.items() if k.split("-")[0].startswith("naive")]
        for v in impls.values():
            v["speedup_vs_naive"] = (naive[0] / v["median_s"]) if naive and v["median_s"] else None
    return groups


def pytest_sessionfinish(session, exitstatus):
    groups = _summary(session.config)
    if not groups:
        return
    path = os.environ.get(SUMMARY_ENV, "bench-summary.json")
    try:
        with open(path, "w") as f:
            json.dump(groups, f, indent=1, sort_keys=True)
    except OSError:
        pass


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter):
    groups = _summary(terminalreporter.config)
    if not groups:
        return
    tr = terminalreporter
    tr.section("irblocks benchmark medians (speed-up vs naive)")
    for group in sorted(groups):
        impls = groups[group]
        extra = next((v["extra_info"] for v in impls.values() if "bytes_fused" in v["extra_info"]),
                     None)
        line = f"{group}"
        if extra:
            line += (f"  [bytes read+written: fused {extra['bytes_fused'] / 1e6:.1f} MB,"
                     f" unfused {extra['bytes_unfused'] / 1e6:.1f} MB]")
        tr.write_line(line)
        for impl, v in sorted(impls.items(), key=lambda kv: kv[1]["median_s"]):
            sp = v["speedup_vs_naive"]
            tr.write_line(f"    {impl:<40} median {v['median_s'] * 1e3:9.3f} ms"
                          + (f"   x{sp:.2f} vs naive" if sp is not None else ""))
