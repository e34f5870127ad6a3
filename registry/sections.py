"""Top-level recipe sections beside ``model``, registered by the packages that read them.

The registry knows only ``recipe``, ``description``, ``extends`` and ``model``. Whoever
reads another section registers its validator here (``irblocks.losses`` the ``loss``
list, ``irblocks.train.config`` ``optimizer``, ``schedule``, ``train`` and ``eval``), so
``irblocks check``, ``create_model`` and ``irblocks train`` run the same check, and the
registry never imports the trainer.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from .plugins import ensure_loaded

__all__ = ["Section", "register_section", "sections"]


@dataclasses.dataclass(frozen=True)
class Section:
    name: str
    check: Callable[[Any], list[tuple[str, str]]]   # section value -> [(path, one-line message)]
    json_schema: Callable[[], dict]                 # JSON Schema of the section (irblocks schema)
    doc: str = ""


_SECTIONS: dict[str, Section] = {}


def register_section(name: str, check: Callable[[Any], list[tuple[str, str]]],
                     json_schema: Callable[[], dict], doc: str = "") -> None:
    """Register the validator of top-level recipe key ``name`` (re-registering replaces it)."""
    _SECTIONS[name] = Section(name, check, json_schema, doc)


def sections() -> dict[str, Section]:
    """Every registered section (built-in files loaded first)."""
    ensure_loaded()
    return dict(_SECTIONS)
