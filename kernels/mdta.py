"""MDTA channel attention core: L2-normalise q, k over H*W, q k^T * temperature, softmax, @ v."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import select

__all__ = ["channel_attention", "channel_attention_reference"]


def channel_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                temperature: torch.Tensor, heads: int) -> torch.Tensor:
    b, c, h, w = q.shape
    d = c // heads

    def split(t):  # B, heads, d, HW (a view for NCHW; strided for channels_last)
        return t.reshape(b, heads, d, h * w) if t.is_contiguous() else \
            t.permute(0, 2, 3, 1).reshape(b, h * w, heads, d).permute(0, 2, 3, 1)

    qh, kh, vh = split(q), split(k), split(v)
    qh = F.normalize(qh, dim=-1)
    kh = F.normalize(kh, dim=-1)
    attn = (qh @ kh.transpose(-2, -1)) * temperature.view(1, heads, 1, 1)
    attn = attn.softmax(dim=-1)
    out = attn @ vh                                   # B, heads, d, HW
    if q.is_contiguous():
        return out.reshape(b, c, h, w)
    return out.permute(0, 3, 1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)


def channel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, temperature: torch.Tensor,
                      heads: int, impl: str | None = None) -> torch.Tensor:
    """q, k, v: (B, C, H, W); temperature: (heads,) or (heads,1,1) -> (B, C, H, W)."""
    select(impl, q, k, v)
    return channel_attention_reference(q, k, v, temperature.reshape(-1), heads)
