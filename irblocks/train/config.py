"""Schemas of a recipe's training sections: ``optimizer``, ``schedule``, ``train`` (and ``loss``),
and of its evaluation protocol ``eval: {crop_multiple: N}`` (see irblocks.train.evaluate).

```yaml
loss: [{type: l1, weight: 1.0}, {type: fft, weight: 0.1}]
optimizer: {type: adamw, lr: 2.0e-4, betas: [0.9, 0.999], weight_decay: 1.0e-4}
schedule: {type: warmup_cosine, warmup_epochs: 15, epochs: 150}
train: {batch_size: 32, patch_size: 128, grad_clip: 0.01}
```

Schedules (learning-rate factor as a function of the fractional epoch e, updated
every step):

* ``warmup_cosine``: linear warm-up from 0 over ``warmup_epochs`` then a cosine
  from ``lr`` to ``min_lr`` at ``epochs`` (PromptIR/AnyIR's
  LinearWarmupCosineAnnealingLR, stepped per iteration instead of per epoch).
* ``halve_at_mid``: ``lr`` until ``epochs / 2``, then ``lr / 2`` (ClusIR).
* ``constant``.

:func:`validate_sections` returns one line per problem (the recipe validator
calls it).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Literal, Optional, Tuple

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from irblocks.registry.sections import register_section, sections

__all__ = ["OptimizerConfig", "ScheduleConfig", "TrainConfig", "EvalConfig", "validate_sections",
           "parse_sections", "lr_factor"]

_STRICT = ConfigDict(extra="forbid")


class OptimizerConfig(BaseModel):
    model_config = _STRICT
    type: Literal["adamw", "adam"] = "adamw"
    lr: float = Field(2e-4, gt=0)
    betas: List[float] = [0.9, 0.999]
    weight_decay: float = Field(0.0, ge=0)
    eps: float = Field(1e-8, gt=0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, v):
        if len(v) != 2 or not all(0 <= b < 1 for b in v):
            raise ValueError(f"betas must be two numbers in [0, 1), got {v}")
        return v


class ScheduleConfig(BaseModel):
    model_config = _STRICT
    type: Literal["warmup_cosine", "halve_at_mid", "constant"] = "constant"
    epochs: Optional[float] = Field(None, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if self.type != "constant" and self.epochs is None:
            raise ValueError(f"schedule {self.type!r} needs 'epochs'")
        if self.epochs is not None and self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) exceeds epochs ({self.epochs})")
        return self


class TrainConfig(BaseModel):
    model_config = _STRICT
    batch_size: int = Field(8, ge=1)
    patch_size: Optional[int] = Field(128, ge=8)
    iterations: Optional[int] = Field(None, ge=1,
                                      description="train by iterations instead of epochs")
    grad_clip: Optional[float] = Field(None, gt=0, description="max global gradient norm")
    ema: Optional[float] = Field(None, gt=0, lt=1,
                                 description="EMA decay of the weights (e.g. 0.999)")
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    workers: int = Field(0, ge=0)
    seed: int = 0
    tasks: Optional[Dict[str, int]] = Field(None,
                                            description="task -> repeat factor (all-in-one mixing)")


class EvalConfig(BaseModel):
    """The evaluation protocol that reproduces a recipe's paper (``irblocks eval`` default)."""
    model_config = _STRICT
    crop_multiple: int = Field(1, ge=1, description="centre-crop test images to a multiple of this")


def lr_factor(schedule: ScheduleConfig, epoch: float, lr: float | None = None) -> float:
    """Multiplier of the base learning rate ``lr`` at fractional epoch ``epoch``.

    ``min_lr`` (needs ``lr``) is where the cosine ends and a floor for ``halve_at_mid``.
    A closed form of the epoch rather than a ``torch.optim.lr_scheduler``: the trainer
    sets the rate of every step from the step (or the elapsed time budget), which keeps
    resumed runs exact without scheduler state, and PromptIR's warm-up starts at 0,
    which ``LinearLR`` (start_factor > 0) cannot express. ``CosineAnnealingLR``'s closed
    form (eta_min + (lr - eta_min)(1 + cos(pi t / T)) / 2) is the cosine used here.
    """
    if schedule.type == "constant":
        return 1.0
    floor = min(schedule.min_lr / lr, 1.0) if lr and schedule.min_lr else 0.0
    total = float(schedule.epochs)
    if schedule.type == "halve_at_mid":
        return max(0.5, floor) if epoch >= total / 2 else 1.0
    warm = float(schedule.warmup_epochs)
    if warm > 0 and epoch < warm:
        return epoch / warm
    span = max(total - warm, 1e-12)
    p = min(max((epoch - warm) / span, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def _errors(section: str, e: pydantic.ValidationError) -> List[Tuple[str, str]]:
    out = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        where = f"{section}.{loc}" if loc else section
        if err["type"] == "extra_forbidden":
            out.append((where,
                        f"unknown key (allowed: {', '.join(_MODELS[section].model_fields)})"))
        else:
            out.append((where, f"{msg} (got {err.get('input')!r})"))
    return out


_MODELS = {"optimizer": OptimizerConfig, "schedule": ScheduleConfig, "train": TrainConfig,
           "eval": EvalConfig}


def _section_check(name: str):
    model = _MODELS[name]

    def check(value: Any) -> List[Tuple[str, str]]:
        if not isinstance(value, dict):
            return [(name, f"expected a mapping, got {type(value).__name__}")]
        try:
            model.model_validate(value)
        except pydantic.ValidationError as e:
            return _errors(name, e)
        return []
    return check


# the recipe validator runs these (irblocks check, create_model)
for _name, _model in _MODELS.items():
    register_section(_name, _section_check(_name), _model.model_json_schema,
                     (_model.__doc__ or "").strip())


def validate_sections(recipe: Dict[str, Any], include_loss: bool = False) -> List[str]:
    """One-line errors ("path: message") in the ``optimizer``, ``schedule``, ``train`` and
    ``eval`` sections (and ``loss`` with ``include_loss``), by the validators registered
    with :func:`irblocks.registry.sections.register_section` (the ones ``irblocks check`` runs)."""
    if not isinstance(recipe, dict):
        return [f"recipe: expected a mapping, got {type(recipe).__name__}"]
    registered = sections()
    names = [*_MODELS, *(["loss"] if include_loss else [])]
    return [f"{path}: {msg}" for n in names if recipe.get(n) is not None
            for path, msg in registered[n].check(recipe[n])]


def parse_sections(recipe: Dict[str, Any]):
    """(OptimizerConfig, ScheduleConfig, TrainConfig) of a recipe (defaults where absent);
    raises ValueError with the first problem."""
    errs = validate_sections(recipe, include_loss=True)
    if errs:
        more = f" (and {len(errs) - 1} more problem(s))" if len(errs) > 1 else ""
        raise ValueError(errs[0] + more)
    return (OptimizerConfig.model_validate(recipe.get("optimizer") or {}),
            ScheduleConfig.model_validate(recipe.get("schedule") or {}),
            TrainConfig.model_validate(recipe.get("train") or {}))
