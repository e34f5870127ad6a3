"""The one relative-error figure the tests state their tolerances in."""
from __future__ import annotations

import torch


def rel_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    """max |actual - reference| / max |reference|; the absolute difference when the reference
    is all zeros (a gradient that is exactly 0, say)."""
    diff = (actual - reference).abs().max().item()
    scale = reference.abs().max().item()
    return diff / scale if scale > 0 else diff
