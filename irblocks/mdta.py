"""Multi-Dconv head Transposed Attention (Restormer's MDTA): attention across channels."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irblocks.conv import depthwise3x3_sumsq, depthwise_conv2d, pointwise_conv2d
from irblocks.kernels.mdta import channel_attention_packed, packs, packs_with_sumsq
from irblocks.registry import Context, register

__all__ = ["MDTA"]


@register("block", "mdta", aliases=("channel_attention", "transposed_attention"))
class MDTA(nn.Module):
    """1x1 C -> 3C, depthwise 3x3, split q k v; per head L2-normalise q, k over H*W,
    softmax(q k^T * temperature) v; optional 1x1 projection C -> C.

    Args:
        dim: channels C (context); heads: attention heads (context; must divide C).
        bias: conv biases. project: keep the output projection (AnyIR's attention
            path drops it).

    Shapes: (B, C, H, W) -> (B, C, H, W). Cost is linear in H*W.
    """

    execution = "fast"

    def __init__(self, dim: Context[int], heads: Context[int] = 1, bias: bool = False,
                 project: bool = True):
        super().__init__()
        if heads < 1 or dim % heads:
            raise ValueError(f"mdta: heads={heads} must divide dim={dim}")
        self.dim, self.heads = dim, heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias) if project else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.execution == "official":
            q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
            b, c, h, w = q.shape
            q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
            out = (attn @ v).reshape(b, c, h, w)
        else:
            qkv = pointwise_conv2d(x, self.qkv.weight, self.qkv.bias)
            dw, po = self.qkv_dwconv, self.project_out
            sumsq = None
            if packs_with_sumsq(qkv, self.temperature, self.heads):
                # q and k's sums of squares from the depthwise 3x3 that writes them (asked of
                # the 1x1's output: the 3x3's has its shape and layout; either answer is correct)
                qkv, sumsq = depthwise3x3_sumsq(qkv, dw.weight, dw.bias, 2 * self.dim)
            else:
                qkv = depthwise_conv2d(qkv, dw.weight, dw.bias)
            if po is not None and packs(qkv, self.temperature, self.heads):
                # training on CPU: project_out folded into the attention (one N-sized matmul
                # instead of two forward, two instead of four backward: _PackedAttention)
                return channel_attention_packed(qkv, self.temperature, self.heads,
                                                project_weight=po.weight, project_bias=po.bias,
                                                sumsq=sumsq)
            out = channel_attention_packed(qkv, self.temperature, self.heads, sumsq=sumsq)
            return pointwise_conv2d(out, po.weight, po.bias) if po is not None else out
        return self.project_out(out) if self.project_out is not None else out
