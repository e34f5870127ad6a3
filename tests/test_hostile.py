"""Hostile and malformed input (issue 10): bounded work, one clear line, no output.

Every case asserts the error type, that the message is one line naming the problem,
and, where a payload could act or a command could write, that no marker/output file
exists. Cases that could run away (alias bombs, deep nesting) run in a subprocess
under an address-space limit (``resource.setrlimit(RLIMIT_AS)``) and a timeout, so
a regression fails the test instead of taking the machine down.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import irblocks
from irblocks.checkpoint import CheckpointError
from irblocks.convert import ConversionError
from irblocks.registry import recipe as R
from irblocks.registry.recipe import RecipeError

LIMIT_BYTES = 3 << 30      # address space of a bounded subprocess (importing torch maps ~0.9 GB)
MAX_BYTES = getattr(R, "MAX_RECIPE_BYTES", 1 << 20)   # getattr: the module also runs on old code
TIMEOUT_S = 300            # runaway guard only (cases take milliseconds); no timing assertion


def one_line(e: BaseException | str) -> str:
    msg = str(e)
    assert msg and "\n" not in msg.strip(), f"expected a one-line message, got:\n{msg}"
    return msg


def run_bounded(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter under LIMIT_BYTES of address space; it prints
    a JSON object on its last line, which is returned."""
    prog = ("import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))\n"
            + textwrap.dedent(code))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", prog], cwd=cwd, capture_output=True, text=True,
                       timeout=TIMEOUT_S, env=env)
    assert r.returncode == 0, f"bounded subprocess failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


