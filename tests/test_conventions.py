"""Conventions users expect from the CLI and the Python entry points (issue 15's snag list)."""
import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import irblocks
from irblocks.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _subprocess(code: str, **kw):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          **kw)


# --------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("flag", ["--help", "--version", "train --help"])
def test_help_and_version_import_nothing_heavy(flag):
    """--help/--version stay fast because they import neither torch nor Triton nor a kernel."""
    r = _subprocess("import sys\nfrom irblocks.cli import main\n"
                    f"try:\n    main({flag.split()!r})\n"
                    "except SystemExit as e:\n    assert e.code == 0, e.code\n"
                    "heavy = [m for m in ('torch', 'triton', 'irblocks.kernels', 'yaml')"
                    " if m in sys.modules]\n"
                    "print('HEAVY', heavy)")
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout
    if flag == "--version":
        assert f"irblocks {irblocks.__version__}" in r.stdout


def test_import_irblocks_is_light_and_lookup_loads_builtins():
    r = _subprocess("import sys, irblocks\nassert 'torch' not in sys.modules\n"
                    "print(irblocks.registry.list('block', 'gdfn'), 'torch' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "['gdfn'] True"


def test_every_command_is_set_up_by_its_module(capsys):
    for name, c in COMMANDS.items():
        if c.raw:
            continue
        p = argparse.ArgumentParser(prog=name)
        module, _, func = c.setup.partition(":")
        getattr(__import__(module, fromlist=[func]), func)(p)
        assert callable(p.get_default("func")), name


def test_usage_error_is_2_problem_is_1(capsys, tmp_path):
    code, _, err = run(capsys, "summary", "anyir-tiny", "--size", "0", "0")
    assert (code == 2 and "--size: expected a positive integer, got '0'" in err
            and "Traceback" not in err)
    code, _, err = run(capsys, "nosuchcommand")
    assert code == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {type: unet_restorer, widht: 3}\n")
    code, _, err = run(capsys, "check", str(bad))
    assert code == 1 and "did you mean 'width'" in err
    # a runtime failure: 1, not argparse's 2
    code, _, err = run(capsys, "summary", str(bad))
    assert code == 1 and err.startswith("irblocks: error: ")


def test_unknown_kind_is_an_error_with_a_suggestion(capsys):
    code, out, err = run(capsys, "list", "blok")
    assert code == 1 and out == ""
    assert err.strip().startswith("irblocks: error: unknown kind 'blok'; did you mean 'block'?")
    assert len(err.strip().splitlines()) == 1
    code, out, _ = run(capsys, "list", "*gdfn*")                 # a wildcard is still a pattern
    assert code == 0 and "gdfn" in out


def test_schema_into_a_closed_pipe_has_no_traceback():
    exe = [sys.executable, "-c", "import sys; from irblocks.cli import main; sys.exit(main())",
           "schema"]
    p1 = subprocess.Popen(exe, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p1.stdout.readline()
    p1.stdout.close()                     # what `| head -1` does
    err = p1.stderr.read().decode()
    p1.wait(timeout=120)
    assert first.startswith(b"{")
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert p1.returncode == 1


def test_convert_names_the_unknown_architecture_before_the_file(capsys, tmp_path):
    code, _, err = run(capsys, "convert", "foo", str(tmp_path / "a.pth"),
                       str(tmp_path / "b.safetensors"))
    assert code == 1 and "no converter for 'foo'" in err and "a.pth" not in err


def test_restore_no_overwrite_message_names_flags_that_exist(tmp_path):
    from irblocks.cli import build_parser
    from irblocks.train.restore import restore_files
    from irblocks.train.trainer import TrainError  # noqa: F401  (module import only)
    src = tmp_path / "in.png"
    out = tmp_path / "out"
    out.mkdir()
    from PIL import Image
    Image.new("RGB", (8, 8)).save(src)
    (out / "in.png").write_bytes(b"x")
    with pytest.raises(ValueError) as e:
        restore_files(torch.nn.Identity(), [str(src)], str(out), overwrite=False, progress=False)
    parser = build_parser("restore")
    sub = next(a for a in parser._actions
               if isinstance(a, argparse._SubParsersAction)).choices["restore"]
    known = {s for a in sub._actions for s in a.option_strings}
    flags = set(re.findall(r"--[a-z][a-z-]*", str(e.value)))
    assert flags and flags <= known, (flags, known)


def test_info_wraps_and_rounds(capsys):
    code, out, _ = run(capsys, "info", "anyir")
    assert code == 0 and max(len(line) for line in out.splitlines()) <= 100
    code, out, _ = run(capsys, "info", "gated_da")
    assert code == 0 and "2.66667" in out and "2.6666666666666665" not in out
    assert max(len(line) for line in out.splitlines()[:12]) <= 100


def test_dotted_set_reaches_nested_components():
    from irblocks.train.cli import _parse_sets
    sets = _parse_sets(["block.ffn.expansion=3", "width=16"])
    r = irblocks.resolve_recipe("restormer-tiny", **sets)
    assert r.data["model"]["block"]["ffn"] == {"type": "gdfn", "expansion": 3, "bias": False}
    assert r.data["model"]["width"] == 16
    with torch.device("meta"):
        m = irblocks.create_model("restormer-tiny", **sets)
    assert m.encoders[0].blocks[0].ffn.project_in.out_channels == 2 * 3 * 16
    spec = {"model": {"type": "unet_restorer", "width": 8, "block": "transformer_block"}}
    r = irblocks.resolve_recipe(spec, **{"block.ffn": {"type": "gdfn", "expansion": 2}})
    assert (r.data["model"]["block"]
            == {"type": "transformer_block", "ffn": {"type": "gdfn", "expansion": 2}})
    with pytest.raises(ValueError, match="model.block.ffn: a block mapping needs a 'type'"):
        irblocks.resolve_recipe(spec, **{"block.ffn.expansion": 2})   # unset in the recipe: name it


# --------------------------------------------------------------------------- Python entry points
def test_create_model_is_timm_compatible():
    with torch.device("meta"):
        a = irblocks.create_model("restormer-tiny", pretrained=False, width=None)
    assert irblocks.to_recipe(a)["model"]["width"] == 8           # None keeps the recipe's value
    with pytest.raises(ValueError, match="no pretrained weights ship.*irblocks convert"):
        irblocks.create_model("restormer-tiny", pretrained=True)


def test_list_models_and_is_model():
    assert irblocks.list_models("restormer*") == ["restormer", "restormer-tiny"]
    assert (irblocks.list_models(["restormer*", "promptir*"], exclude_filters="*-tiny")
            == ["promptir", "restormer"])
    assert irblocks.list_models() == irblocks.list_models("*")
    assert irblocks.is_model("anyir") and irblocks.is_model("unet_restorer")
    assert not irblocks.is_model("anyirr") and not irblocks.is_model("gdfn")


def test_total_aux_loss_is_a_zero_tensor_without_routed_blocks():
    m = irblocks.create_model("restormer-tiny")
    l1 = m(torch.rand(1, 3, 16, 16)).abs().mean()
    aux = irblocks.total_aux_loss(m)
    assert isinstance(aux, torch.Tensor) and aux.item() == 0.0 and aux.device == l1.device
    (l1 + aux).backward()
    with torch.device("meta"):
        assert (irblocks.total_aux_loss(irblocks.create_model("restormer-tiny")).device.type
                == "meta")


def test_no_file_name_is_reserved_on_windows():
    reserved = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)),
                *(f"lpt{i}" for i in range(1, 10))}
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True,
                           text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    bad = [f for f in files for part in Path(f).parts if part.split(".")[0].lower() in reserved]
    assert bad == []


def test_one_atomic_writer_with_the_usual_permissions(tmp_path):
    """Checkpoints used mkstemp's 0o600, images 0o666 minus the umask: one helper now."""
    import os

    from irblocks.atomic import atomic_path
    from irblocks.train.imageio import write_image
    umask = os.umask(0o022)
    try:
        ck = irblocks.save(irblocks.create_model("restormer-tiny"), tmp_path / "m.safetensors")
        img = write_image(torch.rand(3, 8, 8), tmp_path / "x.png")
        assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    finally:
        os.umask(umask)
    for f in (ck, img, tmp_path / "s.json"):
        assert (f.stat().st_mode & 0o777) == 0o644, (f, oct(f.stat().st_mode))
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "partial.bin") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "s.json", "x.png"]
