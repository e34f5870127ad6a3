"""The irblocks command line (through its entry function, and once through the installed script)."""
import json
import shutil
import subprocess
import sys

import pytest

from irblocks.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_with_kind_and_pattern(capsys):
    code, out, _ = run(capsys, "list", "block", "*norm*")
    assert code == 0 and out.split() == ["block:", "layernorm"]
    code, out, _ = run(capsys, "list", "recipe", "restormer*")
    assert out.split() == ["restormer", "restormer-tiny"]
    code, out, _ = run(capsys, "list")
    assert "model:" in out and "unet_restorer" in out and "recipe:" in out


def test_info(capsys):
    code, out, _ = run(capsys, "info", "mdta")
    assert code == 0 and "signature: mdta(" in out and "mdta.py" in out and "context" in out
    code, out, _ = run(capsys, "info", "mdta", "--json")
    # a bool, or a per-level list of bools
    project = json.loads(out)["schema"]["properties"]["project"]
    assert {"type": "boolean"} in project["anyOf"] and project["default"] is True
    code, out, err = run(capsys, "info", "mdtaa")
    assert code == 1 and "did you mean 'mdta'" in err.lower() and len(err.strip().splitlines()) == 1


def test_summary_reports_params_gmacs_and_stages(capsys):
    code, out, _ = run(capsys, "summary", "restormer")
    assert code == 0
    assert "26,126,644" in out and "GMACs      118.58" in out and "GFLOPs     237.16" in out
    assert "latent" in out and "refinement" in out
    code, out, _ = run(capsys, "summary", "restormer-tiny", "--size", "64", "96")
    assert "1x3x64x96" in out


def test_check_ok_and_every_problem(capsys, tmp_path):
    code, out, _ = run(capsys, "check", "promptir")
    assert code == 0 and "promptir: ok" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: 1\nextends: restormer-tiny\nmodel:\n  widht: 3\n"
                   "  block: {ffn: {expansion: x}}\n")
    code, _, err = run(capsys, "check", str(bad))
    assert code == 1
    assert f"{bad}:4: model.widht: unknown parameter of unet_restorer; did you mean 'width'?" in err
    assert f"{bad}:5: model.block.ffn.expansion: expected float" in err
    code, _, err = run(capsys, "summary", str(bad))
    assert code == 1 and err.count("irblocks: error:") == 2


def test_schema(capsys, tmp_path):
    code, out, _ = run(capsys, "schema")
    s = json.loads(out)
    assert ("block.gdfn" in s["$defs"]
            and s["else"]["properties"]["model"] == {"$ref": "#/$defs/model"})
    code, out, _ = run(capsys, "schema", "-o", str(tmp_path / "s.json"))
    assert json.loads((tmp_path / "s.json").read_text()) == s


def test_missing_file_is_one_line(capsys):
    code, _, err = run(capsys, "convert", "restormer", "/nonexistent.pth", "/tmp/x.safetensors")
    assert code == 1 and err.strip() == "irblocks: error: /nonexistent.pth: no such checkpoint file"


def test_installed_script():
    exe = (shutil.which("irblocks")
           or str(__import__("pathlib").Path(sys.executable).parent / "irblocks"))
    r = subprocess.run([exe, "list", "model"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "unet_restorer" in r.stdout


def test_bench_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    code = main(["bench", "-o", str(out), "--summary", str(tmp_path / "summary.json"),
                 "-k",
                 "layernorm and 128 and reference_channels_last and not bias_free and not "
                 "backward"])
    assert code == 0
    data = json.loads(out.read_text())
    assert [b["group"] for b in data["benchmarks"]] == ["layernorm 1x48x128x128"]


def test_bench_sets_the_thread_count_of_the_timed_code(monkeypatch, tmp_path, capsys):
    """tests/conftest.py runs torch on one thread unless OMP_NUM_THREADS is set; irblocks
    bench passes --threads (or the caller's OMP_NUM_THREADS) to its pytest subprocess."""
    import irblocks.bench as bench
    seen = []
    monkeypatch.setattr(bench.subprocess, "run", lambda cmd, env, **kw: seen.append(env)
                        or subprocess.CompletedProcess(cmd, 0, stdout=""))
    args = ["bench", "-o", str(tmp_path / "b.json"), "--quiet", "-k", "nothing"]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert main(args) == 0 and seen[-1]["OMP_NUM_THREADS"] == "2"
    assert main(args + ["--threads", "3"]) == 0 and seen[-1]["OMP_NUM_THREADS"] == "3"
    assert "3 intra-op threads" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(args + ["--threads", "0"])
    assert e.value.code == 2
    assert "--threads must be a positive integer, got 0" in capsys.readouterr().err
