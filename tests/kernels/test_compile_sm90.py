"""Every kernel's GPU configuration compiles for sm_90 (H100) and spills no registers.

Discovers every ``irblocks.kernels`` module exposing ``COMPILE_SPECS`` (pkgutil, so new
kernel files are picked up automatically) and compiles each spec with
``triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", 90, 32))``:
the full Triton -> PTX -> ptxas pipeline, no GPU needed. This catches what the interpreter
lets through (tl.dot with K < 16, unsupported ops, register spills). Registers/spills are
read from ``ptxas -v`` (see ``irblocks.kernels.report``; ``python -m irblocks.kernels.report``
prints the table). The compilation runs in one subprocess with TRITON_INTERPRET=0, because
under the interpreter (set for the other kernel tests) kernels are not compilable objects.
"""
import importlib
import pkgutil

import pytest

import irblocks.kernels as kpkg
from irblocks.kernels import _dispatch
from irblocks.kernels import report

pytestmark = pytest.mark.skipif(not _dispatch.triton_available(), reason="Triton is not importable")


def _spec_ids():
    if not _dispatch.triton_available():
        return []
    ids = []
    for mod, specs in report.discover().items():
        for i, spec in enumerate(specs):
            ids.append(pytest.param(mod, i, id=f"{mod}:{getattr(spec[0], '__name__', '?')}:{i}"))
    return ids


@pytest.fixture(scope="module")
def records():
    return {(r.module, r.index): r for r in report.run_all_subprocess(arch=90)}


@pytest.mark.parametrize("module,index", _spec_ids())
def test_compiles_for_sm90_without_spills(records, module, index):
    r = records[(module, index)]
    where = f"{module}.{r.kernel} {r.constexprs} {r.options}"
    assert r.ok, f"{where} does not compile for sm_90: {r.error}"
    assert r.spill_stores == 0 and r.spill_loads == 0, \
        f"{where} spills registers on sm_90 ({r.registers} regs, {r.spill_stores} B spill stores, " \
        f"{r.spill_loads} B spill loads): use smaller blocks or more warps"


def test_every_kernel_module_declares_compile_specs():
    missing = []
    for info in pkgutil.iter_modules(kpkg.__path__):
        if info.name.startswith("_") or info.name in report.SKIP_MODULES:
            continue
        mod = importlib.import_module(f"{kpkg.__name__}.{info.name}")
        has_jit = any(type(v).__name__ in ("JITFunction", "InterpretedFunction") for v in vars(mod).values())
        if has_jit and not getattr(mod, "COMPILE_SPECS", None):
            missing.append(info.name)
    assert not missing, f"kernel modules with Triton kernels but no COMPILE_SPECS: {missing}"


def test_report_table_formats():
    rec = report.Record("m", "k", 0, {"BLOCK": 64}, {}, True, 40, 0, 0, 0, 0, 4)
    text = report._table([rec])
    assert "BLOCK=64" in text and "ok" in text
