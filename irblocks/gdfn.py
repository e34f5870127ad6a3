"""Gated-Dconv Feed-Forward Network (Restormer's GDFN)."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Gt
from torch import nn

from irblocks.conv import depthwise_conv2d, pointwise_conv2d
from irblocks.kernels._cpu_build import applies as cpu_applies
from irblocks.kernels._dispatch import select
from irblocks.kernels.dwconv3x3 import LIBRARY as _C_LIBRARY
from irblocks.kernels.dwconv_gelu_gate import dwconv_gelu_gate
from irblocks.kernels.gdfn_gate import gelu_gate
from irblocks.registry import Context, register

__all__ = ["GDFN", "HIDDEN_MULTIPLE", "PAD_MIN_PIXELS"]

HIDDEN_MULTIPLE = 16
"""The C path's hidden width is padded to a multiple of this (16 float32 = one AVX-512
vector): GEMMs with N or K of 255/510/1021 ran 5-25% slower than at 256/512/1024 (MKL,
2 threads), and the gate kernel's channel loop loses its masked tail. Measured as whole
training steps at 128x128 (batch 2), interleaved in one process: Restormer 3.353 -> 3.282 s,
AnyIR (hidden 56 -> 64 at level 1, +14% work there) 1.526 -> 1.480 s. Maps below
:data:`PAD_MIN_PIXELS` pixels run unpadded."""

PAD_MIN_PIXELS = 4096
"""B * H * W from which the C path pads: the padded weights are copies made per call (and
their gradients copied back), ~2 ms per step for a 2042 x 384 weight at 2 x 16 x 16 against
a GEMM saving proportional to the pixels."""


@register("block", "gdfn", aliases=("gated_dconv_ffn", "feedforward"))
class GDFN(nn.Module):
    """1x1 C -> 2h, depthwise 3x3 on 2h, gelu(x1) * x2, 1x1 h -> C; h = int(C * expansion).

    Execution ("fast"): on the Triton path (CUDA) the gate is one fused kernel over the 2h
    tensor. On CPU in float32 the depthwise 3x3 and the gate are one compiled C kernel
    (:mod:`irblocks.kernels.dwconv_gelu_gate`; forward + backward ~2x faster than eager,
    saves only the 2h input for backward); there the hidden width runs padded with zero
    channels to a multiple of :data:`HIDDEN_MULTIPLE` from :data:`PAD_MIN_PIXELS` pixels on
    (see :meth:`padded_weights`).
    Otherwise (reference path) the two halves are
    computed by the two halves of the conv weights into two dense tensors, so the gate runs
    on dense memory instead of channel slices of a channels_last tensor (same weights, same
    MACs, ~20% faster for a whole Restormer on CPU than the chunked form).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    execution = "fast"

    def __init__(self, dim: Context[int], expansion: Annotated[float, Gt(0)] = 2.66,
                 bias: bool = False):
        super().__init__()
        hidden = int(dim * expansion)
        if hidden < 1:
            raise ValueError(f"gdfn: int(dim * expansion) = int({dim} * {expansion}) leaves no "
                             "hidden channels")
        self.hidden = hidden
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def _half(self, x: torch.Tensor, part: slice) -> torch.Tensor:
        pi, dw = self.project_in, self.dwconv
        y = pointwise_conv2d(x, pi.weight[part], None if pi.bias is None else pi.bias[part])
        return depthwise_conv2d(y, dw.weight[part], None if dw.bias is None else dw.bias[part])

    def padded_weights(self, multiple: int = HIDDEN_MULTIPLE
                       ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                  torch.Tensor | None, torch.Tensor]:
        """The weights with the hidden width h padded to hp = the next multiple of
        ``multiple`` (1: the weights themselves): project_in (2hp, C, 1, 1) and its bias
        (2hp,), dwconv (2hp, 1, 3, 3) and its bias, each as [half 1 | hp - h zeros | half 2 |
        hp - h zeros]; project_out (C, hp, 1, 1) with hp - h zero input columns.

        A padded channel is 0 after project_in and the depthwise conv, gelu(0) * 0 = 0 enters
        project_out through a zero column, and its gradient reaches no parameter (the
        padding's backward drops it): the output and every gradient equal the unpadded
        GDFN's up to float rounding. Differentiable (built per call; the weights are small).
        """
        pi, dw, po = self.project_in, self.dwconv, self.project_out
        h = self.hidden
        pad = -h % multiple

        def halves(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None or pad == 0:
                return t
            # one pad of the (2, h, ...) view: its backward is one slice of the gradient
            pads = (0, 0) * (t.dim() - 1) + (0, pad)
            return F.pad(t.view(2, h, *t.shape[1:]), pads).view(2 * (h + pad), *t.shape[1:])

        out_weight = po.weight if pad == 0 else F.pad(po.weight, (0, 0, 0, 0, 0, pad))
        return (halves(pi.weight), halves(pi.bias), halves(dw.weight), halves(dw.bias),
                out_weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.execution == "official":
            x1, x2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
            return self.project_out(F.gelu(x1) * x2)
        impl = select(None, x, cpu_kernel=_C_LIBRARY)
        if impl == "triton":
            return self.project_out(gelu_gate(self.dwconv(self.project_in(x))))
        dw, po = self.dwconv, self.project_out
        if impl == "cpu" and cpu_applies(x, dw.weight, dw.bias):
            large = x.shape[0] * x.shape[2] * x.shape[3] >= PAD_MIN_PIXELS
            in_w, in_b, dw_w, dw_b, out_w = self.padded_weights(HIDDEN_MULTIPLE if large else 1)
            y = dwconv_gelu_gate(pointwise_conv2d(x, in_w, in_b), dw_w, dw_b, impl="cpu")
            return pointwise_conv2d(y, out_w, po.bias)
        h = self.hidden
        gated = F.gelu(self._half(x, slice(0, h))) * self._half(x, slice(h, 2 * h))
        return pointwise_conv2d(gated, po.weight, po.bias)
