"""train_log.jsonl, TensorBoard, training-batch PSNR and the foreach EMA."""

import copy
import json

import pytest
import torch

from irblocks.train.datasets import SyntheticDataset
from irblocks.train.runlog import LOG_NAME, MissingExtra, read_log, require_extra
from irblocks.train.trainer import Trainer

from ._util import synthetic_data, tiny_recipe


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


def _recipe():
    # icrm is an extra loss term: it must appear in the log under its own name
    return tiny_recipe(
        loss=[{"type": "l1"}, {"type": "icrm", "weight": 0.0125}],
        train={"batch_size": 2, "patch_size": 32, "ema": 0.9, "seed": 3},
    )


def test_log_records_match_history_and_resume_cuts_back(tmp_path, data):
    eval_data = {
        "noise": SyntheticDataset([torch.rand(3, 24, 24)], "gaussian_noise:sigma=25", seed=2)
    }
    t = Trainer(
        _recipe(),
        data,
        out_dir=tmp_path,
        steps=4,
        log_every=2,
        progress=False,
        eval_data=eval_data,
        eval_every=2,
    )
    t.fit(stop_after=3)
    recs = read_log(tmp_path)
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 3]  # every 2 steps + the checkpoint at 3
    assert {
        "step",
        "epoch",
        "lr",
        "loss",
        "l1",
        "icrm",
        "psnr",
        "images_per_s",
        "steps_per_s",
    } <= set(train[0])
    # values are the means of the per-step history over each record's window
    h = t.history
    for key in ("loss", "l1", "icrm", "psnr"):
        assert train[0][key] == pytest.approx((h[0][key] + h[1][key]) / 2, rel=1e-6)
        assert train[1][key] == pytest.approx(h[2][key], rel=1e-6)
    assert train[1]["lr"] == pytest.approx(t.lr_at(2))
    assert train[0]["epoch"] == pytest.approx(2 / t.steps_per_epoch, abs=1e-4)
    ev = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in ev] == [2] and ev[0]["psnr"] == ev[0]["psnr/noise"] > 0
    # an interrupted run may have logged past its checkpoint: resume drops those records
    with open(tmp_path / LOG_NAME, "a") as f:
        f.write(json.dumps({"kind": "train", "step": 99, "loss": 1.0}) + "\n" + '{"kind": "tr')
    r = Trainer(
        _recipe(),
        data,
        out_dir=tmp_path,
        resume=tmp_path,
        log_every=2,
        progress=False,
        eval_data=eval_data,
    )
    r.fit()
    steps = [(x["kind"], x["step"]) for x in read_log(tmp_path)]
    assert steps == [("train", 2), ("eval", 2), ("train", 3), ("train", 4), ("eval", 4)]


def test_tensorboard_scalars_and_images(tmp_path, data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = {"noise": SyntheticDataset([torch.rand(3, 24, 28)], "gaussian_noise:sigma=25", seed=2)}
    Trainer(_recipe(), data, out_dir=tmp_path, steps=2, log_every=1, progress=False,
            tensorboard=True, eval_data=ev).fit()
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/l1", "train/icrm", "train/psnr", "train/lr"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2]
    log = [r for r in read_log(tmp_path) if r["kind"] == "train"]
    assert acc.Scalars("train/loss")[1].value == pytest.approx(log[1]["loss"], rel=1e-6)
    img = acc.Images("train/input_output_target")[-1]
    assert img.height == 32 and img.width == 3 * 32 + 2 * 4
    img = acc.Images("eval/noise")[-1]
    assert img.height == 24 and img.width == 3 * 28 + 2 * 4 and img.step == 2
    ev_psnr = [r for r in read_log(tmp_path) if r["kind"] == "eval"][-1]["psnr"]
    assert acc.Scalars("eval/psnr")[0].value == pytest.approx(ev_psnr, rel=1e-6)


def test_missing_extra_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(
        MissingExtra,
        match=r"^--tensorboard needs torch, which is not installed: "
        r"pip install 'irblocks\[tensorboard\]'$",
    ):
        require_extra("torch.utils.tensorboard", "tensorboard", "--tensorboard")


def test_foreach_ema_matches_the_per_tensor_update(data):
    t = Trainer(_recipe(), data, steps=3, progress=False)
    # a BatchNorm-free tiny model has no integer buffers: add one to exercise the copy path
    t.model.register_buffer("counter", torch.tensor(5))
    t.ema_model.register_buffer("counter", torch.tensor(0))
    from irblocks.train.trainer import _ema_pairs

    t._ema_pairs = _ema_pairs(t.ema_model, t.model)
    for p in t.model.parameters():
        p.data.add_(torch.randn_like(p))
    before = copy.deepcopy(t.ema_model.state_dict())
    t.step = 4
    t._update_ema()
    d = min(0.9, 5 / 14)
    for k, v in t.model.state_dict().items():
        want = before[k] * d + v * (1 - d) if v.is_floating_point() else v
        torch.testing.assert_close(t.ema_model.state_dict()[k], want, rtol=1e-6, atol=1e-7)
    assert int(t.ema_model.counter) == 5


def test_evaluation_leaves_the_training_random_streams_alone(data):
    import random

    ev = {"noise": SyntheticDataset([torch.rand(3, 24, 24)], "gaussian_noise:sigma=25", seed=2)}
    t = Trainer(_recipe(), data, steps=2, progress=False, eval_data=ev)
    # a model whose evaluation draws random numbers (a sampling prior, say)
    t.ema_model.register_forward_hook(lambda m, a, o: (torch.rand(1), random.random()) and None)
    state, py = torch.get_rng_state(), random.getstate()
    res = t.evaluate_now()
    assert res["tasks"]["noise"]["psnr"] > 0
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py


def test_second_fit_of_one_trainer_keeps_logging(tmp_path, data):
    t = Trainer(_recipe(), data, out_dir=tmp_path, steps=4, log_every=1, progress=False)
    t.fit(stop_after=2)
    t.fit()
    assert [r["step"] for r in read_log(tmp_path)] == [1, 2, 3, 4]