# the harness a bounded subprocess uses: call(name, fn) records (error type, message, seconds, MB)
_HARNESS = """
import json, resource, time
out = {}
def call(name, fn):
    t = time.perf_counter()
    try:
        fn()
        res = ["ok", ""]
    except Exception as e:
        res = [type(e).__name__, str(e)]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out[name] = res + [time.perf_counter() - t, rss_mb]
"""


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """"Billion laughs": ``width ** levels`` strings from a few hundred bytes."""
    lines = ['a0: &a0 [' + ",".join(['lol'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def merge_key_bomb(levels: int = 9, width: int = 9) -> str:
    """The same blow-up through YAML merge keys (``<<: [*m, *m, ...]``) inside a recipe."""
    lines = ["m0: &m0 {x: 1, y: 2}"]
    for i in range(1, levels):
        lines.append(f"m{i}: &m{i} {{<<: [" + ", ".join([f"*m{i - 1}"] * width) + "], z: 1}")
    lines.append(f"model: {{type: unet_restorer, <<: *m{levels - 1}}}")
    return "\n".join(lines) + "\n"


MARKER = "PWNED_MARKER"


class _Evil:
    """A pickle payload that would create MARKER if it were ever unpickled."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


# ============================================================================ recipes
def test_recipe_bombs_and_nesting_refused_bounded(tmp_path):
    """Issue examples (460-byte alias bomb; 20,000-level nesting) and own variants, under a
    memory limit: each is a one-line RecipeError naming file and line."""
    files = {
        "bomb.yaml": alias_bomb(),
        "merge_bomb.yaml": merge_key_bomb(),
        "map_bomb.yaml": "k0: &k0 {a: 1}\n" + "".join(
            f"k{i}: &k{i} {{a: *k{i - 1}, b: *k{i - 1}}}\n" for i in range(1, 40)),
        "recursive.yaml": "model: &m {type: unet_restorer, self: *m}\n",
        "deep_flow.yaml": "model: " + "[" * 20000 + "]" * 20000 + "\n",
        "deep_map.yaml": "model: " + "{a: " * 20000 + "1" + "}" * 20000 + "\n",
        "deep_dash.yaml": "model:\n  " + "- " * 20000 + "x\n",
        "deep_block.yaml": "".join(" " * i + f"k{i}:\n" for i in range(300)),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert len(files["bomb.yaml"]) < 600          # ~9 ** 9 strings once expanded
    res = run_bounded(_HARNESS + f"""
from irblocks.registry import recipe as R
for name in {sorted(files)!r}:
    call(name, lambda: R.load(name))
# the same shapes as --set values
call("set_bomb", lambda: R.parse_yaml(open("bomb.yaml").read(), "--set", "model.width"))
call("set_deep", lambda: R.parse_yaml("[" * 100000, "--set", "model.width"))
# `irblocks check` (the issue's RecursionError printed thousands of traceback lines)
import contextlib, io
from irblocks.cli import main
for name in ("bomb.yaml", "deep_dash.yaml"):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["check", name])
    out["check " + name] = [rc, err.getvalue()]
print(json.dumps(out))
""", tmp_path)
    for name, needle in (("bomb.yaml", "expand to more than"), ("deep_dash.yaml", "nested deeper")):
        rc, err = res["check " + name]        # the problem's line (+ check's count line)
        lines = err.strip().splitlines()
        assert rc == 1 and lines[0].startswith(f"{name}:") and needle in lines[0], err
        assert len(lines) <= 2 and "Traceback" not in err, err
    expect = {"bomb.yaml": "expand to more than", "merge_bomb.yaml": "expand to more than",
              "map_bomb.yaml": "expand to more than", "recursive.yaml": "recursive YAML alias",
              "deep_flow.yaml": "nested deeper than", "deep_map.yaml": "nested deeper than",
              "deep_dash.yaml": "nested deeper than", "deep_block.yaml": "nested deeper than",
              "set_bomb": "expand to more than", "set_deep": "nested deeper than"}
    for name, needle in expect.items():
        etype, msg, seconds, mb = res[name]
        assert etype == "RecipeError", (name, etype, msg)
        one_line(msg)
        assert needle in msg, (name, msg)
        if name.endswith(".yaml"):
            assert msg.startswith(f"{name}:") and msg.split(":")[1].isdigit(), msg   # file:line
        else:
            assert msg.startswith("--set: model.width: "), msg
    assert res["bomb.yaml"][1].startswith("bomb.yaml:")


def test_recipe_tag_never_executes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = tmp_path / "evil.yaml"
    p.write_text(f"model: !!python/object/apply:os.system ['touch {MARKER}']\n")
    with pytest.raises(RecipeError) as ei:
        irblocks.create_model(str(p))
    msg = one_line(ei.value)
    assert msg.startswith(f"{p}:1:") and "python/object/apply:os.system" in msg
    assert not (tmp_path / MARKER).exists()


def test_set_value_tag_refused_by_train_cli(tmp_path, capsys, monkeypatch):
    """Issue example: a YAML tag in ``irblocks train --set`` was a ConstructorError traceback."""
    from irblocks.cli import main
    monkeypatch.chdir(tmp_path)
    code = main(["train", "restormer-tiny", "-o", str(tmp_path / "run"),
                 "--set", f"width=!!python/object/apply:os.system ['touch {MARKER}']"])
    err = capsys.readouterr().err.strip()
    assert code == 1   # a problem found (exit 2 is for usage errors only)
    one_line(err)
    assert err.startswith("irblocks: error: --set: width: not valid YAML") and "os.system" in err
    assert not (tmp_path / MARKER).exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("text,needle", [
    ("*undefined_alias", "undefined alias"),
    ("[1, 2", "not valid YAML"),
    ("!!binary 'not base64 ***'", "not valid YAML"),
    ("x" * (MAX_BYTES + 1), "recipes are at most"),
])
def test_set_values_one_line(text, needle):
    from irblocks.train.cli import _parse_sets
    with pytest.raises(RecipeError) as ei:
        _parse_sets([f"model.width={text}"])
    assert needle in one_line(ei.value)


def test_extends_cycles_on_resolved_paths(tmp_path):
    """Issue example: ``sub/s.yaml`` extending ``../sub/s.yaml`` grew paths until
    'File name too long'; plus own cycles: two files through ./ and a symlink."""
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "s.yaml").write_text("extends: ../sub/s.yaml\nmodel: {width: 8}\n")
    (sub / "a.yaml").write_text("extends: ./../sub/./b.yaml\nmodel: {width: 8}\n")
    (sub / "b.yaml").write_text("recipe: 1\nextends: a.yaml\nmodel: {width: 8}\n")
    (sub / "c.yaml").write_text("extends: link.yaml\nmodel: {width: 8}\n")
    (sub / "link.yaml").symlink_to(sub / "c.yaml")
    for name, line in (("s.yaml", 1), ("a.yaml", 2), ("c.yaml", 1)):
        with pytest.raises(RecipeError) as ei:
            irblocks.resolve_recipe(str(sub / name))
        msg = one_line(ei.value)
        assert "circular extends" in msg and msg.split(":")[1] == str(line), msg


def test_extends_chain_bounded(tmp_path):
    n = getattr(R, "MAX_EXTENDS", 32) + 5
    (tmp_path / "r0.yaml").write_text("extends: restormer-tiny\n")
    for i in range(1, n):
        (tmp_path / f"r{i}.yaml").write_text(f"extends: r{i - 1}.yaml\n")
    with pytest.raises(RecipeError) as ei:
        irblocks.resolve_recipe(str(tmp_path / f"r{n - 1}.yaml"))
    assert f"extends chain longer than {n - 5}" in one_line(ei.value)
    # a chain within the limit still loads
    rec = irblocks.resolve_recipe(str(tmp_path / "r5.yaml"))
    assert rec.data["model"]["type"] == "unet_restorer"


def test_recipe_file_size_and_encoding(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write("description: '" + "x" * (MAX_BYTES + 10) + "'\n")
    with pytest.raises(RecipeError, match="refused unread") as ei:
        R.load(str(big))
    one_line(ei.value)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"description: caf\xe9\nmodel: {type: unet_restorer}\n")
    with pytest.raises(RecipeError, match="cannot read recipe") as ei:
        R.load(str(bad))
    assert str(bad) in one_line(ei.value)


def test_checkpoint_given_as_recipe(tmp_path):
    """Own case: a checkpoint handed to create_model is named as such (not a decode error)."""
    p = tmp_path / "m.safetensors"
    irblocks.checkpoint.save(irblocks.create_model("restormer-tiny"), p)
    with pytest.raises(RecipeError) as ei:
        irblocks.create_model(str(p))
    msg = one_line(ei.value)
    assert msg.startswith(f"{p}: ") and "a checkpoint file, not a recipe" in msg
    assert "irblocks.load" in msg


def test_aliases_within_budget_still_work(tmp_path):
    """Ordinary anchors/aliases (shared block specs) are fine and keep their lines."""
    p = tmp_path / "shared.yaml"
    p.write_text("recipe: 1\n_b: &blk {type: transformer_block, ffn: gdfn}\n"
                 "model:\n  type: unet_restorer\n  block: *blk\n")
    rec = R.load(str(p))
    assert rec.data["model"]["block"]["type"] == "transformer_block"
    assert rec.where("model.block.ffn") == (str(p), 5)     # the alias line (not re-walked)


# ============================================================================ checkpoints
def _tiny():
    torch.manual_seed(0)
    return irblocks.create_model("restormer-tiny")


def _save_with_meta(path: Path, tensors: dict, meta: dict) -> Path:
    from safetensors.torch import save_file
    save_file(tensors, str(path), metadata=meta)
    return path


def test_loaders_say_what_they_take(tmp_path):
    """Issue example: a path to from_official was ``'str' object has no attribute 'items'``;
    own cases: a mapping to the path loaders, a list, non-tensor values."""
    from irblocks.convert import from_official, load_official_checkpoint
    for bad in ("ckpt.pth", tmp_path / "ckpt.pth"):
        with pytest.raises(ConversionError) as ei:
            from_official("restormer", bad)
        msg = one_line(ei.value)
        assert "must be a mapping" in msg and "load_official_checkpoint" in msg
    with pytest.raises(ConversionError, match="got list"):
        from_official("restormer", [torch.zeros(1)])
    with pytest.raises(ConversionError, match=r"'w': str"):
        from_official("restormer", {"w": "not a tensor"})
    with pytest.raises(ConversionError, match="config must be a mapping"):
        from_official("restormer", {}, "dim=48")
    sd = {"w": torch.zeros(1)}
    for fn in (load_official_checkpoint, irblocks.load, irblocks.checkpoint.read_recipe):
        with pytest.raises(CheckpointError) as ei:
            fn(sd)
        msg = one_line(ei.value)
        assert "expected a checkpoint file path" in msg and "got dict" in msg
    assert issubclass(ConversionError, CheckpointError)   # one type to catch for any checkpoint


def test_broken_safetensors_name_the_file(tmp_path, monkeypatch, capsys):
    """Issue examples: a truncated .safetensors and a pickle renamed .safetensors raised a raw
    SafetensorError naming no file; own: a malicious pickle (never run), garbage, empty."""
    from irblocks.cli import main
    from irblocks.convert import load_official_checkpoint
    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.safetensors"
    irblocks.checkpoint.save(_tiny(), good)
    data = good.read_bytes()
    files = {"truncated.safetensors": data[: len(data) // 2],
             "header_only.safetensors": data[:12],
             "empty.safetensors": b"",
             "pickle.safetensors": pickle.dumps({"w": _Evil()}),
             "torchzip.safetensors": None,
             "huge_header.safetensors": (2 ** 62).to_bytes(8, "little") + b"{}"}
    for name, blob in files.items():
        if blob is None:
            torch.save({"w": torch.zeros(2)}, tmp_path / name)
        else:
            (tmp_path / name).write_bytes(blob)
    for name in files:
        p = tmp_path / name
        for fn in (load_official_checkpoint, irblocks.load, irblocks.checkpoint.read_recipe):
            with pytest.raises(CheckpointError) as ei:
                fn(p)
            msg = one_line(ei.value)
            assert msg.startswith(f"{p}: not a safetensors file"), (fn.__name__, msg)
        if name.startswith(("pickle", "torchzip")):
            assert "pickle" in str(ei.value)
        out = tmp_path / f"{name}.out.safetensors"
        # a problem found: exit 1 (2 is for usage errors only)
        assert main(["convert", "restormer", str(p), str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"irblocks: error: {p}: not a safetensors file"), err
        one_line(err)
        assert not out.exists()
    assert not (tmp_path / MARKER).exists()
    # the same pickle under its own suffix: refused by weights_only, never executed
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(CheckpointError, match="weights_only=True") as ei:
        load_official_checkpoint(evil)
    one_line(ei.value)
    assert not (tmp_path / MARKER).exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_embedded_recipe_for_a_huge_model_is_never_allocated(tmp_path):
    """Own case: a small file whose recipe asks for width 65536 (terabytes of weights) is
    checked on the meta device against the file's header; nothing large is allocated."""
    m = _tiny()
    good = irblocks.checkpoint.save(m, tmp_path / "good.safetensors")
    rec = irblocks.checkpoint.read_recipe(good)
    rec["model"]["width"] = 65536
    tensors = {k: v.contiguous() for k, v in m.state_dict().items()}
    _save_with_meta(tmp_path / "huge.safetensors", tensors,
                    {"irblocks.recipe": json.dumps(rec), "format": "pt"})
    res = run_bounded(_HARNESS + """
import irblocks
call("huge", lambda: irblocks.load("huge.safetensors"))
print(json.dumps(out))
""", tmp_path)
    etype, msg, seconds, mb = res["huge"]
    assert etype == "CheckpointError", (etype, msg)
    assert msg.startswith("huge.safetensors: ") and "tensor shape(s) differ" in one_line(msg)


@pytest.mark.parametrize("config,needle", [
    ("[" * 100_000, "irblocks convert: --config: YAML nested deeper than"),
    ('{"dim": 48', "irblocks convert: --config: not valid YAML"),
    ("[48]", "config must be a mapping"),
    ("{dim: !!python/object/apply:os.system ['touch PWNED_MARKER']}", "not valid YAML"),
])
def test_convert_config_one_line(tmp_path, monkeypatch, capsys, config, needle):
    """Own cases: ``irblocks convert --config`` values (a RecursionError traceback for deep
    JSON, a bare JSONDecodeError naming no flag) go through the bounded parser."""
    from irblocks.cli import main
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "official.pth"
    torch.save({"w": torch.zeros(1)}, src)
    out = tmp_path / "out.safetensors"
    assert main(["convert", "restormer", str(src), str(out), "--config", config]) == 1
    err = capsys.readouterr().err.strip()
    assert needle in one_line(err) and err.startswith("irblocks: error: "), err
    assert not out.exists() and not (tmp_path / MARKER).exists()


def test_compressed_torch_zip_refused_before_loading(tmp_path):
    """Own case: torch.save never compresses its zip entries; a compressed (possibly
    zip-bomb) entry is refused before torch.load inflates anything."""
    import zipfile

    from irblocks.convert import load_official_checkpoint
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(4)}, plain)
    assert set(load_official_checkpoint(plain)) == {"w"}
    packed = tmp_path / "packed.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    with pytest.raises(CheckpointError) as ei:
        load_official_checkpoint(packed)
    msg = one_line(ei.value)
    assert msg.startswith(f"{packed}: refused: compressed zip entries")


