"""Gated Degradation Adaptation (AnyIR, Algorithm 1), with the released code's channel
arithmetic."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from irblocks.conv import depthwise_conv2d, pointwise_conv2d
from irblocks.errors import InputError, check_feature
from irblocks.kernels.gated_da_stats import gated_da_modulate, gated_da_modulate_naive
from irblocks.norm import ChannelLayerNorm
from irblocks.registry import Context, register

__all__ = ["GatedDegradationAdaptation", "GatedDegradationAdaption", "gated_da_channels"]


def gated_da_channels(dim: int, expansion: float) -> tuple[int, int, int]:
    """(gamma, beta, alpha) channel counts: hidden = round(expansion * dim), gamma = beta = dim,
    alpha = hidden - 2 dim (released code: 8/3 -> alpha ~ 2 dim / 3)."""
    hidden = int(round(expansion * dim))
    return dim, dim, hidden - 2 * dim


@register("block", "gated_da",
          aliases=("gated_degradation_adaptation", "gated_degradation_adaption"))
class GatedDegradationAdaptation(nn.Module):
    """F_hat = Norm(x); mu, sigma = spatial mean / sqrt(var + eps) of F_hat per channel;
    tau_adj = tau * sigmoid(mu + sigma); gamma, beta, alpha = split(W_exp F_hat);
    alpha' = dwconv(alpha) * (1 + tau_adj tiled along channels); gated = sigmoid(gamma) *
    W_gate(concat(beta, alpha')); out = W_proj(gated + x).

    Args:
        dim: channels C (context).
        expansion: W_exp widens C -> round(expansion * C) = gamma (C) + beta (C) + alpha (rest);
            must leave at least one alpha channel (released: 8/3).
        kernel_size: depthwise kernel on alpha (odd; released: 7).
        norm: ``"batch"`` (BatchNorm2d, as released: behaviour depends on the batch in
            training), ``"layer"`` (channel LayerNorm) or ``"group"`` (GroupNorm with
            ``norm_groups`` groups) for batch-size-independent behaviour. Paper and code
            disagree here: the paper's text says the block starts with
            "a layer normalization"; the released code (Amazingren/AnyIR, commit 098dcd1,
            net/anyir.py) uses BatchNorm2d, and its weights fit that. The default follows
            the code; ``norm="layer"`` is the paper's wording.
        norm_groups: groups of ``norm="group"`` (must divide C).
        bias: biases of the four convolutions (released: False).
        eps: inside the sqrt of the std (1e-6).

    Shapes: (B, C, H, W) -> (B, C, H, W), any H x W. With ``norm="batch"`` in train mode
    B x H x W must exceed 1.
    """

    execution = "fast"

    def __init__(self, dim: Context[int], expansion: float = 8 / 3, kernel_size: int = 7,
                 norm: Literal["batch", "layer", "group"] = "batch", norm_groups: int = 1,
                 bias: bool = False, eps: float = 1e-6):
        super().__init__()
        gamma, beta, alpha = gated_da_channels(dim, expansion)
        if alpha < 1:
            raise ValueError(f"gated_da: expansion={expansion:g} with dim={dim} gives "
                             f"round({expansion:g} * {dim}) = {gamma + beta + alpha} expanded "
                             f"channels, leaving {alpha} alpha channels after gamma ({dim}) and "
                             f"beta ({dim}); use expansion >= 2 + 1/{dim} (released: 8/3)")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError("gated_da: kernel_size must be a positive odd number, got "
                             f"{kernel_size}")
        if norm == "group" and (norm_groups < 1 or dim % norm_groups):
            raise ValueError(f"gated_da: norm_groups={norm_groups} must divide dim={dim}")
        if norm not in ("batch", "layer", "group"):
            raise ValueError(f"gated_da: norm must be 'batch', 'layer' or 'group', got {norm!r}")
        self.dim, self.eps, self.norm_kind = dim, eps, norm
        self.splits = (gamma, beta, alpha)
        if norm == "batch":
            self.norm = nn.BatchNorm2d(dim)
        elif norm == "layer":
            self.norm = ChannelLayerNorm(dim)
        else:
            self.norm = nn.GroupNorm(norm_groups, dim)
        self.w_exp = nn.Conv2d(dim, gamma + beta + alpha, 1, bias=bias)
        self.w_depth = nn.Conv2d(alpha, alpha, kernel_size, padding=kernel_size // 2, groups=alpha,
                                 bias=bias)
        self.w_gate = nn.Conv2d(beta + alpha, dim, 1, bias=bias)
        self.w_proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.tau = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature(x, self.dim, "gated_da input")
        b, _, h, w = x.shape
        if self.training and self.norm_kind == "batch" and b * h * w <= 1:
            raise InputError("gated_da: BatchNorm in train mode needs more than one value per "
                             f"channel, got B x H x W = {b} x {h} x {w} (in a U-Net the latent is "
                             "H/8 x W/8: train with inputs of at least 16x16, a batch > 1, or "
                             "norm='layer'/'group')")
        f = self.norm(x)
        if self.execution == "official":
            gamma, beta, alpha = self.w_exp(f).split(self.splits, dim=1)
            alpha = gated_da_modulate_naive(f, self.w_depth(alpha), self.tau, self.eps)
            gated = self.w_gate(torch.cat([beta, alpha], dim=1))
            return self.w_proj(torch.sigmoid(gamma) * gated + x)
        # W_exp as three 1x1 convs over row blocks of its weight: same MACs, but gamma, beta and
        # alpha come out dense (channel slices of a channels_last tensor make every later
        # element-wise op several times slower on CPU)
        w, bias = self.w_exp.weight, self.w_exp.bias
        ends = (self.splits[0], self.splits[0] + self.splits[1], w.shape[0])
        gamma, beta, alpha = (pointwise_conv2d(f, w[s:e], None if bias is None else bias[s:e])
                              for s, e in zip((0,) + ends[:2], ends))
        alpha = gated_da_modulate(f,
                                  depthwise_conv2d(alpha, self.w_depth.weight, self.w_depth.bias),
                                  self.tau, self.eps)
        wg, wp = self.w_gate, self.w_proj
        gated = torch.addcmul(x, torch.sigmoid(gamma),
                              pointwise_conv2d(torch.cat([beta, alpha], dim=1), wg.weight, wg.bias))
        return pointwise_conv2d(gated, wp.weight, wp.bias)

    def extra_repr(self) -> str:
        g, b, a = self.splits
        return f"{self.dim}, gamma={g}, beta={b}, alpha={a}, norm={self.norm_kind}, eps={self.eps}"


GatedDegradationAdaption = GatedDegradationAdaptation   # the paper's spelling
