"""Gated-Dconv Feed-Forward Network (Restormer's GDFN)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irblocks.registry import Context, register
from irblocks.kernels.gdfn_gate import gelu_gate

__all__ = ["GDFN"]


@register("block", "gdfn", aliases=("gated_dconv_ffn", "feedforward"))
class GDFN(nn.Module):
    """1x1 C -> 2h, depthwise 3x3 on 2h, gelu(x1) * x2, 1x1 h -> C; h = int(C * expansion).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    execution = "fast"

    def __init__(self, dim: Context[int], expansion: float = 2.66, bias: bool = False):
        super().__init__()
        if expansion <= 0:
            raise ValueError(f"gdfn: expansion must be > 0, got {expansion}")
        hidden = int(dim * expansion)
        if hidden < 1:
            raise ValueError(f"gdfn: int(dim * expansion) = int({dim} * {expansion}) leaves no hidden channels")
        self.hidden = hidden
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(self.project_in(x))
        if self.execution == "official":
            x1, x2 = x.chunk(2, dim=1)
            x = F.gelu(x1) * x2
        else:
            x = gelu_gate(x)
        return self.project_out(x)
