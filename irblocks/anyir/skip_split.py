"""Skip-split: split the channels into two sub-latent paths, and merge them back.

AnyIR's Degradation Adaptation Block feeds the even channels ``x[:, 0::2]`` to
its attention path and the odd channels ``x[:, 1::2]`` to its gated path
("interleaved", as released). ``"contiguous"`` takes the first and second half
instead (for ablations). Both return views (no copies).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from irblocks.errors import check_feature
from irblocks.registry import Context, register

__all__ = ["SkipSplit", "skip_split", "skip_merge", "SPLIT_MODES"]

SPLIT_MODES = ("interleaved", "contiguous")


def _check_mode(mode: str, where: str) -> None:
    if mode not in SPLIT_MODES:
        raise ValueError(f"{where}: mode must be one of {SPLIT_MODES}, got {mode!r}")


def skip_split(x: torch.Tensor, mode: str = "interleaved") -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> two (B, C/2, H, W) views: even/odd channels ("interleaved") or
    first/second half ("contiguous"). C must be even."""
    _check_mode(mode, "skip_split")
    c = x.shape[1]
    if c % 2:
        raise ValueError(f"skip_split: needs an even channel count, got C={c}")
    if mode == "interleaved":
        return x[:, 0::2], x[:, 1::2]
    return x[:, : c // 2], x[:, c // 2:]


def skip_merge(a: torch.Tensor, b: torch.Tensor, mode: str = "interleaved") -> torch.Tensor:
    """Inverse of :func:`skip_split`: two (B, C/2, H, W) -> (B, C, H, W)."""
    _check_mode(mode, "skip_merge")
    if a.shape != b.shape:
        raise ValueError(f"skip_merge: both halves must have the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if mode == "contiguous":
        return torch.cat([a, b], dim=1)
    bsz, c, h, w = a.shape
    return torch.stack([a, b], dim=2).reshape(bsz, 2 * c, h, w)


@register("block", "skip_split", aliases=("channel_split",))
class SkipSplit(nn.Module):
    """Split channels into two halves; ``merge`` undoes it.

    Args:
        dim: channels C (context; must be even).
        mode: ``"interleaved"`` (even / odd channels, AnyIR as released) or
            ``"contiguous"`` (first / second half).

    Shapes: forward (B, C, H, W) -> ((B, C/2, H, W), (B, C/2, H, W)) views;
    merge(a, b) -> (B, C, H, W).
    """

    def __init__(self, dim: Context[int], mode: Literal["interleaved", "contiguous"] = "interleaved"):
        super().__init__()
        _check_mode(mode, "skip_split")
        if dim % 2:
            raise ValueError(f"skip_split: needs an even channel count, got dim={dim}")
        self.dim, self.mode = dim, mode

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_feature(x, self.dim, "skip_split input")
        return skip_split(x, self.mode)

    def merge(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return skip_merge(a, b, self.mode)

    def extra_repr(self) -> str:
        return f"{self.dim}, mode={self.mode}"
