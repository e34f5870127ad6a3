"""irblocks train / eval / restore / demo end to end, and bad input: one line, exit 2, no partial
files."""
import json

import numpy as np
import pytest
import yaml

from irblocks.cli import main
from irblocks.train.imageio import image_size

from ._util import paired_folder, tiny_recipe, write_png


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A recipe file, a paired data folder and a 2-step training run (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("cli")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    data = paired_folder(tmp / "data" / "denoise", n=3, h=40, w=44)
    out = tmp / "run"
    rc = main(["train", str(recipe), "--data", str(tmp / "data"), "--steps", "2", "-o", str(out),
               "--quiet"])
    assert rc == 0
    return tmp, recipe, data, out


def _one_error_line(capsys, rc, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert len(err) == 1 and err[0].startswith("irblocks: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_train_writes_checkpoint(run):
    tmp, recipe, data, out = run
    assert (out / "last.safetensors").is_file() and (out / "train_state.json").is_file()
    assert json.loads((out / "train_state.json").read_text())["step"] == 2


def test_train_resume_cli(run, capsys, tmp_path):
    tmp, recipe, data, out = run
    o = tmp_path / "r"
    assert main(["train", str(recipe), "--data", str(tmp / "data"), "--steps", "4", "--stop-after",
                 "2", "-o", str(o), "--quiet"]) == 0
    assert main(["train", str(recipe), "--data", str(tmp / "data"), "--resume", str(o), "-o",
                 str(o), "--quiet"]) == 0
    assert json.loads((o / "train_state.json").read_text())["step"] == 4


def test_eval_paired_and_synthetic(run, capsys, tmp_path):
    tmp, recipe, data, out = run
    capsys.readouterr()
    js = tmp_path / "e.json"
    assert main(["eval", str(out), "--data", str(tmp / "data"), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "PSNR" in text and "SSIM" in text and "denoise" in text
    res = json.loads(js.read_text())
    assert res["tasks"]["denoise"]["images"] == 3 and res["convention"]["ssim"] == "uniform"
    assert main(["eval", str(out / "last.safetensors"), "--data", f"noise25={data / 'target'}",
                 "--degrade", "gaussian_noise:sigma=25", "--tile", "32", "--overlap", "8"]) == 0
    assert "noise25" in capsys.readouterr().out
    assert (out / "last.eval.json").is_file()
    # per-entry degradations: an all-in-one style table with an average row
    assert main(["eval", str(out), "--data", f"n15={data / 'target'}@gaussian_noise:sigma=15",
                 "--data", f"haze={data / 'target'}@haze", "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "n15" in text and "haze" in text and "average" in text
    assert set(json.loads(js.read_text())["tasks"]) == {"n15", "haze"}


def test_restore_files_and_folders(run, tmp_path, capsys):
    tmp, recipe, data, out = run
    src = tmp_path / "in"
    write_png(src / "a.png", 37, 45)
    write_png(src / "b.jpg", 70, 90)
    assert main(["restore", str(out), str(src), "-o", str(tmp_path / "o"), "--tile", "32",
                 "--quiet"]) == 0
    assert (image_size(tmp_path / "o" / "a.png") == (37, 45)
            and image_size(tmp_path / "o" / "b.jpg") == (70, 90))
    assert main(["restore", str(out), str(src / "a.png"), "-o", str(tmp_path / "single.png"),
                 "--quiet"]) == 0
    assert image_size(tmp_path / "single.png") == (37, 45)
    assert not list(tmp_path.rglob("*.tmp*"))
    rc = main(["restore", str(out), str(src), "-o", str(src)])
    _one_error_line(capsys, rc, "would overwrite its input")


def test_bad_unreadable_image(run, tmp_path, capsys):
    tmp, recipe, data, out = run
    src = tmp_path / "in"
    write_png(src / "a.png")
    (src / "broken.png").write_bytes(b"\x89PNG garbage")
    o = tmp_path / "o"
    rc = main(["restore", str(out), str(src), "-o", str(o)])
    _one_error_line(capsys, rc, "cannot read image", "broken.png")
    assert not o.exists() or not any(o.iterdir())


def test_bad_mismatched_pairs(run, tmp_path, capsys):
    tmp, recipe, data, out = run
    write_png(tmp_path / "d" / "input" / "x.png", 30, 30)
    write_png(tmp_path / "d" / "target" / "x.png", 30, 31)
    js = tmp_path / "e.json"
    rc = main(["eval", str(out), "--data", str(tmp_path / "d"), "--json", str(js)])
    _one_error_line(capsys, rc, "pair size mismatch", "30x30", "30x31")
    assert not js.exists()
    rc = main(["train", str(recipe), "--data", str(tmp_path / "d"), "--steps", "1", "-o",
               str(tmp_path / "t")])
    _one_error_line(capsys, rc, "pair size mismatch")
    assert not (tmp_path / "t").exists()


def test_bad_empty_folder(run, tmp_path, capsys):
    tmp, recipe, data, out = run
    (tmp_path / "empty").mkdir()
    rc = main(["restore", str(out), str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    _one_error_line(capsys, rc, "no images found in", "empty")
    rc = main(["eval", str(out), "--data", str(tmp_path / "empty"), "--degrade", "haze"])
    _one_error_line(capsys, rc, "no images found in")
    rc = main(["eval", str(out), "--data", str(tmp_path / "empty")])
    _one_error_line(capsys, rc, "no paired data found")
    assert not (tmp_path / "o").exists()


def test_bad_checkpoint_from_another_recipe(run, tmp_path, capsys):
    tmp, recipe, data, out = run
    other = tmp_path / "other.yaml"
    r = tiny_recipe()
    r["model"]["width"] = 12
    other.write_text(yaml.safe_dump(r))
    rc = main(["restore", str(out), str(data / "input"), "-o", str(tmp_path / "o"), "--recipe",
               str(other)])
    _one_error_line(capsys, rc, "another recipe", "model.width: 8 vs 12")
    assert not (tmp_path / "o").exists()
    rc = main(["eval", str(out), "--data", str(tmp / "data"), "--recipe", str(other), "--json",
               str(tmp_path / "j")])
    _one_error_line(capsys, rc, "another recipe")
    rc = main(["train", str(other), "--data", str(tmp / "data"), "--resume", str(out), "-o",
               str(tmp_path / "x")])
    _one_error_line(capsys, rc, "another recipe")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"nope")
    rc = main(["restore", str(junk), str(data / "input"), "-o", str(tmp_path / "o")])
    _one_error_line(capsys, rc, "junk.safetensors")
    assert not (tmp_path / "o").exists() and not (tmp_path / "j").exists()


def test_bad_arguments(run, tmp_path, capsys):
    tmp, recipe, data, out = run
    rc = main(["eval", str(out), "--data", str(data / "target"), "--degrade", "gausian_noise"])
    _one_error_line(capsys, rc, "Did you mean")
    rc = main(["eval", str(out), "--data", f"{data / 'target'}@haze:beta=3"])
    _one_error_line(capsys, rc, "beta")
    rc = main(["restore", str(tmp_path / "nothing"), str(data / "input"), "-o",
               str(tmp_path / "o")])
    _one_error_line(capsys, rc, "nothing")
    rc = main(["train", str(recipe), "--data", str(tmp / "data"), "--steps", "1", "-o", str(out)])
    _one_error_line(capsys, rc, "already holds a training run", "--resume")


def test_demo_tiny_budget(tmp_path, capsys):
    rc = main(["demo", "--steps", "2", "--batch-size", "2", "--patch-size", "32", "-o",
               str(tmp_path), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "gain" in text and "chelsea" in text
    res = json.loads((tmp_path / "demo.json").read_text())
    assert res["steps"] == 2 and res["psnr_noisy"] == pytest.approx(20.2, abs=0.5)
    h, w = image_size(tmp_path / "before_after.png")
    assert (h, w) == (300 + 26, 451 * 3 + 8)            # a 26-pixel caption band on top
    from PIL import Image
    band = np.asarray(Image.open(tmp_path / "before_after.png").convert("L"))[:26]
    for k in range(3):                                   # every panel has its caption (dark text)
        assert (band[:, k * 455:k * 455 + 300] < 100).sum() > 50
