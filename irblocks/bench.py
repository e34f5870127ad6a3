"""``irblocks bench``: run the micro/model benchmarks and write a JSON record.

    irblocks bench                      # all of tests/benchmarks -> bench-results.json
    irblocks bench -k layernorm -o ln.json
    irblocks bench -- --benchmark-min-rounds=10   # extra pytest arguments after --
    irblocks bench --threads 1 -k train           # thread count of the timed code

Runs ``pytest <tests>/benchmarks --benchmark-only --benchmark-json=<out>`` in a subprocess
(benchmarks live in the source checkout, not in the installed package). The per-group medians
and speed-ups over the papers' naive formulations are printed at the end and also written to
``bench-summary.json`` (see tests/benchmarks/conftest.py). While it runs, one progress bar
(tests done, rate, ETA; :mod:`irblocks.bench_progress`) is shown on stderr and pytest's
report is printed at the end. The benchmarks run with ``--threads`` intra-op threads
(``OMP_NUM_THREADS`` in the subprocess; default: the caller's ``OMP_NUM_THREADS``, else
torch's default), not the test suite's one-thread setting.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "find_benchmarks"]


def find_benchmarks(start: str | os.PathLike | None = None) -> Path | None:
    """tests/benchmarks of the source checkout: from ``start``/cwd upwards, then next to this
    package."""
    candidates = []
    here = Path(start or os.getcwd()).resolve()
    candidates += [p / "tests" / "benchmarks" for p in (here, *here.parents)]
    candidates.append(Path(__file__).resolve().parents[1] / "tests" / "benchmarks")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(prog="irblocks bench",
                                description="Run irblocks benchmarks (pytest-benchmark).")
    p.add_argument("-o", "--out", default="bench-results.json",
                   help="pytest-benchmark JSON output (default %(default)s)")
    p.add_argument("-k", dest="keyword", default=None,
                   help="only benchmarks matching this pytest -k expression")
    p.add_argument("--tests", default=None,
                   help="benchmark folder (default: tests/benchmarks of the checkout)")
    p.add_argument("--summary", default=None, help="summary JSON path (default bench-summary.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads of the timed code (default: $OMP_NUM_THREADS if set, "
                        "else torch's default, the physical core count; the test suite's "
                        "conftest would otherwise run everything on one)")
    a = p.parse_args(argv)
    if a.threads is not None and a.threads < 1:
        p.error(f"--threads must be a positive integer, got {a.threads}")
    folder = Path(a.tests) if a.tests else find_benchmarks()
    if folder is None or not folder.is_dir():
        print("irblocks bench: no tests/benchmarks folder found (benchmarks ship with the source "
              "checkout); run from the repository or pass --tests PATH", file=sys.stderr)
        return 1
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("irblocks bench: pytest-benchmark is not installed (pip install 'irblocks[dev]')",
              file=sys.stderr)
        return 1
    # pytest runs from the checkout root; keep paths relative to the caller
    out = os.path.abspath(a.out)
    cmd = [sys.executable, "-m", "pytest", str(folder.resolve()), "--benchmark-only",
           f"--benchmark-json={out}", "-p", "no:cacheprovider", "-q"]
    if a.keyword:
        cmd += ["-k", a.keyword]
    cmd += extra
    env = dict(os.environ)
    if a.threads is not None:
        env["OMP_NUM_THREADS"] = str(a.threads)
    elif not env.get("OMP_NUM_THREADS"):
        import torch  # only here: its default thread count
        env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    print(f"irblocks bench: {env['OMP_NUM_THREADS']} intra-op threads", flush=True)
    if a.summary or "IRBLOCKS_BENCH_SUMMARY" not in env:
        env["IRBLOCKS_BENCH_SUMMARY"] = os.path.abspath(a.summary or "bench-summary.json")
    if not a.quiet:
        cmd += ["-p", "irblocks.bench_progress"]
    rootdir = folder.resolve().parents[1]
    print("+", " ".join(cmd), flush=True)
    # the live display is the progress bar (on stderr); pytest's report follows when it ends
    cwd = str(rootdir) if (rootdir / "pyproject.toml").exists() else None
    r = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(r.stdout)
    sys.stdout.flush()
    return r.returncode


if __name__ == "__main__":
    sys.exit(main())
