"""AnyIR's Degradation Adaptation Block: the token mixer and the full block."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from irblocks.errors import check_feature
from irblocks.registry import BlockSpec, Context, build, register
from irblocks.transformer_block import TransformerBlock

from .skip_split import skip_split, skip_split_dense

__all__ = ["DegradationAdaptation", "degradation_adaptation_block"]


@register("block", "degradation_adaptation", aliases=("dab_mixer", "anyir_attention"))
class DegradationAdaptation(nn.Module):
    """Skip-split the C channels into an attention path and a gated path (C/2 each),
    run MDTA without its projection on the first, GatedDA on the second, then fuse
    them with the spatial-frequency fusion (which ends with a 1x1 C -> C).

    The mixer of AnyIR's DAB: use it as ``transformer_block``'s ``mixer``.

    Args:
        dim: channels C (context; even). heads: attention heads (context; must divide C/2).
        bias: biases of the attention convs and of the fusion projection (the gated
            path keeps its own ``bias``, False as released).
        split: ``"interleaved"`` (even channels -> attention, odd -> gated; released) or
            ``"contiguous"`` (first / second half; ablation).
        attention: attention path spec, built with dim = C/2 (default: ``mdta`` with
            ``project: false`` and this ``bias``).
        gate: gated path spec, built with dim = C/2 (default ``gated_da``).
        fusion: fusion spec, built with dim = C, called as fusion(att, gate) (default
            ``sf_fusion`` with this ``bias``).

    Shapes: (B, C, H, W) -> (B, C, H, W), any H x W.
    """

    execution = "fast"

    def __init__(self, dim: Context[int], heads: Context[int] = 1, bias: bool = False,
                 split: Literal["interleaved", "contiguous"] = "interleaved",
                 attention: BlockSpec = None, gate: BlockSpec = "gated_da",
                 fusion: BlockSpec = None):
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError("degradation_adaptation: dim must be even (two paths of C/2), got "
                             f"dim={dim}")
        half = dim // 2
        if heads < 1 or half % heads:
            raise ValueError(f"degradation_adaptation: heads={heads} must divide C/2={half} "
                             f"(dim={dim})")
        if split not in ("interleaved", "contiguous"):
            raise ValueError("degradation_adaptation: split must be 'interleaved' or "
                             f"'contiguous', got {split!r}")
        self.dim, self.heads, self.split = dim, heads, split
        self.attn = build(attention if attention is not None
                          else {"type": "mdta", "project": False, "bias": bias},
                          "block", path="degradation_adaptation.attention", dim=half, heads=heads)
        self.gate = build(gate, "block", path="degradation_adaptation.gate", dim=half, heads=heads)
        self.fusion = build(fusion if fusion is not None else {"type": "sf_fusion", "bias": bias},
                            "block", path="degradation_adaptation.fusion", dim=dim, heads=heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature(x, self.dim, "degradation_adaptation input")
        if self.execution == "fast" and x.is_contiguous(memory_format=torch.channels_last) \
                and not x.is_contiguous():
            # one copy each: the paths' element-wise ops and convs run much faster on dense input
            x_att, x_gate = skip_split_dense(x, self.split)
        else:
            x_att, x_gate = skip_split(x, self.split)
        return self.fusion(self.attn(x_att), self.gate(x_gate))

    def extra_repr(self) -> str:
        return f"{self.dim}, heads={self.heads}, split={self.split}"


@register("block", "degradation_adaptation_block", aliases=("dab", "anyir_block"))
def degradation_adaptation_block(dim: Context[int], heads: Context[int] = 1,
                                 level: Context[int] = 0, expansion: float = 2.0,
                                 bias: bool = False,
                                 norm: BlockSpec = "layernorm") -> TransformerBlock:
    """AnyIR's DAB: ``transformer_block`` with the ``degradation_adaptation`` mixer and a
    ``gdfn`` of the given expansion (released: 2). (B, C, H, W) -> (B, C, H, W)."""
    return TransformerBlock(dim=dim, heads=heads, level=level,
                            mixer={"type": "degradation_adaptation", "bias": bias},
                            ffn={"type": "gdfn", "expansion": expansion, "bias": bias}, norm=norm)
