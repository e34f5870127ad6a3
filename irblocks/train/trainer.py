"""The training loop: recipe loss/optimizer/schedule, clipping, EMA, AMP, checkpoints, resume, DDP.

```python
from irblocks.train import Trainer, SyntheticDataset
ds = SyntheticDataset("clean/", "gaussian_noise:sigma=25", patch_size=64, augment=True)
Trainer("anyir-tiny", ds, out_dir="runs/a", steps=1000).fit()
```

* The recipe's ``loss`` (a :class:`~irblocks.losses.CompositeLoss`, plus the
  model's auxiliary losses), ``optimizer`` (adamw | adam), ``schedule`` and
  ``train`` sections drive the run; arguments override them.
* Length: ``steps`` if given, else ``train.iterations``, else ``epochs`` (argument,
  else ``schedule.epochs``) x batches per epoch. The schedule is mapped onto the
  run: its ``epochs`` span the whole run (so a short run sees the whole warm-up
  and decay), and the learning rate is updated every step.
* Checkpoints (in ``out_dir``, every ``save_every`` steps and at the end, each
  file written under a temporary name and renamed):
  ``last.safetensors`` -- the model (EMA weights when EMA is on) with its resolved
  recipe, loadable by ``irblocks.load`` / ``irblocks eval``;
  ``train_state.safetensors`` -- raw weights, EMA weights, optimizer tensors and
  RNG states; ``train_state.json`` -- step, optimizer hyper-parameters, scaler,
  run settings and the resolved recipe. Nothing is pickled.
* Log (in ``out_dir``): ``train_log.jsonl``, a record of the mean loss terms (auxiliary
  losses included), training-batch PSNR, learning rate and throughput every ``log_every``
  steps and at every checkpoint, plus evaluation records when ``eval_data`` is given
  (every ``eval_every`` steps and at the end); ``tensorboard=True`` writes the same
  scalars and sample images (input | output | target) to ``out_dir/tensorboard``
  (:mod:`irblocks.train.runlog`). ``irblocks plot RUN`` draws it.
* EMA: ``ema_model = d * ema_model + (1 - d) * model`` after every optimizer step (one
  ``torch._foreach_lerp_`` over all floating tensors; integer buffers copied), d warmed up
  as ``min(ema, (1 + step) / (10 + step))``.
* Resume (``resume=out_dir``): weights, optimizer, EMA, RNG states and the data
  position are restored, so on CPU with a fixed seed a resumed run ends with
  bit-identical weights to an uninterrupted one. A checkpoint of another recipe is
  refused with one line naming the first difference.
* Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
  initialised (gloo on CPU, nccl on CUDA), the model is wrapped in
  DistributedDataParallel, batches are sharded (``batch_size`` is per process),
  and rank 0 writes checkpoints.
* Mixed precision: ``amp="auto"`` uses bf16 autocast on CUDA devices that support
  it, else fp16 with a GradScaler; off on CPU (``amp="bf16"`` forces CPU bf16).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from irblocks.atomic import atomic_path
from irblocks.losses import build_loss
from irblocks.progress import progress as progress_bar
from irblocks.train.config import TrainConfig, lr_factor, parse_sections
from irblocks.train.datasets import make_loader
from irblocks.train.imageio import hstack
from irblocks.train.metrics import batch_psnr
from irblocks.train.runlog import RunLog

__all__ = ["Trainer", "TrainError", "load_model", "resolve_recipe_dict", "model_output",
           "recipe_difference", "STATE_JSON", "STATE_TENSORS", "LAST"]

STATE_JSON, STATE_TENSORS, LAST = "train_state.json", "train_state.safetensors", "last.safetensors"
FORMAT = "irblocks-train-state/1"


class TrainError(ValueError):
    """A training problem (one-line message)."""


# --------------------------------------------------------------------------- helpers
def resolve_recipe_dict(recipe: Any, overrides: Optional[dict] = None) -> tuple[nn.Module, dict]:
    """(model, resolved recipe dict) from a recipe name, path or mapping (model overrides
    applied)."""
    import irblocks
    model = irblocks.create_model(recipe, **(overrides or {}))
    return model, irblocks.to_recipe(model)


def model_output(out: Any) -> torch.Tensor:
    """The restored image of a model's output (a tensor, the first of a tuple, or
    dict['output'])."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, dict):
        for k in ("output", "restored", "out"):
            if k in out:
                return out[k]
    raise TrainError(f"the model returned {type(out).__name__}; expected an image tensor")


