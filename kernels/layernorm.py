"""Channel LayerNorm over dim 1 of a B x C x H x W tensor (WithBias and BiasFree).

Reference: ``F.layer_norm`` on the channels-last view (a view, no copy, when the
input is channels_last). BiasFree (``bias is None``): ``x / sqrt(var + eps) * w``
with the variance taken around the mean but the mean NOT subtracted.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import select

__all__ = ["channel_layer_norm", "channel_layer_norm_reference"]


def channel_layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                 eps: float = 1e-5) -> torch.Tensor:
    xl = x.permute(0, 2, 3, 1)                         # B H W C (a view)
    if bias is not None:
        y = F.layer_norm(xl, (xl.shape[-1],), weight, bias, eps)
    else:
        var = xl.var(-1, keepdim=True, unbiased=False)
        y = xl * torch.rsqrt(var + eps) * weight
    return y.permute(0, 3, 1, 2)


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       eps: float = 1e-5, impl: str | None = None) -> torch.Tensor:
    """LayerNorm over channels. x: (B, C, H, W) any strides -> (B, C, H, W)."""
    select(impl, x)  # the Triton path lands with the kernels issue
    return channel_layer_norm_reference(x, weight, bias, eps)
