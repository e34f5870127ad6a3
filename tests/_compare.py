"""The one relative-error figure the tests state their tolerances in, and which autograd path
a result took."""
from __future__ import annotations

import torch


def rel_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """max |actual - reference| / max |reference|; the absolute difference when the reference
    is all zeros (a gradient that is exactly 0, say)."""
    diff = (actual - reference).abs().max().item()
    scale = reference.abs().max().item()
    return diff / scale if scale > 0 else diff


def assert_rel_close(names: list[str], actual: list[torch.Tensor], reference: list[torch.Tensor],
                     tolerance: float | dict[str, float]) -> None:
    """rel_error(actual[i], reference[i]) < tolerance (or tolerance[names[i]]) for every i; the
    failure names the tensor, the error and the bound."""
    assert len(names) == len(actual) == len(reference), (names, len(actual), len(reference))
    for name, a, r in zip(names, actual, reference):
        bound = tolerance[name] if isinstance(tolerance, dict) else tolerance
        err = rel_error(a, r)
        assert err < bound, f"{name}: relative error {err:.2e}, bound {bound:.0e}"


def graph_node_names(t: torch.Tensor) -> set[str]:
    """The class names of every autograd node behind ``t`` (which path a function took)."""
    seen, todo = set(), [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(n for n, _ in node.next_functions)
    return {type(node).__name__ for node in seen}
