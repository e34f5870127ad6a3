"""Trainer: bit-identical resume, checkpoints, schedules, config sections, refusing other
recipes."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import irblocks
from irblocks.train.config import ScheduleConfig, lr_factor, parse_sections, validate_sections
from irblocks.train.runlog import LOG_NAME
from irblocks.train.trainer import LAST, STATE_JSON, STATE_TENSORS, Trainer, TrainError, load_model

from ._util import synthetic_data, tiny_recipe


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def _recipe():
    # ICRM draws random numbers every step: the resumed run must restore the RNG to match
    return tiny_recipe(loss=[{"type": "l1"}, {"type": "fft", "weight": 0.1},
                             {"type": "icrm", "weight": 0.0125}],
                       train={"batch_size": 2, "patch_size": 32, "ema": 0.9, "grad_clip": 0.5,
                              "seed": 3})


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_is_bit_identical(tmp_path, data):
    full = Trainer(_recipe(), data, out_dir=tmp_path / "full", steps=6, progress=False)
    full.fit()
    part = Trainer(_recipe(), data, out_dir=tmp_path / "part", steps=6, progress=False)
    s = part.fit(stop_after=3)
    assert s["steps"] == 3 and s["stopped_early"]
    assert ({p.name for p in (tmp_path / "part").iterdir()}
            == {LAST, STATE_JSON, STATE_TENSORS, LOG_NAME})
    resumed = Trainer(_recipe(), data, out_dir=tmp_path / "part", resume=tmp_path / "part",
                      progress=False)
    assert resumed.step == 3 and resumed.total_steps == 6
    resumed.fit()
    assert resumed.step == 6
    assert _same(full.model.state_dict(), resumed.model.state_dict())
    assert _same(full.ema_model.state_dict(), resumed.ema_model.state_dict())
    assert not _same(full.model.state_dict(), full.ema_model.state_dict())
    # the written files agree as well
    a = load_file(tmp_path / "full" / STATE_TENSORS)
    b = load_file(tmp_path / "part" / STATE_TENSORS)
    assert _same(a, b)


def test_checkpoint_contents(tmp_path, data):
    t = Trainer(_recipe(), data, out_dir=tmp_path, steps=2, progress=False)
    t.fit()
    state = json.loads((tmp_path / STATE_JSON).read_text())
    assert state["step"] == 2 and state["recipe"]["model"]["width"] == 8
    assert state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    # last.safetensors: the EMA weights with the resolved recipe, loadable by irblocks.load
    m = irblocks.load(tmp_path / LAST)
    assert _same(m.state_dict(), t.ema_model.state_dict())
    m2 = load_model(tmp_path)           # a training folder works too
    assert _same(m2.state_dict(), m.state_dict())
    # nothing but tensors in the safetensors file, nothing pickled anywhere
    assert all(isinstance(v, torch.Tensor) for v in load_file(tmp_path / STATE_TENSORS).values())
    assert not list(tmp_path.glob("*.tmp*"))


def test_refuses_other_recipe(tmp_path, data):
    Trainer(_recipe(), data, out_dir=tmp_path, steps=2, progress=False).fit()
    other = _recipe()
    other["model"]["width"] = 12
    with pytest.raises(TrainError, match=r"another recipe .*model.width: 8 vs 12"):
        Trainer(other, data, out_dir=tmp_path, resume=tmp_path, steps=4, progress=False)
    with pytest.raises(TrainError, match="another recipe"):
        load_model(tmp_path, recipe=other)
    with pytest.raises(TrainError, match="already at step 2"):
        Trainer(_recipe(), data, resume=tmp_path, steps=2, progress=False)
    with pytest.raises(TrainError, match="expected train_state.json"):
        Trainer(_recipe(), data, resume=tmp_path / "nope", steps=2, progress=False)


def test_training_reduces_loss(data):
    t = Trainer(tiny_recipe(schedule={"type": "constant"}), data, steps=25, lr=3e-3, progress=False)
    t.fit()
    first = sum(h["loss"] for h in t.history[:5]) / 5
    last = sum(h["loss"] for h in t.history[-5:]) / 5
    assert last < first
    assert set(t.history[0]) >= {"step", "loss", "l1", "fft"}


def test_optimizer_and_schedule_from_recipe(data):
    clus = tiny_recipe(optimizer={"type": "adam", "lr": 2e-4, "betas": [0.9, 0.99]},
                       schedule={"type": "halve_at_mid", "epochs": 150})
    t = Trainer(clus, data, steps=10, progress=False)
    assert type(t.optimizer) is torch.optim.Adam and t.optimizer.defaults["betas"] == (0.9, 0.99)
    assert t.lr_at(0) == pytest.approx(2e-4) and t.lr_at(9) == pytest.approx(1e-4)
    any_ = tiny_recipe(schedule={"type": "warmup_cosine", "warmup_epochs": 15, "epochs": 150})
    t = Trainer(any_, data, steps=100, progress=False)
    assert type(t.optimizer) is torch.optim.AdamW
    lrs = [t.lr_at(i) for i in range(100)]
    assert lrs[4] < lrs[9] and max(lrs) == pytest.approx(1e-3, rel=1e-3) and lrs[-1] < 1e-6
    assert max(range(100), key=lambda i: lrs[i]) == 9      # warm-up = 15/150 of the run


def test_lr_factor():
    s = ScheduleConfig(type="warmup_cosine", warmup_epochs=15, epochs=150)
    assert (lr_factor(s, 0) == 0 and lr_factor(s, 7.5) == pytest.approx(0.5)
            and lr_factor(s, 15) == pytest.approx(1))
    assert (lr_factor(s, 82.5) == pytest.approx(0.5)
            and lr_factor(s, 150) == pytest.approx(0, abs=1e-12))
    h = ScheduleConfig(type="halve_at_mid", epochs=150)
    assert lr_factor(h, 74.9) == 1 and lr_factor(h, 75) == 0.5
    assert lr_factor(ScheduleConfig(), 1e9) == 1


def test_validate_sections():
    assert validate_sections(irblocks.resolve_recipe("anyir").data) == []
    errs = validate_sections({"optimizer": {"type": "sgd", "lr": -1},
                              "schedule": {"type": "warmup_cosine"},
                              "train": {"batch_size": 0, "patchsize": 64}})
    text = "\n".join(errs)
    assert "optimizer.type" in text and "optimizer.lr" in text
    assert "schedule: schedule 'warmup_cosine' needs 'epochs'" in text
    assert "train.batch_size" in text and "train.patchsize: unknown key" in text
    assert all(":" in e and "\n" not in e for e in errs)
    errs = validate_sections({"loss": [{"type": "l2x"}]}, include_loss=True)
    assert errs == ["loss[0].type: unknown loss 'l2x'. Did you mean 'l2'?"]
    with pytest.raises(ValueError, match="optimizer.betas"):
        parse_sections({"optimizer": {"betas": [0.9]}})


def test_recipe_check_uses_sections(tmp_path):
    import yaml
    p = tmp_path / "r.yaml"
    r = tiny_recipe()
    r["train"]["batch_sizee"] = 3
    p.write_text(yaml.safe_dump(r))
    problems = irblocks.api.check_recipe(str(p))
    assert any("batch_sizee" in str(pr) for pr in problems)


def test_bf16_autocast_on_cpu_and_fp16_refused(data):
    t = Trainer(tiny_recipe(), data, steps=1, amp="bf16", progress=False, device="cpu")
    assert t.amp_dtype == torch.bfloat16
    s = t.fit()
    assert math.isfinite(s["loss"])
    with pytest.raises(TrainError, match="fp16 needs a CUDA device"):
        Trainer(tiny_recipe(), data, steps=1, amp="fp16", progress=False, device="cpu")
    assert Trainer(tiny_recipe(), data, steps=1, progress=False, device="cpu").amp_dtype is None


def test_has_routing_detects_routed_blocks():
    from torch import nn

    from irblocks.testing import dense_routing_enabled
    from irblocks.train.trainer import has_routing

    class Routed(nn.Module):
        def forward(self, x):
            return x if dense_routing_enabled() else x * 2

    class Flagged(nn.Module):
        routed = True

    assert not has_routing(nn.Sequential(nn.Conv2d(3, 3, 1)))
    assert has_routing(nn.Sequential(nn.Conv2d(3, 3, 1), Routed()))
    assert has_routing(nn.Sequential(Flagged()))


def test_time_budget_runs_the_schedule_over_the_budget(data, tmp_path):
    t = Trainer(tiny_recipe(schedule={"type": "warmup_cosine", "warmup_epochs": 0, "epochs": 1}),
                data, out_dir=tmp_path, steps=10 ** 6, time_budget=0.5, schedule_by_time=True,
                progress=False)
    s = t.fit()
    assert s["stopped_early"] and 1 <= s["steps"] < 10 ** 6
    assert t.lr_at(t.step) < 0.1 * t.opt_cfg.lr            # the cosine has (nearly) finished
    assert (tmp_path / "last.safetensors").is_file()       # a checkpoint at the stop
