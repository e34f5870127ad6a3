"""Building models by name: ``create_model``, ``list_models``, ``to_recipe``."""
from __future__ import annotations

import copy
import fnmatch
from pathlib import Path
from typing import Sequence

from torch import nn

from irblocks import registry
from irblocks.registry import recipe as recipes

__all__ = ["create_model", "list_models", "is_model", "to_recipe", "resolve_recipe", "check_recipe"]


def _nested(key: str, value):
    """``"block.ffn.expansion", 3`` -> ``{"block": {"ffn": {"expansion": 3}}}``."""
    for part in reversed(key.split(".")[1:]):
        value = {part: value}
    return key.split(".")[0], value


def resolve_recipe(name_or_path: str | Path | dict, **overrides) -> recipes.Recipe:
    """Load a recipe, apply ``overrides`` to its ``model`` section and validate it completely.

    Maps merge, lists replace; a dotted key reaches a nested component
    (``**{"block.ffn.expansion": 3}``, what ``--set block.ffn.expansion=3`` passes);
    a value of ``None`` keeps the recipe's value (timm's convention).
    Raises :class:`RecipeError` listing every problem."""
    r = recipes.load(name_or_path)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides:
        model = r.data.get("model")
        if not isinstance(model, dict):
            model = {}
        for k, v in overrides.items():
            top, nested = _nested(k, v)
            model = recipes.deep_merge(model, {top: nested})
            r.lines[f"model.{k}"] = ("<overrides>", 0)
        r.data["model"] = model
    problems = recipes.validate(r)
    if problems:
        raise recipes.RecipeError(problems)
    return r


def check_recipe(name_or_path: str | Path | dict) -> list[recipes.Problem]:
    """All problems of a recipe, without raising (empty when valid)."""
    try:
        r = recipes.load(name_or_path)
    except recipes.RecipeError as e:
        return e.problems
    return recipes.validate(r)


def create_model(name_or_path: str | Path | dict, pretrained: bool = False,
                 **overrides) -> nn.Module:
    """Build a model from a shipped recipe name, a recipe file, or a recipe mapping
    (timm's ``create_model(name, pretrained=False, **kwargs)``).

    ``overrides`` change the recipe's ``model`` section, e.g.
    ``create_model("anyir", width=16, blocks=[1, 1, 1, 1])``; ``None`` keeps the
    recipe's value, a dotted key reaches a nested component. A registered model
    name (``unet_restorer``) is built from its constructor defaults plus overrides.
    No pretrained weights ship: ``pretrained=True`` raises a one-line ValueError
    pointing to ``irblocks convert`` (official checkpoints) and ``irblocks.load``.
    Build on the meta device with ``with torch.device("meta"): create_model(...)``.
    """
    if pretrained:
        raise ValueError(f"no pretrained weights ship with irblocks ({name_or_path!r}); convert an "
                         "official checkpoint with `irblocks convert ARCH SRC DST` and load it "
                         "with irblocks.load(DST)")
    if isinstance(name_or_path, str) and name_or_path not in recipes.names() and \
            not name_or_path.endswith((".yaml", ".yml")) and \
            name_or_path in registry.list_names("model"):
        name_or_path = {"model": {"type": name_or_path}}
    r = resolve_recipe(name_or_path, **overrides)
    try:
        model = registry.build(r.data["model"], "model", path="model")
    # constructor-level checks (ranges, divisibility)
    except (registry.ConfigError, ValueError) as e:
        if isinstance(e, recipes.RecipeError):
            raise
        head = str(e).split(":", 1)[0]
        path = head if head.startswith("model") else "model"
        file, line = r.where(path)
        raise recipes.RecipeError([recipes.Problem(file, line, path, str(e))]) from None
    resolved = copy.deepcopy(r.data)
    resolved.setdefault("recipe", recipes.RECIPE_VERSION)
    object.__setattr__(model, "_irblocks_recipe", resolved)
    object.__setattr__(model, "_irblocks_recipe_name", r.name)
    return model


def list_models(filter: str | Sequence[str] = "",
                exclude_filters: str | Sequence[str] = "") -> list[str]:
    """Shipped recipe names matching any of the shell wildcards ``filter`` and none of
    ``exclude_filters`` (timm's signature): ``list_models(["*ir*", "clusir*"], "*-tiny")``."""
    include = [filter] if isinstance(filter, str) else list(filter)
    exclude = [exclude_filters] if isinstance(exclude_filters, str) else list(exclude_filters)
    include = [f for f in include if f] or ["*"]
    names = recipes.names()
    return [n for n in names if any(fnmatch.fnmatchcase(n, f) for f in include)
            and not any(fnmatch.fnmatchcase(n, f) for f in exclude if f)]


def is_model(name: str) -> bool:
    """Whether ``create_model(name)`` names a shipped recipe or a registered model."""
    return (isinstance(name, str)
            and (name in recipes.names() or name in registry.list_names("model")))


def to_recipe(model: nn.Module) -> dict:
    """The resolved recipe that rebuilds ``model`` (identical state_dict keys and shapes).

    Models built from a recipe return it (with its loss/optimizer sections);
    models built in Python return ``{recipe: 1, model: <their constructor arguments>}``.
    """
    spec = registry.spec_of(model)
    if spec is None:
        raise TypeError(f"{type(model).__name__} is not a registered irblocks model; cannot write "
                        "a recipe for it")
    base = copy.deepcopy(getattr(model, "_irblocks_recipe", None)
                         or {"recipe": recipes.RECIPE_VERSION})
    base.pop("extends", None)
    base["model"] = copy.deepcopy(spec)
    return base
