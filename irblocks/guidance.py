"""The guidance flow: one typed object per forward, filled by priors and producer blocks.

The U-Net restorer creates a :class:`Guidance` per forward. Priors fill it first
(``prior.quality``, ``prior.masks``...), producer blocks write named fields (a
stage prompt), consumer blocks read them; blocks that need nothing never see it.

A block takes part by setting the class attribute ``guided = True``; its forward
is then ``forward(x, guidance)``, and it reports the field names it writes and
reads with ``guidance_io() -> (produces, consumes)`` so a container can reject a
consumer with no producer before anything runs. Containers call children with
:func:`call`.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["Guidance", "GuidanceError", "GuidedBlock", "call", "check_wiring"]


class GuidanceError(ValueError):
    """A guidance field read before any producer wrote it, or a wiring error."""


class Guidance:
    """Named tensors that flow through one forward pass.

    Shapes are the producers' business; conventions used by the shipped blocks:
    ``prior.quality`` B x 256, ``prior.masks`` B x K x H x W, ``prior.degradation``
    and ``prior.content`` B x 512, ``prompt.<stage><level>`` B x D.
    """

    __slots__ = ("fields", "diagnostics")

    def __init__(self, fields: dict[str, torch.Tensor] | None = None, diagnostics: bool = False):
        self.fields: dict[str, torch.Tensor] = dict(fields or {})
        # opt-in diagnostics (routing posteriors, chosen experts...): None when off
        self.diagnostics: dict[str, object] | None = {} if diagnostics else None

    def put(self, key: str, value: torch.Tensor) -> None:
        self.fields[key] = value

    def get(self, key: str) -> torch.Tensor:
        try:
            return self.fields[key]
        except KeyError:
            have = ", ".join(sorted(self.fields)) or "nothing"
            raise GuidanceError(f"guidance field {key!r} was read before any producer wrote it "
                                f"(written so far: {have})") from None

    def __contains__(self, key: str) -> bool:
        return key in self.fields

    def record(self, key: str, value: object) -> None:
        """Store a diagnostic when diagnostics are on (no-op otherwise)."""
        if self.diagnostics is not None:
            self.diagnostics[key] = value


class GuidedBlock(nn.Module):
    """Base for blocks that read or write guidance fields."""

    guided = True

    def guidance_io(self) -> tuple[set[str], set[str]]:
        """(fields this block writes, fields it reads)."""
        return set(), set()


def call(module: nn.Module, x: torch.Tensor, guidance: Guidance | None):
    """Run a child: guided blocks get the guidance object, plain blocks only ``x``."""
    if getattr(module, "guided", False):
        if guidance is None:
            guidance = Guidance()
        return module(x, guidance)
    return module(x)


def check_wiring(modules_in_order: Iterable[nn.Module], provided: Iterable[str] = (),
                 where: str = "model") -> None:
    """Raise if a guided block reads a field that no earlier block (or prior) writes.

    ``modules_in_order`` is the execution order; nested guided blocks inside a
    non-guided container are found too.
    """
    have = set(provided)
    for top in modules_in_order:
        for name, m in top.named_modules():
            if not getattr(m, "guided", False) or not hasattr(m, "guidance_io"):
                continue
            produces, consumes = m.guidance_io()
            missing = sorted(set(consumes) - have)
            if missing:
                raise GuidanceError(f"{where}: {type(m).__name__} reads guidance {missing} but "
                                    "nothing before it writes it (available: "
                                    f"{sorted(have) or 'none'})")
            have |= set(produces)
