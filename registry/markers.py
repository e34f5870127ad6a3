"""Annotation markers that drive recipes.

* ``Context[int]`` marks a parameter the *container* supplies (``dim``,
  ``level``, ``heads``...). A recipe that sets it gets an error.
* ``BlockSpec`` / ``LossSpec`` / ``PriorSpec`` (see :func:`Spec`) mark a
  nested component: a registered name, a ``{type: name, ...}`` mapping, or
  (from Python) a callable or ``functools.partial`` that builds the module
  when called with the context. ``BlockMap`` / ``PriorMap`` (:func:`SpecMap`)
  mark a ``{name: component spec}`` mapping.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Callable

__all__ = ["KINDS", "Context", "Spec", "SpecMap", "BlockSpec", "LossSpec", "PriorSpec", "BlockMap",
           "PriorMap", "strip"]

KINDS = ("block", "model", "kernel", "loss", "prior", "degradation")


class _ContextMarker:
    def __repr__(self) -> str:
        return "Context"


_CONTEXT = _ContextMarker()


class Context:
    """``Context[int]``: a parameter the container supplies; recipes must not set it."""

    def __class_getitem__(cls, tp):
        return typing.Annotated[tp, _CONTEXT]


@dataclasses.dataclass(frozen=True)
class _ComponentMarker:
    kind: str
    mapping: bool = False     # a name -> spec mapping (priors, shared modules)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")


def Spec(kind: str):
    """Annotation of a nested-component parameter of the given kind."""
    _check_kind(kind)
    return typing.Annotated[typing.Union[str, dict, list, Callable, None], _ComponentMarker(kind)]


def SpecMap(kind: str):
    """Annotation of a ``{name: component spec}`` mapping parameter (e.g. priors)."""
    _check_kind(kind)
    return typing.Annotated[typing.Optional[dict], _ComponentMarker(kind, mapping=True)]


BlockSpec = Spec("block")
LossSpec = Spec("loss")
PriorSpec = Spec("prior")
BlockMap = SpecMap("block")
PriorMap = SpecMap("prior")


def strip(annotation) -> tuple[typing.Any, bool, str | None, bool]:
    """Split an annotation into (bare type, is_context, component_kind, is_mapping)."""
    context, component, mapping = False, None, False
    if typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        other = []                                  # ranges (annotated_types.Gt(0), ...) stay
        for meta in args[1:]:
            if meta is _CONTEXT:
                context = True
            elif isinstance(meta, _ComponentMarker):
                component, mapping = meta.kind, meta.mapping
            else:
                other.append(meta)
        annotation = typing.Annotated[(args[0], *other)] if other else args[0]
    return annotation, context, component, mapping