def test_shape_mismatches_listed_in_one_error(tmp_path):
    """Issue example: one tensor of the wrong shape gave torch's multi-line size-mismatch
    RuntimeError; own: several tensors, and the converters' strict loader."""
    from safetensors.torch import save_file

    from irblocks.convert import load_mapped
    m = _tiny()
    good = tmp_path / "good.safetensors"
    irblocks.checkpoint.save(m, good)
    meta = {"irblocks.recipe": json.dumps(irblocks.checkpoint.read_recipe(good)), "format": "pt"}
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    k1 = next(k for k, v in sd.items() if v.dim() == 4)
    bad = tmp_path / "bad.safetensors"
    save_file({**sd, k1: torch.zeros(3, 3)}, str(bad), metadata=meta)
    with pytest.raises(CheckpointError) as ei:
        irblocks.load(bad)
    msg = one_line(ei.value)
    assert msg.startswith(f"{bad}: 1 tensor shape(s) differ: {k1}: checkpoint shape (3, 3) != ours "
                          f"{tuple(sd[k1].shape)}"), msg
    # every mismatch listed (up to 8, then a count), still one line
    wrong = {k: torch.zeros(1) for k in list(sd)[:10] if sd[k].shape != (1,)}
    save_file({**sd, **wrong}, str(bad), metadata=meta)
    with pytest.raises(CheckpointError) as ei:
        irblocks.load(bad)
    msg = one_line(ei.value)
    assert f"{len(wrong)} tensor shape(s) differ" in msg and list(wrong)[0] in msg
    assert f"({len(wrong) - 8} more)" in msg
    # the converters' strict load: official names, same one line
    with pytest.raises(ConversionError) as ei:
        load_mapped(_tiny(), {**sd, k1: torch.zeros(2, 2)}, "restormer", [])
    msg = one_line(ei.value)
    assert f"{k1}: official shape (2, 2) != ours" in msg and msg.endswith("is the config right?")


