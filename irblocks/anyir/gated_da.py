"""Gated Degradation Adaptation (AnyIR, Algorithm 1), with the released code's channel
arithmetic."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from irblocks.conv import depthwise_conv2d, pointwise_conv2d
from irblocks.errors import InputError, check_feature
from irblocks.kernels._dispatch import select
from irblocks.kernels.gated_da_stats import (
    gated_da_modulate,
    gated_da_modulate_naive,
    sample_moments,
    tau_gate,
)
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

    Execution (``irblocks.set_execution``): with ``norm="batch"``, a channels_last CPU
    input and the reference kernels (the Triton path keeps its fused statistics kernel),
    ``"fast"`` folds the BatchNorm, W_exp's beta rows and the tau gate into the
    weights (:meth:`_forward_folded`: same values and gradients, fewer passes over memory);
    otherwise the three parts of W_exp run as dense 1x1s. ``"official"`` runs the released
    code's sequence.
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
        if (self.execution == "fast" and self.norm_kind == "batch" and x.device.type == "cpu"
                and x.is_contiguous(memory_format=torch.channels_last)
                and not torch.is_autocast_enabled("cpu") and select(None, x) == "reference"):
            return self._forward_folded(x)
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

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor:
        """The same function with BatchNorm, W_exp's beta rows and the tau gate folded into
        the weights (CPU execution; values equal to float rounding, gradients included).

        BatchNorm is affine per channel, F_hat = s x + t (s = weight / sqrt(var + eps),
        t = bias - mean s), so every 1x1 on F_hat is a 1x1 on x with weight W diag(s) and
        bias W t, and the spatial statistics of F_hat follow from those of x (mu_hat = s mu + t,
        var_hat = s^2 var). W_gate(concat(beta, alpha')) = (W_gate_beta W_beta) F_hat +
        W_gate_alpha alpha', and alpha' = alpha_d (1 + tau_adj) scales alpha_d's channels per
        sample, so that scale moves into a per-sample weight (one batched matmul). Nothing of
        F_hat, beta, alpha' or concat(beta, alpha') is written; the batch statistics come from
        the per-sample ones (exact pooling of equal-size groups). Running statistics are
        updated as ``nn.BatchNorm2d`` does. (B, C, H, W) -> (B, C, H, W).
        """
        b, c, h, w = x.shape
        n = h * w
        gamma_ch, beta_ch, alpha_ch = self.splits
        xs = x.permute(0, 2, 3, 1).reshape(b, n, c)            # a view for channels_last x
        mean, var = sample_moments(xs, dim=1)                   # (B, C) each, population var
        scale, shift = _batchnorm_affine(self.norm, mean, var, n)
        w_exp = self.w_exp.weight.flatten(1)
        w_gamma, w_beta = w_exp[:gamma_ch], w_exp[gamma_ch:gamma_ch + beta_ch]
        w_alpha = w_exp[gamma_ch + beta_ch:]
        w_gate = self.w_gate.weight.flatten(1)
        w_gate_beta, w_gate_alpha = w_gate[:, :beta_ch], w_gate[:, beta_ch:]
        b_exp = self.w_exp.bias
        # gamma, and the beta part of W_gate, as two matmuls on x: two dense outputs (one matmul
        # and a split left both strided, and sigmoid, addcmul and the split's backward ran
        # several times slower on them: whole AnyIR step 1.5% slower)
        w_gate_beta_exp = w_gate_beta @ w_beta
        b_gamma = w_gamma @ shift
        b_gate_beta = w_gate_beta_exp @ shift
        if b_exp is not None:
            b_gamma = b_gamma + b_exp[:gamma_ch]
            b_gate_beta = b_gate_beta + w_gate_beta @ b_exp[gamma_ch:gamma_ch + beta_ch]
        if self.w_gate.bias is not None:
            b_gate_beta = b_gate_beta + self.w_gate.bias
        gamma = F.linear(xs, w_gamma * scale, b_gamma)                  # (B, N, C)
        gate_beta = F.linear(xs, w_gate_beta_exp * scale, b_gate_beta)  # (B, N, C)
        b_alpha = w_alpha @ shift
        if b_exp is not None:
            b_alpha = b_alpha + b_exp[gamma_ch + beta_ch:]
        alpha = F.linear(xs, w_alpha * scale, b_alpha)        # (B, N, A)
        alpha = depthwise_conv2d(alpha.view(b, h, w, alpha_ch).permute(0, 3, 1, 2),
                                 self.w_depth.weight, self.w_depth.bias)
        # tau_adj from the statistics of F_hat, tiled along the alpha channels (released code)
        tau_adj = tau_gate(mean * scale + shift, var * scale.square(), self.tau, alpha_ch,
                           self.eps)
        w_sample = (w_gate_alpha * (1.0 + tau_adj).unsqueeze(1)).transpose(1, 2)  # (B, A, C)
        gated = torch.baddbmm(gate_beta, alpha.permute(0, 2, 3, 1).reshape(b, n, alpha_ch),
                              w_sample)
        z = torch.addcmul(xs, torch.sigmoid(gamma), gated)
        out = F.linear(z, self.w_proj.weight.flatten(1), self.w_proj.bias)
        return out.view(b, h, w, c).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        g, b, a = self.splits
        return f"{self.dim}, gamma={g}, beta={b}, alpha={a}, norm={self.norm_kind}, eps={self.eps}"


GatedDegradationAdaption = GatedDegradationAdaptation   # the paper's spelling


def _batchnorm_affine(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor,
                      count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchNorm2d as a per-channel affine map (scale, shift), from per-sample statistics
    mean, var (B, C) over ``count`` values each; updates the running statistics exactly as
    ``nn.BatchNorm2d.forward`` does (momentum, cumulative average when momentum is None,
    unbiased variance)."""
    use_batch = bn.training or bn.running_mean is None
    if use_batch:
        batch_mean = mean.mean(0)
        batch_var = (var + (mean - batch_mean).square()).mean(0)     # pooled, population
        if bn.training and bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                          else bn.momentum)
                total = mean.shape[0] * count
                bn.running_mean.lerp_(batch_mean.detach(), factor)
                bn.running_var.lerp_(batch_var.detach() * (total / max(total - 1, 1)), factor)
    else:
        batch_mean, batch_var = bn.running_mean, bn.running_var
    scale = torch.rsqrt(batch_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -batch_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift
