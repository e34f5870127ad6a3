"""GDFN gate: ``gelu(x1) * x2`` over the two channel halves of one tensor."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import select

__all__ = ["gelu_gate", "gelu_gate_reference"]


def gelu_gate_reference(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=1)
    return F.gelu(x1) * x2


def gelu_gate(x: torch.Tensor, impl: str | None = None) -> torch.Tensor:
    """x: (B, 2C, H, W) -> (B, C, H, W) = gelu(x[:, :C]) * x[:, C:] (exact erf GELU)."""
    select(impl, x)
    return gelu_gate_reference(x)
