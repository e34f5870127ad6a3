"""Auxiliary losses: blocks record them during forward, training loops collect them.

A block calls ``record_aux_loss(self, "balance", value)`` in its forward; after
the forward, ``irblocks.aux_losses(model)`` returns every recorded value keyed
by ``"<module path>.<name>"`` and ``irblocks.total_aux_loss(model)`` their sum.
Values are replaced on every forward (no accumulation across steps).
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["record_aux_loss", "aux_losses", "total_aux_loss", "clear_aux_losses"]

_ATTR = "_irblocks_aux"


def record_aux_loss(module: nn.Module, name: str, value: torch.Tensor) -> None:
    store = module.__dict__.get(_ATTR)
    if store is None:
        store = {}
        object.__setattr__(module, _ATTR, store)
    store[name] = value


def aux_losses(model: nn.Module) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for path, m in model.named_modules():
        store = m.__dict__.get(_ATTR)
        if store:
            for name, v in store.items():
                out[f"{path}.{name}" if path else name] = v
    return out


def total_aux_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the recorded auxiliary losses (float32 scalar); a zero tensor on the model's
    device when nothing was recorded, so ``loss = l1 + total_aux_loss(model)`` works for
    every model."""
    vals = list(aux_losses(model).values())
    if vals:
        return torch.stack([v.float() for v in vals]).sum()
    first = next(model.parameters(), None)
    if first is None:
        first = next(model.buffers(), None)
    return torch.zeros((), device=first.device if first is not None else "cpu")


def clear_aux_losses(model: nn.Module) -> None:
    for m in model.modules():
        if _ATTR in m.__dict__:
            m.__dict__[_ATTR].clear()
