"""Checkpoints: safetensors weights with the resolved recipe in the metadata.

``save(model, path)`` writes the state_dict (tensors only) and, as metadata,
``irblocks.recipe`` (JSON of the resolved recipe) and ``irblocks.version``.
``load(path)`` rebuilds the model from that recipe and loads the weights
strictly. Nothing is ever unpickled.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["save", "load", "read_recipe", "CheckpointError"]


class CheckpointError(ValueError):
    pass


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    out, seen = {}, {}
    for k, v in model.state_dict().items():
        t = v.detach().cpu().contiguous()
        key = (t.data_ptr(), t.dtype, tuple(t.shape)) if t.numel() else None
        if key is not None and key in seen:      # shared tensors: safetensors wants distinct storage
            t = t.clone()
        seen[key] = k
        out[k] = t
    return out


def save(model: nn.Module, path: str | os.PathLike, recipe: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model``'s weights + its resolved recipe (atomic: temp file, then rename)."""
    from safetensors.torch import save_file

    from irblocks.api import to_recipe
    import irblocks
    rec = recipe if recipe is not None else to_recipe(model)
    meta = {"irblocks.recipe": json.dumps(rec), "irblocks.version": irblocks.__version__,
            "format": "pt"}
    if extra:
        meta.update({f"irblocks.{k}": (v if isinstance(v, str) else json.dumps(v)) for k, v in extra.items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file(_tensors(model), tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_recipe(path: str | os.PathLike) -> dict:
    """The resolved recipe stored in an irblocks checkpoint."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        raise CheckpointError(f"{path}: not a safetensors file ({type(e).__name__}: {str(e)[:120]})") from None
    if "irblocks.recipe" not in meta:
        raise CheckpointError(f"{path}: safetensors file without an irblocks recipe in its metadata "
                              "(convert official checkpoints with `irblocks convert`)")
    return json.loads(meta["irblocks.recipe"])


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model from the checkpoint's recipe and load its weights (strict)."""
    from safetensors.torch import load_file

    from irblocks.api import create_model
    rec = read_recipe(path)
    model = create_model(rec)
    sd = load_file(str(path), device=str(map_location))
    ours = model.state_dict()
    missing, extra = [k for k in ours if k not in sd], [k for k in sd if k not in ours]
    if missing or extra:
        raise CheckpointError(f"{path}: weights do not match the stored recipe (missing {missing[:3]}, "
                              f"unexpected {extra[:3]})")
    model.load_state_dict(sd, strict=True)
    return model.to(map_location)