@pytest.mark.parametrize("payload,needle", [
    ("{not json", "is not valid JSON"),                                     # issue example
    ('{"model": "' + "x" * (MAX_BYTES + 1) + '"}', "refused unread"),
    ("[" * 100_000 + "]" * 100_000, "nested"),                             # issue example
    ("[[1]]", "expected a JSON object"),
    ('{"model": ' + "[" * 200 + "]" * 200 + "}", "nested deeper than"),
    ('{"model": {"type": "unet_restorer", "bogus": 1}}', "is not a valid recipe: model.bogus"),
    ('{"model": {"type": "no_such_model"}}', "is not a valid recipe"),
    (json.dumps({"model": f"!!python/object/apply:os.system ['touch {MARKER}']"}),
     "is not a valid recipe"),
])
def test_embedded_recipe_refused_naming_file_and_key(tmp_path, monkeypatch, payload, needle):
    monkeypatch.chdir(tmp_path)
    p = _save_with_meta(tmp_path / "c.safetensors", {"w": torch.zeros(1)},
                        {"irblocks.recipe": payload, "format": "pt"})
    with pytest.raises(CheckpointError) as ei:
        irblocks.load(p)
    msg = one_line(ei.value)
    assert msg.startswith(f"{p}: metadata 'irblocks.recipe'") and needle in msg, msg
    assert not (tmp_path / MARKER).exists()


