"""ClusIR's Frequency Self-Mining Block (FSB): a content-adaptive k x k low-pass filter."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irblocks.errors import check_feature
from irblocks.kernels.fsb_filter import fsb_filter
from irblocks.registry import Context, register

__all__ = ["FrequencySelfMining"]


@register("block", "fsb", aliases=("frequency_self_mining",))
class FrequencySelfMining(nn.Module):
    """Dynamic low-pass: GAP -> Linear -> per-sample, per-channel-group k x k weights
    (softmax over the k*k taps: non-negative, sum 1), applied to each pixel's
    k x k neighbourhood with reflect padding at the borders (the
    ``irblocks.kernels.fsb_filter`` kernel; no unfold). Low part L = filtered x,
    high part = x - L (the residual). A constant input passes unchanged into L.

    Choices (the paper gives neither): kernel_size 3, groups 4 (channel groups
    sharing one filter; must divide dim).

    ``forward(x)`` returns L; ``decompose(x)`` returns (L, x - L);
    ``filter_weights(x)`` the (B, groups, k, k) weights.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: Context[int], kernel_size: int = 3, groups: int = 4, bias: bool = True):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"fsb: kernel_size must be odd and >= 1, got {kernel_size}")
        if groups < 1 or dim % groups:
            raise ValueError(f"fsb: groups={groups} must divide dim={dim}")
        self.dim, self.kernel_size, self.groups = dim, kernel_size, groups
        self.weight_proj = nn.Linear(dim, groups * kernel_size * kernel_size, bias=bias)

    def _weights(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.weight_proj(x.mean(dim=(-2, -1)))
        return F.softmax(logits.view(x.shape[0], self.groups, -1).float(), dim=-1)

    def filter_weights(self, x: torch.Tensor) -> torch.Tensor:
        return self._weights(x).view(x.shape[0], self.groups, self.kernel_size, self.kernel_size)

    def decompose(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_feature(x, self.dim, "fsb input")
        low = fsb_filter(x, self._weights(x).to(x.dtype), self.kernel_size)
        return low, x - low

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decompose(x)[0]

    def extra_repr(self) -> str:
        return f"{self.dim}, kernel_size={self.kernel_size}, groups={self.groups}"
