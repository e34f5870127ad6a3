"""PromptIR's prompt generation block (PGB) and prompt interaction."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from irblocks.registry import BlockSpec, Context, build, register

__all__ = ["PromptGenBlock", "PromptInteraction"]


@register("block", "prompt_gen", aliases=("prompt_generation_block", "pgb"))
class PromptGenBlock(nn.Module):
    """Prompt generation: softmax(Linear(GAP(x))) weights over a learnable bank of
    ``length`` prompts (prompt_dim x size x size, init U[0,1)); weighted sum
    (einsum, no per-batch copy of the bank); bilinear resize to H x W; conv3x3.

    Args:
        dim: channels of the feature the weights are read from (context).
        prompt_dim, length, size: the bank.

    Shapes: (B, dim, H, W) -> (B, prompt_dim, H, W).
    """

    def __init__(self, dim: Context[int], prompt_dim: Annotated[int, Ge(1)] = 64,
                 length: Annotated[int, Ge(1)] = 5, size: Annotated[int, Ge(1)] = 64):
        super().__init__()
        self.prompt = nn.Parameter(torch.rand(length, prompt_dim, size, size))
        self.linear = nn.Linear(dim, length)
        self.conv = nn.Conv2d(prompt_dim, prompt_dim, 3, padding=1, bias=False)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, dim, H, W) -> (B, length) softmax weights."""
        return F.softmax(self.linear(x.mean(dim=(-2, -1))), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        p = torch.einsum("bn,nchw->bchw", w, self.prompt)
        p = F.interpolate(p, x.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(p.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) else p)


@register("block", "prompt_interaction", aliases=("prompt_block",))
class PromptInteraction(nn.Module):
    """PromptIR's prompt block: concat(x, PGB(x)) -> one transformer block at the
    concatenated width -> 1x1 to ``out_dim``.

    Args:
        dim: feature channels (context); out_dim: output channels (context;
            defaults to dim; the latent prompt reduces 8d -> 4d).
        prompt_dim, length, size: the PGB bank. heads: heads of the inner block
            (PromptIR: 4). block: the inner block spec (default a transformer block).
        bias: bias of the 1x1.

    Shapes: (B, dim, H, W) -> (B, out_dim, H, W).
    """

    def __init__(self, dim: Context[int], out_dim: Context[int] = 0, prompt_dim: int = 64,
                 length: int = 5, size: int = 64, heads: int = 4,
                 block: BlockSpec = "transformer_block", bias: bool = False):
        super().__init__()
        out_dim = out_dim or dim
        width = dim + prompt_dim
        if width % heads:
            raise ValueError(f"prompt_interaction: heads={heads} must divide dim + prompt_dim = "
                             f"{width}")
        self.gen = PromptGenBlock(dim, prompt_dim=prompt_dim, length=length, size=size)
        self.block = build(block, "block", dim=width, heads=heads)
        self.reduce = nn.Conv2d(width, out_dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.block(torch.cat([x, self.gen(x)], dim=1)))
