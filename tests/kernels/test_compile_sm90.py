"""Every kernel's GPU configuration compiles for sm_90 (H100) and spills no registers.

The configurations are the compile table next to this test, ``compile_specs.py`` (one
function per kernel module). Each entry is compiled with
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
from irblocks.kernels import _dispatch, report
from tests.kernels import compile_specs

pytestmark = pytest.mark.skipif(not _dispatch.triton_available(), reason="Triton is not importable")


def _spec_ids():
    ids = []
    for mod, specs in compile_specs.compile_specs().items():
        for i, spec in enumerate(specs):
            ids.append(pytest.param(mod, i, id=f"{mod}:{getattr(spec[0], '__name__', '?')}:{i}"))
    return ids


@pytest.fixture(scope="module")
def records():
    return {(r.module, r.index): r
            for r in report.run_all_subprocess(arch=90, specs_path=compile_specs.__file__)}


@pytest.mark.parametrize("module,index", _spec_ids())
def test_compiles_for_sm90_without_spills(records, module, index):
    r = records[(module, index)]
    where = f"{module}.{r.kernel} {r.constexprs} {r.options}"
    assert r.ok, f"{where} does not compile for sm_90: {r.error}"
    assert r.spill_stores == 0 and r.spill_loads == 0, \
        f"{where} spills registers on sm_90 ({r.registers} regs, {r.spill_stores} B spill " \
        f"stores, {r.spill_loads} B spill loads): use smaller blocks or more warps"


def test_every_kernel_module_has_compile_specs():
    """Every kernel module with Triton code has a table entry, and every launched kernel
    (a jit function named ``*_kernel``; device helpers are compiled inside them) is listed."""
    table = compile_specs.compile_specs()
    problems = []
    for info in pkgutil.iter_modules(kpkg.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{kpkg.__name__}.{info.name}")
        jit = {k
               for k, v in vars(mod).items()
               if type(v).__name__ in ("JITFunction", "InterpretedFunction")}
        listed = {getattr(s[0], "__name__", None) or s[0].fn.__name__
                  for s in table.get(info.name, [])}
        missing = {k for k in jit if k.endswith("_kernel")} - listed
        if jit and not listed or missing:
            problems.append(f"{info.name}: {sorted(missing) or 'no entry'}")
    assert not problems, f"Triton kernels missing from tests/kernels/compile_specs.py: {problems}"


def test_compile_specs_name_real_arguments():
    for mod, specs in compile_specs.compile_specs().items():
        for spec in specs:
            assert set(spec[2]) <= set(spec[1]), (mod, spec[0], sorted(set(spec[2]) - set(spec[1])))


def test_report_reads_the_table_and_names_a_missing_one(tmp_path):
    assert set(report.discover(compile_specs.__file__)) == set(compile_specs.SPECS)
    with pytest.raises(FileNotFoundError, match="--specs"):
        report.discover(str(tmp_path / "nope.py"))


def test_report_table_formats():
    rec = report.Record("m", "k", 0, {"BLOCK": 64}, {}, True, 40, 0, 0, 0, 0, 4)
    text = report._table([rec])
    assert "BLOCK=64" in text and "ok" in text
