"""Spatial-frequency fusion (AnyIR, Algorithm 2) plus its 1x1 projection."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from irblocks.conv import pointwise_conv2d
from irblocks.errors import InputError, check_feature
from irblocks.kernels.anyir_fusion import anyir_fusion, anyir_fusion_naive
from irblocks.registry import Context, register

__all__ = ["SpatialFrequencyFusion"]


@register("block", "sf_fusion", aliases=("spatial_frequency_fusion",))
class SpatialFrequencyFusion(nn.Module):
    """Fuse an attention path ``att`` and a gated path ``gate`` (C/2 channels each) into C.

    F_s = concat(att + sigmoid(gate), gate + sigmoid(att)) (spatial cross-enhancement);
    F_f = irfft2(rfft2(att) + rfft2(gate), s=(H, W)), each channel repeated twice
    (c0, c0, c1, c1, ...) (frequency branch); F = lam * F_s + (1 - lam) * F_f with a
    learnable scalar lam; out = 1x1 projection C -> C.

    Args:
        dim: output channels C (context; even).
        frequency: ``"direct"`` (default) computes F_f as att + gate, its exact value
            (the FFT is linear and nothing acts in the spectrum), fused with the rest
            in one kernel; ``"fft"`` computes it with rfft2 / irfft2 as written.
            Both agree to float tolerance.
        bias: bias of the projection.
        lam: initial value of lam (released: 0.5).

    Shapes: forward(att, gate) with att, gate (B, C/2, H, W) -> (B, C, H, W), any H x W.
    """

    execution = "fast"

    def __init__(self, dim: Context[int], frequency: Literal["direct", "fft"] = "direct",
                 bias: bool = False, lam: float = 0.5):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"sf_fusion: dim must be even (two halves of C/2), got dim={dim}")
        if frequency not in ("direct", "fft"):
            raise ValueError(f"sf_fusion: frequency must be 'direct' or 'fft', got {frequency!r}")
        self.dim, self.frequency = dim, frequency
        self.lam = nn.Parameter(torch.tensor(float(lam)))
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def fuse(self, att: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """Algorithm 2 without the projection: (B, C/2, H, W) x 2 -> (B, C, H, W)."""
        check_feature(att, self.dim // 2, "sf_fusion att")
        check_feature(gate, self.dim // 2, "sf_fusion gate")
        if att.shape != gate.shape:
            raise InputError(f"sf_fusion: att and gate must have the same shape, got "
                             f"{tuple(att.shape)} and {tuple(gate.shape)}")
        if self.execution == "official" or self.frequency == "fft":
            return anyir_fusion_naive(att, gate, self.lam)
        return anyir_fusion(att, gate, self.lam)

    def forward(self, att: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        if self.execution == "official":
            return self.project_out(self.fuse(att, gate))
        po = self.project_out
        return pointwise_conv2d(self.fuse(att, gate), po.weight, po.bias)

    def example_inputs(self, batch: int = 1, height: int = 8,
                       width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (att, gate) inputs of the right shapes (used by generic block tests)."""
        p = self.lam
        return (torch.randn(batch, self.dim // 2, height, width, device=p.device, dtype=p.dtype),
                torch.randn(batch, self.dim // 2, height, width, device=p.device, dtype=p.dtype))

    def extra_repr(self) -> str:
        return f"{self.dim}, frequency={self.frequency}"
