"""ClearAIR's guided block: QGM -> SCA -> DAM (How-Where-What), order permutable."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from irblocks.guidance import Guidance, GuidedBlock
from irblocks.registry import BlockSpec, Context, build, register

__all__ = ["ClearAIRGuidance", "PERCEPTION_STEPS"]

PERCEPTION_STEPS = {"how": "qgm", "where": "sca", "what": "dam"}


def parse_order(order: str) -> list[str]:
    steps = [s.strip().lower() for s in order.replace(",", "-").split("-") if s.strip()]
    if sorted(steps) != sorted(PERCEPTION_STEPS):
        raise ValueError(f"clearair_guidance: order must be a permutation of how-where-what "
                         f"(quality, regions, degradation), got {order!r}")
    return steps


@register("block", "clearair_guidance", aliases=("clearair_mid", "qgm_sca_dam"))
class ClearAIRGuidance(GuidedBlock):
    """The guidance unit the ClearAIR scaffold inserts in the middle of every encoder,
    latent and decoder level: Quality Guidance (How) -> Semantic Cross-Attention
    (Where) -> Degradation-Aware Module (What).

    Args:
        dim: channels (context). shared: the U-Net's shared modules (context), holding
            ``quality_adapter`` and ``degradation_prompt``.
        order: perception order, a permutation of "how-where-what" (paper Table 6).
        quality, regions, degradation: "prior" uses the guidance signal; "learned"
            replaces it by a learnable constant (paper Table 7).
        sca_heads, dam_heads: heads of SCA and DAM (4 and 4 in the scaffold).
        mask_dropout: SCA mask dropout in training (0.2). sca_mode: "pattern" (exact,
            O(HW * P)) or "dense" (the scaffold's (HW)^2 formulation; tests only).
        learned_tokens: SCA tokens when regions="learned". bias: of the 1x1 convs.
        checkpoint: recompute this block's activations in backward (activation
            checkpointing; only while training with gradients).
        norm: the LayerNorm spec of QGM, SCA and DAM (the scaffold's: ``{type: layernorm,
            variant: centered, eps: 1.0e-6}``, as in its transformer blocks).

    The SCA pools the unit's input feature (the scaffold pools the level's input
    before its first blocks; a mid block only sees the feature at its position).

    Shapes: (B, C, H, W) -> (B, C, H, W). Reads the ``prior.*`` fields of the
    signals set to "prior".
    """

    def __init__(self, dim: Context[int], shared: Context[Optional[dict]] = None,
                 order: str = "how-where-what", quality: Literal["prior", "learned"] = "prior",
                 regions: Literal["prior", "learned"] = "prior",
                 degradation: Literal["prior", "learned"] = "prior",
                 sca_heads: int = 4, dam_heads: int = 4, mask_dropout: float = 0.2,
                 sca_mode: Literal["pattern", "dense"] = "pattern", learned_tokens: int = 16,
                 bias: bool = False, checkpoint: bool = False, norm: BlockSpec = "layernorm"):
        super().__init__()
        self.order = parse_order(order)
        self.checkpoint = checkpoint
        self.qgm = build({"type": "quality_guidance", "source": quality, "norm": norm}, "block",
                         dim=dim, shared=shared)
        self.sca = build({"type": "semantic_cross_attention", "num_heads": sca_heads,
                          "mask_dropout": mask_dropout, "mode": sca_mode, "source": regions,
                          "learned_tokens": learned_tokens, "bias": bias, "norm": norm}, "block",
                         dim=dim)
        self.dam = build({"type": "degradation_aware", "num_heads": dam_heads,
                          "source": degradation, "bias": bias, "norm": norm}, "block", dim=dim,
                         shared=shared)

    def guidance_io(self):
        consumes = set()
        for m in (self.qgm, self.sca, self.dam):
            consumes |= m.guidance_io()[1]
        return set(), consumes

    def _run(self, x: torch.Tensor, guidance: Guidance) -> torch.Tensor:
        src = x
        for step in self.order:
            if step == "how":
                x = self.qgm(x, guidance)
            elif step == "where":
                x = self.sca(x, guidance, src=src)
            else:
                x = self.dam(x, guidance)
        return x

    def forward(self, x: torch.Tensor, guidance: Guidance | None = None) -> torch.Tensor:
        guidance = guidance if guidance is not None else Guidance()
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return _checkpoint(self._run, x, guidance, use_reentrant=False)
        return self._run(x, guidance)
