"""Skip-split: split the channels into two sub-latent paths, and merge them back.

AnyIR's Degradation Adaptation Block feeds the even channels ``x[:, 0::2]`` to
its attention path and the odd channels ``x[:, 1::2]`` to its gated path
("interleaved", as released). ``"contiguous"`` takes the first and second half
instead (for ablations). Both return views (no copies); :func:`skip_split_dense` returns
dense copies (what the paths' convolutions and element-wise ops run fastest on) whose
backward writes the input gradient in one pass.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from irblocks.errors import check_feature
from irblocks.registry import Context, register

__all__ = ["SkipSplit", "skip_split", "skip_split_dense", "skip_merge", "SPLIT_MODES"]

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


class _DenseSplit(torch.autograd.Function):
    """skip_split + a dense copy of each half; backward = skip_merge of the two gradients
    (one write of the input gradient instead of two zero-filled slice gradients summed)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        fmt = _format(x)
        a, b = skip_split(x, mode)
        return a.contiguous(memory_format=fmt), b.contiguous(memory_format=fmt)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mode, ctx.fmt = inputs[1], _format(inputs[0])

    @staticmethod
    def backward(ctx, da: torch.Tensor | None, db: torch.Tensor | None):
        if da is None:
            da = torch.zeros_like(db)
        if db is None:
            db = torch.zeros_like(da)
        if ctx.mode == "interleaved" and ctx.fmt == torch.channels_last:
            # B H W C' views of the two gradients -> B H W C' 2 -> channels_last B C H W
            n, c, h, w = da.shape
            dx = torch.stack([da.permute(0, 2, 3, 1), db.permute(0, 2, 3, 1)], dim=-1)
            return dx.view(n, h, w, 2 * c).permute(0, 3, 1, 2), None
        return skip_merge(da, db, ctx.mode).contiguous(memory_format=ctx.fmt), None


def _format(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def skip_split_dense(x: torch.Tensor,
                     mode: str = "interleaved") -> tuple[torch.Tensor, torch.Tensor]:
    """Like :func:`skip_split` but returns dense copies in x's memory format (channels_last
    in, channels_last out); the input gradient is written in one pass."""
    _check_mode(mode, "skip_split")
    if x.shape[1] % 2:
        raise ValueError(f"skip_split: needs an even channel count, got C={x.shape[1]}")
    if not torch.is_grad_enabled() or not x.requires_grad:
        fmt = _format(x)
        return tuple(t.contiguous(memory_format=fmt) for t in skip_split(x, mode))
    return _DenseSplit.apply(x, mode)


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

    def __init__(self, dim: Context[int],
                 mode: Literal["interleaved", "contiguous"] = "interleaved"):
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
