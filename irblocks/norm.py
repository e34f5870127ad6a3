"""Channel LayerNorm (Restormer's "WithBias" and "BiasFree" variants, ClearAIR's "centered")."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from irblocks.kernels.layernorm import channel_layer_norm
from irblocks.registry import Context, register

__all__ = ["ChannelLayerNorm"]


@register("block", "layernorm", aliases=("channel_layernorm", "layer_norm"))
class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of each pixel.

    Args:
        dim: channels C (context).
        variant: ``"with_bias"`` -> (x - mean) / sqrt(var + eps) * w + b;
            ``"bias_free"`` -> x / sqrt(var + eps) * w (variance around the mean,
            mean not subtracted, no bias), as in Restormer;
            ``"centered"`` -> (x - mean) / sqrt(var + eps) * w (mean subtracted, no
            bias): the LayerNorm of ClearAIR's scaffold (House-yuyu/ClearAIR), used
            there with eps 1e-6 (``recipes/clearair.yaml``).
        eps: 1e-5 as in Restormer.

    Shapes: (B, C, H, W) -> (B, C, H, W); fastest on channels_last input.
    """

    execution = "fast"

    def __init__(self, dim: Context[int],
                 variant: Literal["with_bias", "bias_free", "centered"] = "with_bias",
                 eps: float = 1e-5):
        super().__init__()
        self.dim, self.variant, self.eps = dim, variant, eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if variant == "with_bias" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.execution == "official":   # Restormer: b c h w -> b (h w) c, mean/var, back
            b, c, h, w = x.shape
            t = x.flatten(2).transpose(1, 2).contiguous()
            var = t.var(-1, keepdim=True, unbiased=False)
            if self.variant == "bias_free":
                t = t / torch.sqrt(var + self.eps) * self.weight
            else:
                t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(var + self.eps) * self.weight
                t = t if self.bias is None else t + self.bias
            return t.transpose(1, 2).reshape(b, c, h, w)
        return channel_layer_norm(x, self.weight, self.bias, self.eps,
                                  center=self.variant != "bias_free")

    def extra_repr(self) -> str:
        return f"{self.dim}, variant={self.variant}, eps={self.eps}"
