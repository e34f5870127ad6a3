"""Building models by name: ``create_model``, ``list_models``, ``to_recipe``."""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from irblocks.registry import core, recipe as recipes

__all__ = ["create_model", "list_models", "to_recipe", "resolve_recipe", "check_recipe"]


def resolve_recipe(name_or_path: str | Path | dict, **overrides) -> recipes.Recipe:
    """Load a recipe, apply ``overrides`` to its ``model`` section (maps merge, lists
    replace) and validate it completely. Raises :class:`RecipeError` listing every problem."""
    r = recipes.load(name_or_path)
    if overrides:
        model = r.data.get("model")
        if not isinstance(model, dict):
            model = {}
        r.data["model"] = recipes.deep_merge(model, overrides)
        for k in overrides:
            r.lines[f"model.{k}"] = ("<overrides>", 0)
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


def create_model(name_or_path: str | Path | dict, **overrides) -> nn.Module:
    """Build a model from a shipped recipe name, a recipe file, or a recipe mapping.

    ``overrides`` change the recipe's ``model`` section, e.g.
    ``create_model("anyir", width=16, blocks=[1, 1, 1, 1])``. A registered model
    name (``unet_restorer``) is built from its constructor defaults plus overrides.
    Build on the meta device with ``with torch.device("meta"): create_model(...)``.
    """
    if isinstance(name_or_path, str) and name_or_path not in recipes.names() and \
            not name_or_path.endswith((".yaml", ".yml")) and name_or_path in core.list_names("model"):
        name_or_path = {"model": {"type": name_or_path}}
    r = resolve_recipe(name_or_path, **overrides)
    try:
        model = core.build(r.data["model"], "model", path="model")
    except (core.ConfigError, ValueError) as e:  # constructor-level checks (ranges, divisibility)
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


def list_models(pattern: str = "*") -> list[str]:
    """Shipped recipe names matching a shell wildcard (``list_models("*ir*")``)."""
    return recipes.names(pattern)


def to_recipe(model: nn.Module) -> dict:
    """The resolved recipe that rebuilds ``model`` (identical state_dict keys and shapes).

    Models built from a recipe return it (with its loss/optimizer sections);
    models built in Python return ``{recipe: 1, model: <their constructor arguments>}``.
    """
    spec = core.spec_of(model)
    if spec is None:
        raise TypeError(f"{type(model).__name__} is not a registered irblocks model; cannot write a recipe for it")
    base = copy.deepcopy(getattr(model, "_irblocks_recipe", None) or {"recipe": recipes.RECIPE_VERSION})
    base.pop("extends", None)
    base["model"] = copy.deepcopy(spec)
    return base
