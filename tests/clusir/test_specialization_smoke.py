"""Smoke test of tests/benchmarks/clusir_specialization.py (issue 14 section 4): its core runs
a few steps and returns a well-formed report whose NMI values agree with its histograms."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "clusir_specialization.py"


@pytest.fixture(scope="module")
def spec():
    s = importlib.util.spec_from_file_location("clusir_specialization", SCRIPT)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


def _nmi_reference(table):
    """NMI straight from the definition, I(T;C) / mean(H(T), H(C)), by summing over samples."""
    t = np.asarray(table, dtype=float)
    n = t.sum()
    h = lambda p: -sum(x * math.log(x) for x in p if x > 0)   # noqa: E731
    rows, cols = t.sum(1) / n, t.sum(0) / n
    mi = sum(t[i, j] / n * math.log(t[i, j] / n / (rows[i] * cols[j]))
             for i in range(t.shape[0]) for j in range(t.shape[1]) if t[i, j] > 0)
    denom = (h(rows) + h(cols)) / 2
    return 1.0 if denom == 0 else mi / denom


def test_nmi_known_values(spec):
    assert spec.nmi([[5, 0, 0], [0, 5, 0], [0, 0, 5]]) == pytest.approx(1.0)
    assert spec.nmi([[2, 2], [2, 2], [2, 2]]) == pytest.approx(0.0)
    assert spec.nmi([[4, 0, 0], [0, 0, 4], [0, 0, 4]]) == pytest.approx(_nmi_reference(
        [[4, 0, 0], [0, 0, 4], [0, 0, 4]]))
    rng = np.random.default_rng(0)
    for _ in range(5):
        t = rng.integers(0, 6, size=(3, 3))
        assert spec.nmi(t) == pytest.approx(_nmi_reference(t))
    with pytest.raises(ValueError, match="empty"):
        spec.nmi([[0, 0], [0, 0]])


def test_core_runs_and_reports_consistently(spec, tmp_path):
    res = spec.run(steps=2, per_task=1, crop=24, eval_crops=2, log_every=0)
    json.dumps(res)                                       # JSON-serialisable
    assert set(res) >= {"config", "stages", "best_nmi", "psnr", "train_l1", "seconds"}
    assert sorted(res["stages"]) == [f"prompt.enc{i}" for i in range(4)]
    for key, st in res["stages"].items():
        assert set(st) >= {"nmi", "nmi_at_init", "cluster_histogram", "expert_usage",
                           "mean_cluster_posterior"}
        table = [st["cluster_histogram"][t] for t in spec.TASKS]
        assert all(sum(row) == 2 for row in table), table        # eval_crops per task
        assert 0.0 <= st["nmi"] <= 1.0 and 0.0 <= st["nmi_at_init"] <= 1.0
        assert st["nmi"] == pytest.approx(_nmi_reference(table), abs=1e-9), (key, table)
        runs = {sum(st["expert_usage"][t]) for t in spec.TASKS}
        assert len(runs) == 1 and runs.pop() % 2 == 0, st["expert_usage"]   # k slots x 2 crops
        for t in spec.TASKS:
            assert sum(st["mean_cluster_posterior"][t]) == pytest.approx(1.0, abs=1e-3)
    assert res["best_nmi"] == max(st["nmi"] for st in res["stages"].values())
    for t in spec.TASKS:
        assert set(res["psnr"][t]) == {"degraded", "restored"}
        assert all(math.isfinite(v) for v in res["psnr"][t].values())


def test_cli_writes_json(spec, tmp_path):
    out = tmp_path / "out.json"
    assert spec.main(["-o", str(out), "--steps", "1", "--per-task", "1", "--crop", "16",
                      "--eval-crops", "1"]) == 0
    assert json.loads(out.read_text())["config"]["steps"] == 1