# ============================================================================ restore
def _png(path: Path, h: int = 20, w: int = 24, seed: int = 0) -> Path:
    import numpy as np
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


class _FailsOn(torch.nn.Module):
    """Identity, except for inputs of width ``bad_w`` (a model failing mid-run)."""

    def __init__(self, bad_w: int):
        super().__init__()
        self.bad_w = bad_w

    def forward(self, x):
        if x.shape[-1] == self.bad_w:
            raise RuntimeError("boom")
        return x


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_restore_truncated_input_leaves_no_output(tmp_path):
    """Issue example: one good PNG and one truncated PNG (valid header): the good image's
    output used to be written although the run failed."""
    from irblocks.train.imageio import ImageError
    from irblocks.train.restore import restore_files
    src = tmp_path / "in"
    _png(src / "a.png")
    good = _png(tmp_path / "b.png", 64, 64, seed=1).read_bytes()
    (src / "b.png").write_bytes(good[: len(good) // 2])       # header intact, data cut
    out = tmp_path / "out"
    with pytest.raises(ImageError) as ei:
        restore_files(_FailsOn(-1), [str(src)], str(out), tile=None, progress=False)
    assert "b.png" in one_line(ei.value)
    assert not out.exists()
    # the CLI the same way (header check passes, the full decode fails), nothing written
    from irblocks.cli import main
    ck = tmp_path / "m.safetensors"
    irblocks.checkpoint.save(_tiny(), ck)
    assert main(["restore", str(ck), str(src), "-o", str(out), "--quiet"]) == 1   # a problem found
    assert not out.exists()


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG whose header claims w x h pixels (a decompression bomb's header), no data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def test_restore_decompression_bomb_refused(tmp_path):
    """Own case: a 100-byte PNG claiming 60000 x 60000 pixels is refused from its header."""
    from irblocks.train.imageio import ImageError
    from irblocks.train.restore import restore_files
    src = tmp_path / "in"
    _png(src / "a.png")
    _png_header_only(src / "bomb.png", 60000, 60000)
    out = tmp_path / "out"
    with pytest.raises(ImageError) as ei:
        restore_files(_FailsOn(-1), [str(src)], str(out), tile=None, progress=False)
    msg = one_line(ei.value)
    assert "bomb.png" in msg and "exceeds limit" in msg
    assert not out.exists()


def test_restore_failure_midway_leaves_no_output(tmp_path):
    """Own cases: the model fails on the second image; outputs that already existed stay
    as they were, folders the run created are removed, no staging folder is left."""
    from irblocks.train.restore import restore_files
    src = tmp_path / "in"
    _png(src / "a.png", 20, 24)
    _png(src / "b.png", 20, 31)
    nested = tmp_path / "x" / "y" / "out"
    with pytest.raises(RuntimeError, match="boom"):
        restore_files(_FailsOn(31), [str(src)], str(nested), tile=None, progress=False)
    assert not (tmp_path / "x").exists()
    existing = tmp_path / "existing"
    old = _png(existing / "a.png", 5, 5, seed=7).read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        restore_files(_FailsOn(31), [str(src)], str(existing), tile=None, progress=False)
    assert _files(existing) == ["a.png"] and (existing / "a.png").read_bytes() == old
    # and when everything succeeds, all outputs appear and nothing else
    written = restore_files(_FailsOn(-1), [str(src)], str(existing), tile=None, progress=False)
    assert [p.name for p in written] == ["a.png", "b.png"]
    assert _files(existing) == ["a.png", "b.png"]


# ============================================================================ tensors
@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return irblocks.create_model("restormer-tiny").eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_model_dtype_mismatch_one_line(tiny_model, dtype):
    """Issue example: float64/float16 images to a float32 model failed deep inside a conv.
    Decision: an InputError naming both dtypes (never a silent cast)."""
    from irblocks.errors import InputError
    with pytest.raises(InputError) as ei, torch.no_grad():
        tiny_model(torch.rand(1, 3, 16, 16, dtype=dtype))
    msg = one_line(ei.value)
    assert f"input dtype {dtype}" in msg and "parameters' torch.float32" in msg


def test_model_dtype_matches_or_autocast(tiny_model):
    m64 = irblocks.create_model("restormer-tiny").double().eval()
    with torch.no_grad():
        assert m64(torch.rand(1, 3, 9, 11, dtype=torch.float64)).dtype == torch.float64
        with pytest.raises(ValueError, match="dtype torch.float32 .* parameters' torch.float64"):
            m64(torch.rand(1, 3, 9, 11))
        with torch.autocast("cpu", dtype=torch.bfloat16):      # mixed dtypes are autocast's job
            y = tiny_model(torch.rand(1, 3, 16, 16, dtype=torch.bfloat16))
            assert y.shape == (1, 3, 16, 16)


@pytest.mark.parametrize("shape", [(0, 3, 32, 32), (1, 3, 0, 32), (1, 3, 32, 0), (0, 3, 0, 0)])
def test_model_empty_input_one_line(tiny_model, shape):
    """Issue examples: an empty batch gave a misleading LayerNorm error, height 0 a conv
    padding error. Decision: an InputError (there is nothing to restore)."""
    from irblocks.errors import InputError
    with pytest.raises(InputError) as ei, torch.no_grad():
        tiny_model(torch.rand(*shape))
    assert "empty input of shape " + "x".join(map(str, shape)) in one_line(ei.value)


def test_model_smallest_images_work(tiny_model):
    with torch.no_grad():
        for h, w in ((1, 1), (2, 3), (1, 17)):
            assert tiny_model(torch.rand(1, 3, h, w)).shape == (1, 3, h, w)


def test_nonfinite_input_warns_once_naming_check_finite(tiny_model, monkeypatch):
    """Issue example: one NaN pixel turned the output NaN with no warning by default."""
    import warnings

    import irblocks.errors as errors
    from irblocks.errors import InputError
    monkeypatch.setattr(errors, "_nonfinite_warned", False)
    x = torch.rand(1, 3, 16, 16)
    x[0, 1, 3, 4] = float("nan")
    x[0, 2, 5, 6] = float("inf")
    with pytest.warns(RuntimeWarning, match="contains 2 NaN/Inf values.*check_finite=True") as rec:
        with torch.no_grad():
            tiny_model(x)
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # once: the second call is silent
        with torch.no_grad():
            tiny_model(x)
    strict = irblocks.create_model("restormer-tiny", check_finite=True).eval()
    with pytest.raises(InputError, match="2 NaN/Inf values"), torch.no_grad():
        strict(x)


@pytest.mark.parametrize("make", [
    lambda: (torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8),) * 2,     # issue example
    lambda: (torch.rand(1, 3, 16, 16), torch.randint(0, 256, (1, 3, 16, 16))),    # int64 target
    lambda: (torch.rand(3, 16, 16) > 0.5, torch.rand(3, 16, 16)),                  # bool prediction
    lambda: (torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16) * 255),           # float 0..255
])
def test_metrics_refuse_integer_images(make):
    """Issue example: uint8 images were clamped to [0, 1] and PSNR returned inf silently."""
    from irblocks.errors import InputError
    from irblocks.train.metrics import psnr, ssim
    a, b = make()
    for fn in (psnr, ssim):
        with pytest.raises(InputError) as ei:
            fn(a, b)
        msg = one_line(ei.value)
        assert msg.startswith("metrics: ") and ("/ 255" in msg or "divide by 255" in msg)
    # what the message says to do works
    if not a.is_floating_point() and not b.is_floating_point():
        assert psnr(a.float() / 255, b.float() / 255) == float("inf")


def test_degradation_spec_values_use_the_bounded_parser(tmp_path, monkeypatch):
    """Own case: ``--degrade name:k=v`` values are YAML too (a tag is one line, never run)."""
    from irblocks.train.degradations import parse_degradation
    monkeypatch.chdir(tmp_path)
    assert parse_degradation("gaussian_noise:sigma=25") == {"type": "gaussian_noise", "sigma": 25}
    with pytest.raises(RecipeError) as ei:
        parse_degradation("gaussian_noise:sigma=!!python/object/apply:os.system "
                          f"['touch {MARKER}']")
    assert "sigma: not valid YAML" in one_line(ei.value)
    with pytest.raises(RecipeError, match="nested deeper than"):
        parse_degradation("gaussian_noise:sigma=" + "[" * 1000)
    assert not (tmp_path / MARKER).exists()


def test_training_loader_refuses_a_mapping(tmp_path):
    from irblocks.train.trainer import load_model
    with pytest.raises(CheckpointError, match="load_model: expected a checkpoint file path"):
        load_model({"w": torch.zeros(1)})


@pytest.mark.parametrize("make,needle", [
    (lambda: irblocks.TransformerBlock(dim=-4, heads=1), "transformer_block.dim"),   # issue example
    (lambda: irblocks.TransformerBlock(dim=8, heads=0), "transformer_block.heads"),
    (lambda: irblocks.registry.build({"type": "gdfn", "expansion": -1.0}, "block", dim=8),
     "gdfn.expansion"),
])
def test_constructors_reject_non_positive_sizes(make, needle):
    """Issue example: ``TransformerBlock(dim=-4, heads=1)`` raised torch's 'negative
    dimension' error. (The check itself is the registry's schema validation.)"""
    with pytest.raises(ValueError) as ei:
        make()
    msg = one_line(ei.value)
    assert msg.startswith(needle) and "expected" in msg
