"""irblocks plot / irblocks diagnose from the command line (matplotlib is in the dev extra)."""

import json
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from irblocks.cli import main
from tests.train._util import paired_folder, tiny_recipe


def _decode(path):
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB")).astype(float)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plotrun")
    data = paired_folder(tmp / "data", n=2, h=32, w=32)
    recipe = tmp / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe()))
    out = tmp / "run"
    rc = main(
        [
            "train",
            str(recipe),
            "--data",
            str(data),
            "--steps",
            "4",
            "-o",
            str(out),
            "--log-every",
            "1",
            "--eval-data",
            str(data),
            "--eval-every",
            "2",
            "--quiet",
        ]
    )
    assert rc == 0
    return out


def test_plot(run, capsys):
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2, 3, 4]
    assert [r["step"] for r in log if r["kind"] == "eval"] == [2, 4]
    assert main(["plot", str(run)]) == 0
    assert "train_curves.png" in capsys.readouterr().out
    a = _decode(run / "train_curves.png")
    assert a.shape == (int(3.4 * 72), 12 * 72, 3) and a.std() > 10


def test_plot_errors(tmp_path, run, capsys, monkeypatch):
    assert main(["plot", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no train_log.jsonl" in err[0]
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["plot", str(run), "-o", str(tmp_path / "x.png")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "irblocks: error: plotting needs matplotlib, which is not installed: "
        "pip install 'irblocks[plot]'"
    ]
    assert not (tmp_path / "x.png").exists()


def test_diagnose_trained_run_and_recipe(run, tmp_path, capsys):
    img = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((40, 60, 3)) * 255).astype(np.uint8)).save(img)
    assert main(["diagnose", str(run), str(img), "-o", str(tmp_path / "d")]) == 0
    js = json.loads((tmp_path / "d" / "diagnosis.json").read_text())
    assert js["files"] == ["images.png"] and js["image"]["size"] == [40, 60]
    assert "(trained)" in js["model"]
    assert _decode(tmp_path / "d" / "images.png").std() > 10
    # a recipe with random weights, an image shipped with scikit-image, cropped and downscaled
    assert (
        main(
            [
                "diagnose",
                "anyir-tiny",
                "skimage:chelsea",
                "--crop",
                "60",
                "100",
                "96",
                "128",
                "--max-size",
                "64",
                "-o",
                str(tmp_path / "a"),
            ]
        )
        == 0
    )
    js = json.loads((tmp_path / "a" / "diagnosis.json").read_text())
    assert js["image"]["size"] == [48, 64] and js["image"]["networks"] == ["anyir"]
    assert "anyir_spectra.png" in js["files"] and "random weights" in js["model"]
    assert main(["diagnose", "anyir-tiny", "skimage:nosuch", "-o", str(tmp_path / "b")]) != 0
    assert "scikit-image ships no image" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
