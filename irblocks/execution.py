"""Execution style switch: our fast defaults vs the official code's way of executing.

``set_execution(model, "official")`` makes every block that has an alternative
path execute like the papers' released code (NCHW memory format, permute-and-
reshape LayerNorm, unfused gating, FFT fusion...), with the same weights. It
exists for the speed benchmarks and for parity debugging; outputs agree to
float tolerance. ``"fast"`` (default) restores our defaults: channels_last, and on CPU
1x1 convolutions as matrix products and custom backward passes (depthwise convolutions,
skip-split, AnyIR's fusion; ``irblocks/conv.py``), and GatedDA with BatchNorm folded into
its weights (channels_last input; ``GatedDegradationAdaptation._forward_folded``),
GDFN's hidden width zero-padded to a multiple of 16 on its C path (``irblocks/gdfn.py``) and
MDTA's attention on strided views of the qkv rows with one input-gradient tensor, its
output projection folded in and q and k's sums of squares taken from the depthwise 3x3's C
forward while training (``channel_attention_packed``, ``irblocks.conv.depthwise3x3_sumsq``),
with the same gradients (tests/test_training_parity.py, tests/anyir/test_gated_da_folded.py,
tests/kernels/test_mdta_packed.py).

Every execution switch (this one, ``impl`` / ``IRBLOCKS_KERNELS``, ``IRBLOCKS_MALLOC``
(``irblocks/allocator.py``), memory format, checkpointing, the blocks' ``frequency`` /
``mode`` alternatives) is listed in one table:
README.md, "Execution switches".
"""
from __future__ import annotations

from torch import nn

STYLES = ("fast", "official")


def set_execution(model: nn.Module, style: str = "fast") -> nn.Module:
    if style not in STYLES:
        raise ValueError(f"execution style must be one of {STYLES}, got {style!r}")
    for m in model.modules():
        if hasattr(m, "execution"):
            m.execution = style
    return model
