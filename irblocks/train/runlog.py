"""The run log of a training folder: ``train_log.jsonl`` (always) and TensorBoard (optional).

One JSON object per line, written by rank 0 and flushed line by line::

    {"kind": "train", "step": 20, "epoch": 0.8, "lr": 0.001, "loss": 0.081, "l1": 0.07,
     "fft": 0.11, "psnr": 21.3, "images_per_s": 41.2, "steps_per_s": 5.1, "seconds": 4.0}
    {"kind": "eval", "step": 20, "epoch": 0.8, "psnr/denoise": 27.1, "ssim/denoise": 0.81,
     "psnr": 27.1, "ssim": 0.81}

``train`` records hold the means over the steps since the previous record: the total
loss, every loss term (auxiliary losses included, under the names the loss reports),
the PSNR of the training batches (model output clamped to [0, 1] against the target),
the learning rate of the record's last step and the throughput. ``eval`` records hold
the evaluation metrics per task and their mean. On resume the log is cut back to the
checkpoint's step (records written after the last checkpoint of an interrupted run are
dropped, as is a torn last line) and appended to. A train record is also written at every
checkpoint, so the log always reaches the step a run resumes from.

TensorBoard (``tensorboard=True``; ``pip install 'irblocks[tensorboard]'``): the same
scalars under ``train/<name>`` and ``eval/<name>`` plus sample images (input | output |
target: the last training batch's first crop at every checkpoint, ``eval/<task>`` the
first image of each task at every evaluation), in ``<run>/tensorboard``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from irblocks.atomic import atomic_path

__all__ = ["LOG_NAME", "RunLog", "read_log", "MissingExtra", "require_extra"]

LOG_NAME = "train_log.jsonl"


class MissingExtra(ImportError):
    """An optional dependency is not installed (one-line message naming the extra)."""


def require_extra(module: str, extra: str, what: str):
    """Import ``module`` or raise :class:`MissingExtra` with the pip command of ``extra``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(
            f"{what} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'irblocks[{extra}]'"
        ) from None


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_log(run: str | os.PathLike) -> List[Dict[str, Any]]:
    """The records of a run's ``train_log.jsonl`` (a run folder or the file itself); a torn
    last line (an interrupted write) is skipped, any other bad line is an error naming it."""
    p = Path(run)
    f = p / LOG_NAME if p.is_dir() else p
    if not f.is_file():
        where = f"{p} has no {LOG_NAME}" if p.is_dir() else f"no such file or run folder: {p}"
        raise FileNotFoundError(f"{where} (runs trained with irblocks train write one)")
    lines = f.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{f}:{i + 1}: not a JSON record") from None
        if not isinstance(rec, dict) or "step" not in rec:
            raise ValueError(
                f"{f}:{i + 1}: expected a JSON object with a 'step', got {line[:60]!r}"
            )
        out.append(rec)
    return out


class RunLog:
    """Accumulates per-step values and writes records (see the module docstring).

    Args:
        folder: the run folder (None: nothing is written, values are still averaged).
        every: steps per train record. steps_per_epoch: for the epoch column.
        resume_step: cut an existing log back to this step (None: start a new log).
        tensorboard: also write TensorBoard event files.
        enabled: False on non-zero ranks.
    """

    def __init__(
        self,
        folder: Optional[str | os.PathLike],
        every: int = 10,
        steps_per_epoch: int = 1,
        resume_step: Optional[int] = None,
        tensorboard: bool = False,
        enabled: bool = True,
    ):
        self.every, self.steps_per_epoch = max(1, int(every)), max(1, int(steps_per_epoch))
        self.enabled = enabled and folder is not None
        self.path = Path(folder) / LOG_NAME if folder is not None else None
        self._sums: Dict[str, float] = {}
        self._n, self._images, self._seconds = 0, 0, 0.0
        self._file = None
        self.tb = None
        self._tb_dir = None
        if tensorboard and enabled:
            require_extra("torch.utils.tensorboard", "tensorboard", "--tensorboard")
            if folder is not None:
                self._tb_dir = str(Path(folder) / "tensorboard")
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate(resume_step)
        self.open(purge_step=resume_step)

    def open(self, purge_step: Optional[int] = None) -> None:
        """(Re)open the writers (after :meth:`close`, e.g. a second ``fit`` of one trainer)."""
        if self.enabled and self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        if self._tb_dir is not None and self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=self._tb_dir, purge_step=purge_step)

    def _truncate(self, step: Optional[int]) -> None:
        if not self.path.exists():
            return
        if step is None:
            with atomic_path(self.path) as tmp:  # a new run in this folder starts a new log
                tmp.write_text("")
            return
        keep = [json.dumps(r) for r in read_log(self.path) if int(r["step"]) <= step]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(k + "\n" for k in keep))

    def _write(self, rec: Dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps({k: _clean(v) for k, v in rec.items()}) + "\n")
            self._file.flush()
        if self.tb is not None:
            kind = rec["kind"]
            for k, v in rec.items():
                if k not in ("kind", "step") and isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(f"{kind}/{k}", v, rec["step"])
            self.tb.flush()

    def add_step(
        self, step: int, lr: float, values: Dict[str, float], images: int, seconds: float
    ) -> None:
        """Account one optimizer step (``step`` = steps done); writes a record every ``every``."""
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._n += 1
        self._images += images
        self._seconds += seconds
        self._lr = lr
        if step % self.every == 0:
            self.flush_train(step)

    def flush_train(self, step: int) -> None:
        """Write the pending train record (no-op when nothing is pending)."""
        if not self._n:
            return
        dt = max(self._seconds, 1e-9)
        rec = {
            "kind": "train",
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "lr": self._lr,
            **{k: v / self._n for k, v in self._sums.items()},
            "images_per_s": self._images / dt,
            "steps_per_s": self._n / dt,
            "seconds": self._seconds,
        }
        self._sums, self._n, self._images, self._seconds = {}, 0, 0, 0.0
        self._write(rec)

    def add_eval(self, step: int, result: Dict[str, Any]) -> None:
        """An evaluation result of :func:`irblocks.train.evaluate.evaluate` at ``step``."""
        rec: Dict[str, Any] = {
            "kind": "eval",
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
        }
        for task, r in result["tasks"].items():
            rec[f"psnr/{task}"], rec[f"ssim/{task}"] = r["psnr"], r["ssim"]
        if result.get("average"):
            rec["psnr"], rec["ssim"] = result["average"]["psnr"], result["average"]["ssim"]
        self._write(rec)

    def add_images(self, step: int, tag: str, panels: torch.Tensor) -> None:
        """A 3 x H x W image in [0, 1] to TensorBoard (nothing without TensorBoard)."""
        if self.tb is not None:
            self.tb.add_image(tag, panels.detach().float().cpu().clamp(0, 1), step)
            self.tb.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
