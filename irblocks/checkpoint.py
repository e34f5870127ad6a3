"""Checkpoints: safetensors weights with the resolved recipe in the metadata.

``save(model, path)`` writes the state_dict (tensors only) and, as metadata,
``irblocks.recipe`` (JSON of the resolved recipe) and ``irblocks.version``.
``load(path)`` rebuilds the model from that recipe and loads the weights
strictly. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from irblocks.atomic import atomic_path

__all__ = ["save", "load", "read_recipe", "read_tensors", "CheckpointError", "MAX_RECIPE_DEPTH"]

MAX_RECIPE_DEPTH = 64
"""Deepest nesting of the embedded recipe JSON (the recipe loader's YAML limit too)."""

RECIPE_KEY = "irblocks.recipe"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit (one line naming the file)."""


def as_path(path, what: str) -> Path:
    """``path`` as a Path, or a one-line CheckpointError when it is not a file name."""
    if isinstance(path, (str, os.PathLike)):
        return Path(path)
    hint = " (a state_dict: use irblocks.convert.from_official(arch, state_dict))" \
        if isinstance(path, Mapping) else ""
    raise CheckpointError(f"{what}: expected a checkpoint file path (str or os.PathLike), "
                          f"got {type(path).__name__}{hint}")


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def _safetensors_error(path: Path, e: BaseException) -> CheckpointError:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if head[:1] == b"\x80" or head[:2] == b"PK":
        why = ("not a safetensors file (it looks like a torch pickle/zip file; "
               "irblocks never unpickles it)")
    else:
        why = f"not a safetensors file ({_reason(e)})"
    return CheckpointError(f"{path}: {why}")


def _metadata(path: Path) -> dict:
    from safetensors import safe_open
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception as e:  # noqa: BLE001  (every safetensors failure -> one line naming the file)
        raise _safetensors_error(path, e) from None


def read_tensors(path: str | os.PathLike,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file; any failure is one CheckpointError naming the file."""
    from safetensors.torch import load_file
    path = as_path(path, "read_tensors")
    _metadata(path)
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:  # noqa: BLE001
        raise _safetensors_error(path, e) from None


def _depth_ok(obj, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > limit:
            return False
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return True


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out, seen = {}, {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        key = (t.data_ptr(), t.dtype, tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:  # shared tensors: safetensors wants distinct storage
            t = t.clone()
        seen[key] = k
        out[k] = t
    return out


def save(model: nn.Module, path: str | os.PathLike, recipe: dict | None = None,
         extra: dict | None = None) -> Path:
    """Write ``model``'s weights + its resolved recipe (atomic: temp file, then rename)."""
    from safetensors.torch import save_file

    import irblocks
    from irblocks.api import to_recipe
    rec = recipe if recipe is not None else to_recipe(model)
    meta = {"irblocks.recipe": json.dumps(rec), "irblocks.version": irblocks.__version__,
            "format": "pt"}
    if extra:
        meta.update(
            {f"irblocks.{k}": (v if isinstance(v, str) else json.dumps(v))
             for k, v in extra.items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(_tensors(model), str(tmp), metadata=meta)
    return path


def read_recipe(path: str | os.PathLike) -> dict:
    """The resolved recipe stored in an irblocks checkpoint (metadata ``irblocks.recipe``).

    A file that is not safetensors, metadata longer than the recipe loader's 1 MiB or not
    JSON, JSON nested deeper than :data:`MAX_RECIPE_DEPTH` or not a mapping: one
    :class:`CheckpointError` naming the file and the metadata key. Nothing is unpickled
    or evaluated.
    """
    path = as_path(path, "read_recipe")
    meta = _metadata(path)
    if RECIPE_KEY not in meta:
        raise CheckpointError(f"{path}: safetensors file without an irblocks recipe in its "
                              "metadata (convert official checkpoints with `irblocks convert`)")
    bad = f"{path}: metadata {RECIPE_KEY!r}"
    from irblocks.registry.recipe import MAX_RECIPE_BYTES
    if len(meta[RECIPE_KEY]) > MAX_RECIPE_BYTES:
        raise CheckpointError(f"{bad} is {len(meta[RECIPE_KEY])} characters; recipes are at most "
                              f"{MAX_RECIPE_BYTES} (refused unread)")
    try:
        rec = json.loads(meta[RECIPE_KEY])
    except RecursionError:
        raise CheckpointError(f"{bad}: JSON nested deeper than {MAX_RECIPE_DEPTH} levels; "
                              "refused") from None
    except ValueError as e:
        raise CheckpointError(f"{bad} is not valid JSON ({_reason(e)})") from None
    if not isinstance(rec, dict):
        raise CheckpointError(f"{bad}: expected a JSON object (the recipe), "
                              f"got {type(rec).__name__}")
    if not _depth_ok(rec, MAX_RECIPE_DEPTH):
        raise CheckpointError(f"{bad}: JSON nested deeper than {MAX_RECIPE_DEPTH} levels; refused")
    return rec


def _shapes(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors (shapes from the header; no data read)."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), "pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except Exception as e:  # noqa: BLE001
        raise _safetensors_error(path, e) from None


def _build(rec: dict, path: Path) -> nn.Module:
    from irblocks.api import create_model
    from irblocks.registry import ConfigError, RegistryError
    from irblocks.registry.recipe import RecipeError
    try:
        return create_model(rec)
    except RecipeError as e:
        msgs = "; ".join(f"{p.path or '<recipe>'}: {p.message}" for p in e.problems[:3])
        more = f" (+{len(e.problems) - 3} more)" if len(e.problems) > 3 else ""
        raise CheckpointError(f"{path}: metadata {RECIPE_KEY!r} is not a valid recipe: "
                              f"{msgs}{more}") from None
    except (RegistryError, ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: metadata {RECIPE_KEY!r} does not build: "
                              f"{' '.join(str(e).split())[:300]}") from None


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's recipe and load its weights (strict).

    Every problem is one :class:`CheckpointError` naming the file: not safetensors, a bad
    embedded recipe (named by its metadata key), missing/unexpected tensors, and every
    tensor whose shape differs (all listed, with both shapes). The recipe's model is
    first built on the ``meta`` device and checked against the file's header, so a
    recipe asking for a model larger than the file holds never allocates it. (A model
    whose constructor needs real tensors, e.g. a prior that loads its backend's weights
    from a local path, cannot be built on ``meta``; it is built directly and checked
    after.)
    """
    path = as_path(path, "irblocks.checkpoint.load")
    rec = read_recipe(path)
    try:
        with torch.device("meta"):
            skeleton = _build(rec, path)
    except Exception:  # noqa: BLE001  (a constructor that needs real tensors: built for real below)
        skeleton = None
    if skeleton is not None:
        check_state_dict(skeleton.state_dict(), _shapes(path), str(path), CheckpointError)
        del skeleton
    model = _build(rec, path)
    sd = read_tensors(path, map_location)
    check_state_dict(model.state_dict(), sd, str(path), CheckpointError)
    model.load_state_dict(sd, strict=True)
    return model.to(map_location)


def check_state_dict(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor],
                     where: str,
                     error: type[Exception] = CheckpointError, hint: str = "",
                     label: str = "checkpoint") -> None:
    """One error (one line) listing missing/unexpected keys, else every shape mismatch.

    Used by :func:`load` and by :func:`irblocks.convert.load_mapped`.
    """
    missing, extra = [k for k in ours if k not in theirs], [k for k in theirs if k not in ours]
    if missing or extra:
        def show(keys):
            return f"{len(keys)} {keys[:3]}{'...' if len(keys) > 3 else ''}"
        raise error(f"{where}: state_dict mismatch: missing {show(missing)}, "
                    f"unexpected {show(extra)}{hint}")
    bad = [f"{k}: {label} shape {tuple(theirs[k].shape)} != ours {tuple(ours[k].shape)}"
           for k in ours if tuple(ours[k].shape) != tuple(theirs[k].shape)]
    if bad:
        shown = "; ".join(bad[:8]) + (f"; ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
        raise error(f"{where}: {len(bad)} tensor shape(s) differ: {shown}{hint}")
