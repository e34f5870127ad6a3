"""Export: ``torch.export`` programs and ONNX files (dynamic batch, height, width) of the tiny
Restormer, PromptIR and AnyIR equal eager; ClusIR and ClearAIR refuse with one line.

onnxruntime vs eager: max |ort - eager| <= 1e-4 * max |eager| at two sizes, one of them not a
multiple of 8 (the padding and crop are part of the exported graph). The exported program vs
eager: the same ops, so 1e-5. Exports take tens of seconds each (tracing with symbolic
shapes), hence one program and one ONNX file per network, shared by its tests (the ONNX file is
translated from the same program).

The ``torch.export`` tests need only torch; the ONNX and command tests skip with one line when
the ``[export]`` extra (onnx, onnxscript, onnxruntime) is not installed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import irblocks
from irblocks import export as ex
from irblocks.cli import main
from tests._compare import rel_error as _rel

EXPORTABLE = ["restormer-tiny", "promptir-tiny", "anyir-tiny"]
SIZES = [(2, 3, 24, 32), (1, 3, 19, 27)]      # 19 x 27: not multiples of 8


def _model(recipe):
    torch.manual_seed(0)                      # what `irblocks export` builds (--seed 0)
    return irblocks.create_model(recipe).eval()


def _export_extra():
    """Skip (one line) unless the ``[export]`` extra is installed; returns (onnx, onnxruntime)."""
    why = "the [export] extra is not installed (pip install 'irblocks[export]')"
    pytest.importorskip("onnxscript", reason=why)
    return pytest.importorskip("onnx", reason=why), pytest.importorskip("onnxruntime", reason=why)


@pytest.fixture(scope="module")
def exported():
    """recipe -> (eager model, ExportedProgram), one ``torch.export`` per network."""
    cache = {}

    def get(recipe):
        if recipe not in cache:
            model = _model(recipe)
            cache[recipe] = model, ex.export_program(model, recipe)
        return cache[recipe]
    return get


@pytest.fixture(scope="module")
def onnx_file(exported, tmp_path_factory):
    """recipe -> ONNX path, translated from the network's shared ExportedProgram."""
    cache = {}

    def get(recipe):
        if recipe not in cache:
            model, program = exported(recipe)
            path = tmp_path_factory.mktemp("onnx") / f"{recipe}.onnx"
            cache[recipe] = ex.export_onnx(model, path, recipe, program=program)
        return cache[recipe]
    return get


@pytest.mark.slow
@pytest.mark.parametrize("recipe", EXPORTABLE)
def test_torch_export_program_equals_eager_on_any_size(recipe, exported):
    model, program = exported(recipe)
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [o for o in ops if o.startswith("irblocks.")], f"custom ops left in the graph: {ops}"
    run = program.module()
    with torch.no_grad():
        for size in SIZES:
            x = torch.rand(size)
            assert _rel(run(x), model(x)) <= 1e-5, (recipe, size)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", EXPORTABLE)
def test_onnxruntime_equals_eager_with_dynamic_batch_height_width(recipe, exported, onnx_file):
    onnx, onnxruntime = _export_extra()
    model, _ = exported(recipe)
    path = onnx_file(recipe)
    graph = onnx.load(str(path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "image" and out.name == "restored"
    dims = inp.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True], dims   # B, H, W dynamic
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        for size in SIZES:
            x = torch.rand(size)
            got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
            assert got.shape == x.shape
            assert _rel(got, model(x)) <= 1e-4, (recipe, size)


@pytest.mark.parametrize("recipe,why", [("clusir-tiny", "ClusIR routing"),
                                        ("clearair-tiny", "ClearAIR pattern tokens")])
def test_unexportable_networks_say_why_in_one_line(recipe, why, tmp_path, capsys):
    _export_extra()                                 # the command checks for it first
    out = tmp_path / "m.onnx"
    assert main(["export", recipe, "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and why in err and "cannot be exported" in err, err
    assert not out.exists()
    with pytest.raises(ex.ExportError, match=why):
        ex.export_program(_model(recipe))


def test_command_builds_the_seeded_recipe_and_writes_the_file(tmp_path, capsys, monkeypatch):
    """The command's own work (recipe -> seeded model -> export_onnx -> message); the export
    itself is checked above through the same export_onnx."""
    _export_extra()                                 # the command checks for it first
    seen = {}

    def fake_export(model, path, what="model", program=None):
        seen["state"], seen["what"] = model.state_dict(), what
        path.write_bytes(b"onnx")
        return path

    monkeypatch.setattr(ex, "export_onnx",
                        lambda model, path, what: fake_export(model, Path(path), what))
    out = tmp_path / "m.onnx"
    assert main(["export", "restormer-tiny", "-o", str(out), "--seed", "3"]) == 0
    assert out.read_bytes() == b"onnx" and seen["what"] == "restormer-tiny"
    assert f"wrote {out}" in capsys.readouterr().out
    torch.manual_seed(3)
    expected = irblocks.create_model("restormer-tiny").state_dict()
    assert all(torch.equal(expected[k], v) for k, v in seen["state"].items())


def test_missing_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)          # `import onnx` raises ImportError
    assert main(["export", "restormer-tiny", "-o", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert "pip install 'irblocks[export]'" in err and err.count("\n") == 0, err


def test_export_help_imports_nothing_heavy():
    import subprocess
    code = ("import sys\nfrom irblocks.cli import main\ntry:\n    main(['export', '--help'])\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('HEAVY', [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "HEAVY []" in r.stdout and "RECIPE_OR_RUN" in r.stdout, r.stderr
