"""Pre-norm transformer block with pluggable mixer and feed-forward (Restormer's block)."""
from __future__ import annotations

import torch
from torch import nn

from irblocks.guidance import Guidance, call
from irblocks.registry import BlockSpec, Context, build, register

__all__ = ["TransformerBlock"]


@register("block", "transformer_block", aliases=("restormer_block",))
class TransformerBlock(nn.Module):
    """x + mixer(norm1(x)), then x + ffn(norm2(x)).

    Args:
        dim, heads, level: context, passed on to the children that take them.
        mixer: token mixer spec (default ``mdta``; AnyIR: ``degradation_adaptation``).
        ffn: feed-forward spec (default ``gdfn``).
        norm: norm spec (default ``layernorm``; ``{type: layernorm, variant: bias_free}``).

    Shapes: (B, C, H, W) -> (B, C, H, W). Guided when its mixer or ffn is.
    """

    def __init__(self, dim: Context[int], heads: Context[int] = 1, level: Context[int] = 0,
                 mixer: BlockSpec = "mdta", ffn: BlockSpec = "gdfn", norm: BlockSpec = "layernorm"):
        super().__init__()
        ctx = dict(dim=dim, heads=heads, level=level)
        self.norm1 = build(norm, "block", **ctx)
        self.attn = build(mixer, "block", **ctx)
        self.norm2 = build(norm, "block", **ctx)
        self.ffn = build(ffn, "block", **ctx)
        self.guided = bool(getattr(self.attn, "guided", False)
                           or getattr(self.ffn, "guided", False))

    def forward(self, x: torch.Tensor, guidance: Guidance | None = None) -> torch.Tensor:
        x = x + call(self.attn, self.norm1(x), guidance)
        return x + call(self.ffn, self.norm2(x), guidance)
