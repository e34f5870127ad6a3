"""Compile every kernel's GPU configuration for sm_90 (no GPU needed) and report registers/spills.

    python -m irblocks.kernels.report            # table: kernel, constexprs, warps, regs, spills
    python -m irblocks.kernels.report --json out.json
    python -m irblocks.kernels.report --arch 80 --module layernorm

The configurations come from the sm_90 compile table next to its test,
``tests/kernels/compile_specs.py`` (a source checkout; ``--specs`` points elsewhere): one
function per kernel module returning ``(jit_fn, signature, constexprs)`` or
``(jit_fn, signature, constexprs, options)`` entries, ``options`` passed to ``triton.compile``
(e.g. ``{"num_warps": 8}``).

Compilation uses ``triton.compile(ASTSource(fn, signature, constexprs),
target=GPUTarget("cuda", arch, 32))``, which runs the whole Triton -> LLVM -> PTX -> ptxas
pipeline on this machine. Registers and spills come from re-running the bundled
``ptxas -v`` on the generated PTX (Triton reads them only when loading the cubin onto a
GPU). Under ``TRITON_INTERPRET=1`` the kernels are interpreter objects that cannot be
compiled, so this module then re-runs itself in a subprocess with the interpreter off.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field

__all__ = ["discover", "compile_spec", "ptxas_usage", "run_all", "run_all_subprocess", "main"]

# the table lives with its test, outside the installed package
DEFAULT_SPECS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "tests", "kernels", "compile_specs.py")


@dataclass
class Record:
    module: str
    kernel: str
    index: int
    constexprs: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    ok: bool = False
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    shared: int | None = None
    num_warps: int | None = None
    error: str = ""


def discover(specs_path: str | None = None) -> dict[str, list]:
    """{kernel module name: compile specs} from the compile table file (default: the
    checkout's ``tests/kernels/compile_specs.py``)."""
    path = specs_path or DEFAULT_SPECS
    if not os.path.isfile(path):
        raise FileNotFoundError(f"compile table {path} not found: run from a source checkout or "
                                "pass --specs path/to/compile_specs.py")
    spec = importlib.util.spec_from_file_location("_irblocks_compile_specs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return {name: list(entries) for name, entries in mod.compile_specs().items() if entries}


def _ptxas(arch: int = 90) -> str:
    """The ptxas Triton itself uses for this arch (the wheel bundles a legacy and a CUDA 13 one)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(arch).path
    except Exception:  # older/newer Triton layouts
        import triton
        return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")


def _cache_dir() -> str:
    try:
        import triton
        base = triton.knobs.cache.dir
    except Exception:
        base = os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return os.path.join(base, "irblocks_ptxas_usage")


def ptxas_usage(ptx: str) -> dict:
    """Run ``ptxas -v`` on PTX text; returns registers, spill_stores, spill_loads, stack.

    Results are cached on disk by the PTX hash (Triton caches the compilation itself), so a
    rerun over unchanged kernels costs almost nothing.
    """
    import hashlib
    key = hashlib.sha256(ptx.encode()).hexdigest()
    cache = os.path.join(_cache_dir(), key + ".json")
    try:
        with open(cache) as f:
            return json.load(f)
    except (OSError, ValueError):
        pass
    usage = _ptxas_usage_uncached(ptx)
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        with open(cache + f".{os.getpid()}", "w") as f:
            json.dump(usage, f)
        os.replace(cache + f".{os.getpid()}", cache)
    except OSError:
        pass
    return usage


def _ptxas_usage_uncached(ptx: str) -> dict:
    m = re.search(r"^\s*\.target\s+(\S+)", ptx, re.M)
    arch = m.group(1).rstrip(",") if m else "sm_90a"
    cap = int(re.sub(r"\D", "", arch) or 90)
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        res = subprocess.run(
            [_ptxas(cap), "-v", f"--gpu-name={arch}", src, "-o", os.path.join(tmp, "k.o")],
                             capture_output=True, text=True)
    log = res.stdout + res.stderr
    if res.returncode:
        raise RuntimeError(f"ptxas failed: {log.strip()}")

    def num(pat):
        vals = [int(x) for x in re.findall(pat, log)]
        return max(vals) if vals else 0

    return {"registers": num(r"Used (\d+) registers"),
            "spill_stores": num(r"(\d+) bytes spill stores"),
            "spill_loads": num(r"(\d+) bytes spill loads"),
            "stack": num(r"(\d+) bytes stack frame")}


def compile_spec(spec, arch: int = 90):
    """triton.compile one compile-table entry for a CUDA target; returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    fn, signature, constexprs = spec[:3]
    options = dict(spec[3]) if len(spec) > 3 else {}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options or None)


def _jsonable(d: dict) -> dict:
    return {k: (v if isinstance(v, (int, float, bool, str, type(None))) else repr(v))
            for k, v in d.items()}


def run_all(arch: int = 90, only: str | None = None, specs_path: str | None = None) -> list[Record]:
    from irblocks.kernels._dispatch import interpreting
    if interpreting():
        raise RuntimeError("run_all needs TRITON_INTERPRET unset (interpreted kernels cannot be "
                           "compiled); use run_all_subprocess()")
    records = []
    for mod, specs in discover(specs_path).items():
        if only and mod != only:
            continue
        for i, spec in enumerate(specs):
            fn = spec[0]
            rec = Record(mod, getattr(fn, "__name__", repr(fn)), i, _jsonable(spec[2]),
                         _jsonable(spec[3]) if len(spec) > 3 else {})
            try:
                k = compile_spec(spec, arch)
                rec.num_warps = getattr(k.metadata, "num_warps", None)
                rec.shared = getattr(k.metadata, "shared", None)
                for key, val in ptxas_usage(k.asm["ptx"]).items():
                    setattr(rec, key, val)
                rec.ok = bool(k.asm.get("cubin"))
                if not rec.ok:
                    rec.error = "no cubin produced"
            except Exception as e:  # report every failure, keep going
                rec.error = (f"{type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            records.append(rec)
    return records


def run_all_subprocess(arch: int = 90, only: str | None = None, timeout: float = 900,
                       specs_path: str | None = None) -> list[Record]:
    """run_all in a fresh interpreter with TRITON_INTERPRET=0 (usable from interpreter-mode
    tests)."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "irblocks.kernels.report", "--arch", str(arch), "--json", out,
               "--quiet", "--specs", specs_path or DEFAULT_SPECS]
        if only:
            cmd += ["--module", only]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if not os.path.exists(out):
            raise RuntimeError(f"kernel report subprocess failed (exit {res.returncode}): "
                               f"{(res.stderr or res.stdout).strip()[-2000:]}")
        with open(out) as f:
            return [Record(**r) for r in json.load(f)]


def _table(records: list[Record]) -> str:
    rows = [("module", "kernel", "constexprs", "warps", "regs", "spill st/ld", "smem", "status")]
    for r in records:
        cex = ",".join(f"{k}={v}" for k, v in r.constexprs.items())
        rows.append(
            (r.module, r.kernel, cex, str(r.num_warps or ""), str(r.registers if r.ok else ""),
             f"{r.spill_stores}/{r.spill_loads}" if r.ok else "", str(r.shared if r.ok else ""),
             "ok" if r.ok and not r.spill_stores else (r.error or "SPILLS")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m irblocks.kernels.report",
                                description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, default=90,
                   help="CUDA compute capability (default 90 = H100)")
    p.add_argument("--module", default=None, help="only this kernel module (e.g. layernorm)")
    p.add_argument("--specs", default=None, help=f"compile table file (default {DEFAULT_SPECS})")
    p.add_argument("--json", default=None, help="also write the records as JSON to this path")
    p.add_argument("--quiet", action="store_true", help="no table on stdout")
    a = p.parse_args(argv)
    from irblocks.kernels._dispatch import interpreting, triton_available
    if not triton_available():
        print("Triton is not importable; nothing to compile", file=sys.stderr)
        return 2
    try:
        if interpreting():
            records = run_all_subprocess(a.arch, a.module, specs_path=a.specs)
        else:
            records = run_all(a.arch, a.module, a.specs)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        with open(a.json, "w") as f:
            json.dump([asdict(r) for r in records], f, indent=1)
    if not a.quiet:
        print(_table(records))
    return 0 if all(r.ok and not r.spill_stores for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
