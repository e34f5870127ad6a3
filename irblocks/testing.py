"""Test switches.

``dense_routing()``: inside this context, blocks that route (evaluate only some
of their parameters per input: MoE experts, top-K clusters) evaluate every
route with the same weights, so a gradient-coverage test reaches all of them.
Routed blocks ask :func:`dense_routing_enabled` in their forward.
"""
from __future__ import annotations

import contextlib

__all__ = ["dense_routing", "dense_routing_enabled"]

_DENSE = [False]


@contextlib.contextmanager
def dense_routing(enabled: bool = True):
    prev = _DENSE[0]
    _DENSE[0] = enabled
    try:
        yield
    finally:
        _DENSE[0] = prev


def dense_routing_enabled() -> bool:
    return _DENSE[0]