def recipe_difference(a: Any, b: Any, path: str = "model") -> Optional[str]:
    """The first path where two recipe values differ, as 'path: x vs y' (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return (f"{path}.{k}: {'absent' if k not in a else repr(a[k])} vs "
                        f"{'absent' if k not in b else repr(b[k])}")
            d = recipe_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: {list(a)!r} vs {list(b)!r}"
        for i, (x, y) in enumerate(zip(a, b)):
            d = recipe_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                       and float(a) == float(b)):
        return f"{path}: {a!r} vs {b!r}"
    return None


def load_model(checkpoint: str | os.PathLike, recipe: Any = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """A model from an irblocks checkpoint (a .safetensors file or a training folder).

    With ``recipe``, the checkpoint's recipe must build the same model (else one line
    naming the first difference).
    """
    import irblocks
    from irblocks.checkpoint import CheckpointError, as_path, read_recipe
    p = as_path(checkpoint, "load_model")
    if p.is_dir():
        if not (p / LAST).is_file():
            raise TrainError(f"{p}: no {LAST} in this folder (not an irblocks training folder)")
        p = p / LAST
    elif not p.exists():
        raise TrainError(f"{p}: no such checkpoint file or training folder")
    stored = read_recipe(p)
    if recipe is not None:
        _, want = resolve_recipe_dict(recipe)
        diff = recipe_difference(stored.get("model"), want.get("model"))
        if diff:
            raise TrainError(f"{p} was trained with another recipe ({diff}); "
                             "it cannot be used as "
                             f"{recipe if isinstance(recipe, str) else 'this recipe'}")
    try:
        model = irblocks.load(p, map_location="cpu")
    except CheckpointError:
        raise
    return model.to(device).eval()


def has_routing(model: nn.Module) -> bool:
    """True if some block routes (uses only part of its parameters per input), which DDP must be
    told about (find_unused_parameters). Routed blocks are recognised by the library's
    convention: their forward consults ``irblocks.testing.dense_routing_enabled`` (or the class
    sets ``routed = True``)."""
    for m in model.modules():
        cls = type(m)
        if getattr(cls, "routed", False):
            return True
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        if code is not None and "dense_routing_enabled" in (*code.co_names, *code.co_freevars):
            return True
    return False


def _dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Train a recipe's model on a dataset. See the module docstring.

    Args:
        recipe: a recipe name, path or mapping.
        data: a Dataset of {"input", "target", ...} items (crops of one size).
        out_dir: where checkpoints go (None: no checkpoints).
        steps / epochs: run length (see the module docstring).
        batch_size, patch_size (reported only; the dataset crops), lr, seed, workers,
        ema, grad_clip, amp: override the recipe's train/optimizer sections.
        model_overrides: changes to the recipe's model section.
        save_every: checkpoint period in steps (0: only at the end).
        resume: a training folder (or its train_state.json) to continue from.
        progress: show the progress bar (:func:`irblocks.progress.progress`; off a terminal,
            a line every ``log_every`` steps). log_every: period of progress lines and of
            ``train_log.jsonl`` records, in steps.
        eval_data: task -> dataset evaluated (PSNR/SSIM, EMA weights when on) every
            ``eval_every`` steps (0: only at the end) into the log; eval_limit: images per task.
        tensorboard: also write TensorBoard event files (optional extra ``[tensorboard]``).
        device: "cpu", "cuda", ... (default: cuda if available, else cpu).
        time_budget: stop (and checkpoint) after this many seconds.
        schedule_by_time: with a time budget, run the learning-rate schedule over the budget.
    """

    def __init__(self, recipe: Any, data, out_dir: Optional[str | os.PathLike] = None,
                 steps: Optional[int] = None, epochs: Optional[float] = None,
                 batch_size: Optional[int] = None, lr: Optional[float] = None,
                 seed: Optional[int] = None, workers: Optional[int] = None,
                 ema: Optional[float] = None, grad_clip: Optional[float] = None,
                 amp: Optional[str] = None, model_overrides: Optional[dict] = None,
                 save_every: int = 0, resume: Optional[str] = None, progress: bool = True,
                 log_every: int = 10, device: Optional[str] = None,
                 time_budget: Optional[float] = None, schedule_by_time: bool = False,
                 eval_data: Optional[Dict[str, Any]] = None, eval_every: int = 0,
                 eval_limit: Optional[int] = None, tensorboard: bool = False):
        self.rank, self.world, local = _dist_info()
        if device is None:
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.distributed = self.world > 1
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)

        recipe_in = recipe
        seed0 = seed if seed is not None else 0
        torch.manual_seed(seed0)                 # identical initial weights on every rank
        model, resolved = resolve_recipe_dict(recipe_in, model_overrides)
        opt_cfg, sched_cfg, train_cfg = parse_sections(resolved)
        tr = train_cfg.model_dump()
        for k, v in dict(batch_size=batch_size, seed=seed, workers=workers, ema=ema,
                         grad_clip=grad_clip, amp=amp).items():
            if v is not None:
                tr[k] = v
        self.train_cfg = TrainConfig.model_validate(tr)
        if lr is not None:
            opt_cfg = opt_cfg.model_copy(update={"lr": float(lr)})
        self.opt_cfg, self.sched_cfg = opt_cfg, sched_cfg
        seed_ = self.train_cfg.seed
        # the recipe's train.seed decides the initial weights
        if seed_ != seed0:
            torch.manual_seed(seed_)
            model, resolved = resolve_recipe_dict(recipe_in, model_overrides)
        random.seed(seed_)
        self.recipe = resolved
        self.recipe_name = getattr(model, "_irblocks_recipe_name", None) or (
            recipe_in if isinstance(recipe_in, str) else "<mapping>")
        self.model = model.to(self.device)
        self.loss_fn = build_loss(resolved.get("loss")).to(self.device)
        self.optimizer = self._make_optimizer()
        self.ema_model = None
        if self.train_cfg.ema:
            self.ema_model = copy.deepcopy(self.model).eval()
            for p in self.ema_model.parameters():
                p.requires_grad_(False)
            self._ema_pairs = _ema_pairs(self.ema_model, self.model)
        self.amp_dtype, use_scaler = self._amp_mode(self.train_cfg.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)

        self.data = data
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.save_every, self.progress, self.log_every = int(save_every), progress, log_every
        self.time_budget, self.schedule_by_time, self._t0 = time_budget, schedule_by_time, None
        if time_budget is not None and self.distributed:
            raise TrainError("a time budget needs a single process (ranks could stop at different "
                             "steps); give steps or epochs under torchrun")
        self.step = 0
        self.stop_after = None
        if resume is not None and steps is None and epochs is None:
            steps = _read_state_json(resume).get("total_steps")
        probe = make_loader(data, self.train_cfg.batch_size, 0, seed_, True, self.rank, self.world)
        self.steps_per_epoch = probe.batch_sampler.batches_per_epoch
        if steps is not None:
            total = int(steps)
        elif epochs is not None:
            total = int(math.ceil(float(epochs) * self.steps_per_epoch))
        elif self.train_cfg.iterations:
            total = int(self.train_cfg.iterations)
        elif self.sched_cfg.epochs:
            total = int(math.ceil(float(self.sched_cfg.epochs) * self.steps_per_epoch))
        else:
            raise TrainError("run length unknown: give steps or epochs (the recipe has no "
                             "schedule.epochs nor train.iterations)")
        if total < 1:
            raise TrainError(f"steps must be >= 1, got {total}")
        self.total_steps = total
        if resume is not None:
            self._load_state(resume)
        # per-rank randomness (losses, dropout) after the weights are fixed
        if resume is None:
            torch.manual_seed(seed_ + 7919 * self.rank + 1)
        self.ddp = None
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.device.index] if self.device.type == "cuda" else None
            # channels_last activations give some weight gradients channels_last strides; DDP
            # copies them into its buckets (correct, a little slower) and warns once per run
            import warnings
            warnings.filterwarnings("ignore",
                                    message="Grad strides do not match bucket view strides")
            self.ddp = DDP(self.model, device_ids=ids,
                           find_unused_parameters=has_routing(self.model))
        self.history: list[dict] = []
        self.eval_data, self.eval_every, self.eval_limit = eval_data, int(eval_every), eval_limit
        self.log = RunLog(self.out_dir, every=log_every, steps_per_epoch=self.steps_per_epoch,
                          resume_step=self.step if resume is not None else None,
                          tensorboard=tensorboard, enabled=self.rank == 0)
        self._sample: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ setup
    def _make_optimizer(self) -> torch.optim.Optimizer:
        o = self.opt_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if not params:
            raise TrainError("the model has no trainable parameters")
        cls = torch.optim.AdamW if o.type == "adamw" else torch.optim.Adam
        return cls(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps)

    def _amp_mode(self, amp: str):
        if amp == "off":
            return None, False
        if self.device.type == "cuda":
            if amp in ("auto", "bf16") and torch.cuda.is_bf16_supported():
                return torch.bfloat16, False
            return torch.float16, True
        if amp == "bf16":
            return torch.bfloat16, False
        if amp == "fp16":
            raise TrainError("amp fp16 needs a CUDA device; use amp bf16 or off on CPU")
        return None, False

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based).

        With ``schedule_by_time`` (time-budgeted runs such as the demo) the schedule
        follows the elapsed fraction of the time budget instead of the step count."""
        span = float(self.sched_cfg.epochs) if self.sched_cfg.epochs else 1.0
        frac = (step + 1) / self.total_steps
        if self.schedule_by_time and self.time_budget and self._t0 is not None:
            frac = max(frac, (time.perf_counter() - self._t0) / self.time_budget)
        return self.opt_cfg.lr * lr_factor(self.sched_cfg, min(frac, 1.0) * span, self.opt_cfg.lr)

    # ------------------------------------------------------------------ training
    def train_step(self, batch: Dict[str, Any]) -> tuple[float, Dict[str, float]]:
        """One optimizer step; returns (total loss, {term: value}) (with ``psnr`` of the batch)."""
        x = batch["input"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True)
        lr = self.lr_at(self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        net = self.ddp or self.model
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            pred = model_output(net(x))
        total, parts = self.loss_fn(pred.float(), y, self.model)
        if not torch.isfinite(total):
            raise TrainError(f"loss became {float(total)} at step {self.step} "
                             "(terms: "
                             f"{', '.join(f'{k}={float(v):.4g}' for k, v in parts.items())}); "
                             "lower the learning rate or enable grad_clip")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.train_cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema_model is not None:
            self._update_ema()
        self.step += 1
        with torch.no_grad():
            pred = pred.detach().float()
            batch_psnr_ = float(batch_psnr(pred.clamp(0, 1), y.float()).mean())
            self._sample = (x[0], pred[0], y[0])
        out = {k: float(v) for k, v in parts.items()}
        out["psnr"] = batch_psnr_
        return float(total.detach()), out

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up of the decay (as in timm's EMA): early weights are not averaged in for long
        d = min(float(self.train_cfg.ema), (1 + self.step) / (10 + self.step))
        ema_f, model_f, ema_i, model_i = self._ema_pairs
        if ema_f:
            torch._foreach_lerp_(ema_f, model_f, 1.0 - d)
        if ema_i:
            torch._foreach_copy_(ema_i, model_i)

    def evaluate_now(self) -> Optional[Dict[str, Any]]:
        """Evaluate ``eval_data`` with the eval model, log it and return the result (rank 0)."""
        if not self.eval_data or self.rank != 0:
            return None
        from irblocks.train.evaluate import evaluate
        model = self.eval_model()
        was = model.training
        py_state = random.getstate()
        # evaluation never moves the training's random streams (resume stays bit-identical)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            res = evaluate(model, self.eval_data, tile=None, device=self.device,
                           limit=self.eval_limit)
            if self.log.tb is not None:            # one restored sample per task
                for task, ds in self.eval_data.items():
                    item = ds[0]
                    x = item["input"].unsqueeze(0).to(self.device)
                    with torch.no_grad():
                        pred = model_output(model(x)).float().clamp(0, 1)
                    panels = hstack([x[0], pred[0], item["target"]])
                    self.log.add_images(self.step, f"eval/{task}", panels)
        random.setstate(py_state)
        model.train(was)
        self.log.add_eval(self.step, res)
        return res

    def fit(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Run to ``total_steps`` (or the time budget, or global step ``stop_after``, after which
        a checkpoint is written so the run can be resumed); returns a summary dict."""
        self.stop_after = stop_after
        self.model.train()
        self.log.open()
        loader = make_loader(self.data, self.train_cfg.batch_size, self.train_cfg.workers,
                             self.train_cfg.seed, True, self.rank, self.world, start_step=self.step,
                             steps=self.total_steps)
        # a time-budgeted run has no known step count: the bar shows steps and rate, no ETA
        bar = progress_bar(total=None if self.time_budget else self.total_steps, initial=self.step,
                           desc="train", unit="step", enabled=self.progress and self.rank == 0,
                           interval=0, every=self.log_every)
        t0 = self._t0 = time.perf_counter()
        loss = float("nan")
        stopped_early = False
        seen = 0
        try:
            t_step = time.perf_counter()
            for batch in loader:
                lr = self.lr_at(self.step)
                loss, parts = self.train_step(batch)
                now = time.perf_counter()
                images = batch["input"].shape[0] * self.world
                self.history.append({"step": self.step, "loss": loss, **parts})
                self.log.add_step(self.step, lr, {"loss": loss, **parts}, images, now - t_step)
                t_step = now
                seen += images
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                img_s=f"{seen / (now - t0):.1f}", refresh=False)
                bar.update(1)
                if self.eval_every and self.step % self.eval_every == 0 \
                        and self.step < self.total_steps:
                    self.evaluate_now()
                if self.out_dir is not None and self.save_every \
                        and self.step % self.save_every == 0 and self.step < self.total_steps:
                    self.save()
                if self.stop_after is not None and self.step >= self.stop_after:
                    stopped_early = self.step < self.total_steps
                    break
                if self.time_budget is not None and time.perf_counter() - t0 >= self.time_budget:
                    stopped_early = self.step < self.total_steps
                    break
            paused = self.stop_after is not None and stopped_early
            if self.eval_data and self.step > 0 and not paused:     # the end of the run
                self.evaluate_now()
            if self.out_dir is not None:
                self.save()
        finally:
            bar.close()
            self.log.flush_train(self.step)
            self.log.close()
        elapsed = time.perf_counter() - t0
        return {"steps": self.step, "loss": loss, "seconds": elapsed,
                "stopped_early": stopped_early,
                "out_dir": str(self.out_dir) if self.out_dir else None}

    def eval_model(self) -> nn.Module:
        """The model to evaluate: EMA weights when EMA is on."""
        return self.ema_model if self.ema_model is not None else self.model

    # ------------------------------------------------------------------ checkpoints
    def _optimizer_payload(self) -> tuple[dict, dict]:
        sd = self.optimizer.state_dict()
        tensors, scalars = {}, {}
        for idx, st in sd["state"].items():
            for k, v in st.items():
                if isinstance(v, torch.Tensor):
                    tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(idx), {})[k] = v
        return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}

    def save(self) -> Optional[Path]:
        """Write the checkpoint files (rank 0 only); returns the folder."""
        if self.out_dir is None:
            return None
        if self.distributed:
            torch.distributed.barrier()
        if self.rank != 0:
            if self.distributed:
                torch.distributed.barrier()
            return self.out_dir
        from safetensors.torch import save_file

        import irblocks
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log.flush_train(self.step)            # the log reaches every checkpoint's step
        if self._sample is not None:
            self.log.add_images(self.step, "train/input_output_target", hstack(self._sample))
        tensors: Dict[str, torch.Tensor] = {}
        for k, v in self.model.state_dict().items():
            tensors[f"model.{k}"] = v.detach().cpu().clone().contiguous()
        if self.ema_model is not None:
            for k, v in self.ema_model.state_dict().items():
                tensors[f"ema.{k}"] = v.detach().cpu().clone().contiguous()
        opt_t, opt_j = self._optimizer_payload()
        tensors.update(opt_t)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        meta = {"format": FORMAT, "step": str(self.step)}
        with atomic_path(self.out_dir / STATE_TENSORS) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        irblocks.save(self.eval_model(), self.out_dir / LAST, recipe=self.recipe,
                      extra={"step": self.step})
        state = {
            "format": FORMAT, "step": self.step, "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch, "recipe_name": self.recipe_name,
            "recipe": self.recipe, "optimizer": opt_j,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "python_rng": _py_rng_to_json(random.getstate()), "train": self.train_cfg.model_dump(),
            "opt": self.opt_cfg.model_dump(), "schedule": self.sched_cfg.model_dump(),
            "world_size": self.world, "loss": self.loss_fn.describe(),
            "irblocks": irblocks.__version__,
        }
        with atomic_path(self.out_dir / STATE_JSON) as tmp:
            tmp.write_text(json.dumps(state, indent=1))
        if self.distributed:
            torch.distributed.barrier()
        return self.out_dir

    def _load_state(self, resume: str | os.PathLike) -> None:
        from safetensors import safe_open
        from safetensors.torch import load_file
        p = Path(resume)
        folder = p.parent if p.is_file() else p
        js, ts = folder / STATE_JSON, folder / STATE_TENSORS
        if not js.is_file() or not ts.is_file():
            raise TrainError(f"cannot resume from {p}: expected {STATE_JSON} and {STATE_TENSORS} "
                             f"in {folder}")
        try:
            state = json.loads(js.read_text())
        except json.JSONDecodeError as e:
            raise TrainError(f"cannot resume from {js}: not valid JSON ({e.msg} at line "
                             f"{e.lineno})") from None
        if state.get("format") != FORMAT:
            raise TrainError(f"cannot resume from {js}: format {state.get('format')!r}, expected "
                             f"{FORMAT!r}")
        diff = recipe_difference(state.get("recipe", {}).get("model"), self.recipe.get("model"))
        if diff:
            raise TrainError(f"cannot resume from {folder}: it was trained with another recipe "
                             f"('{state.get('recipe_name')}'; {diff})")
        with safe_open(str(ts), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("step") != str(state["step"]):
            raise TrainError(f"cannot resume from {folder}: {STATE_TENSORS} (step "
                             f"{meta.get('step')}) and "
                             f"{STATE_JSON} (step {state['step']}) do not belong together")
        t = load_file(str(ts))
        msd = {k[6:]: v for k, v in t.items() if k.startswith("model.")}
        missing = [k for k in self.model.state_dict() if k not in msd]
        if missing:
            raise TrainError(f"cannot resume from {folder}: weights do not match the model "
                             f"(missing {missing[:3]})")
        self.model.load_state_dict(msd, strict=True)
        if self.ema_model is not None:
            esd = {k[4:]: v for k, v in t.items() if k.startswith("ema.")}
            self.ema_model.load_state_dict(esd if esd else msd, strict=True)
        og = state["optimizer"]
        ostate: Dict[int, Dict[str, Any]] = {}
        for k, v in t.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                ostate.setdefault(int(idx), {})[name] = v
        for idx, sc in og.get("scalars", {}).items():
            ostate.setdefault(int(idx), {}).update(sc)
        groups = og["param_groups"]
        for g in groups:
            if "betas" in g:
                g["betas"] = tuple(g["betas"])
        try:
            self.optimizer.load_state_dict({"state": ostate, "param_groups": groups})
        except (ValueError, KeyError) as e:
            raise TrainError(f"cannot resume from {folder}: optimizer state does not fit "
                             f"({str(e).splitlines()[0]})") from None
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if "rng.torch" in t:
            torch.set_rng_state(t["rng.torch"])
        if "rng.cuda" in t and self.device.type == "cuda":
            torch.cuda.set_rng_state(t["rng.cuda"], self.device)
        if state.get("python_rng"):
            random.setstate(_py_rng_from_json(state["python_rng"]))
        self.step = int(state["step"])
        if self.step >= self.total_steps:
            raise TrainError(f"the checkpoint in {folder} is already at step {self.step}; "
                             f"ask for more than {self.step} steps to continue")


def _ema_pairs(ema: nn.Module, model: nn.Module) -> tuple[list, list, list, list]:
    """(EMA floating tensors, model floating tensors, EMA other tensors, model other tensors),
    parameters and buffers in state_dict order (they share storage with the modules)."""
    e_sd, m_sd = ema.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    ef, mf, ei, mi = [], [], [], []
    for k, v in m_sd.items():
        e = e_sd[k]
        if v.is_floating_point():
            ef.append(e.detach()), mf.append(v.detach())
        else:
            ei.append(e.detach()), mi.append(v.detach())
    return ef, mf, ei, mi


def _read_state_json(resume) -> dict:
    p = Path(resume)
    js = (p.parent if p.is_file() else p) / STATE_JSON
    try:
        return json.loads(js.read_text())
    except FileNotFoundError:
        raise TrainError(f"cannot resume from {p}: no {STATE_JSON} there") from None
    except json.JSONDecodeError as e:
        raise TrainError(f"cannot resume from {js}: not valid JSON ({e.msg} at line "
                         f"{e.lineno})") from None


def _py_rng_to_json(st):
    return [st[0], list(st[1]), st[2]]


def _py_rng_from_json(js):
    return (js[0], tuple(js[1]), js[2])
