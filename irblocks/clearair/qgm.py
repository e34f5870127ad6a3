"""Quality guidance: the shared quality adapter and the per-level Quality Guidance Module."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from irblocks.errors import InputError, check_feature
from irblocks.guidance import Guidance, GuidedBlock
from irblocks.registry import BlockSpec, Context, build, register

from .priors_common import QUALITY_DIM

__all__ = ["QualityAdapter", "QualityGuidance", "shared_or_own", "guidance_vector"]


def shared_or_own(owner: nn.Module, attr: str, shared, key: str, spec, **context) -> nn.Module:
    """Set ``owner.<attr>`` to the shared module ``key`` when the container shares one,
    else to a private one built from ``spec`` (registered as ``own_<key>``). The
    attribute is a plain reference, so a shared module is not registered twice (it
    lives in the U-Net's ``shared`` mapping and appears once in the state_dict)."""
    if shared is not None and key in shared:
        mod = shared[key]
    else:
        mod = build(spec, "block", **context)
        owner.add_module(f"own_{key}", mod)
    object.__setattr__(owner, attr, mod)
    return mod


def guidance_vector(guidance: Guidance, key: str, dim: int, batch: int, where: str, prior: str,
                    hint: str = "") -> torch.Tensor:
    """Read a (B, dim) prior embedding, failing with one line naming the prior and shape
    (``hint`` is appended to the message)."""
    t = guidance.get(key)
    if not isinstance(t, torch.Tensor) or tuple(t.shape) != (batch, dim):
        got = "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"{where}: guidance {key!r} from the {prior} prior must be {batch} x "
                         f"{dim} (B x {dim}), got {got}{hint}")
    return t


@register("block", "quality_adapter", aliases=("iqa_adapter",))
class QualityAdapter(nn.Module):
    """Maps the quality embedding to per-width conditioning vectors (ClearAIR Eq. 3).

    An MLP in_dim -> hidden -> hidden (GELU), then one Linear hidden -> w per width
    ``w`` in (d, 2d, 4d, 8d). Built once and shared by every QGM (the U-Net's
    ``shared`` mapping); the decoder's level-1 blocks run at 2d and use the 2d head,
    as in the authors' scaffold.

    Args:
        dim: d, the base width (context). in_dim: quality interface size (256).
        hidden: MLP width (default 4d). levels: heads for widths d * 2^i, i < levels.
        state_dim: 0, or the width of a raw MLLM hidden state (DeQA: 4096) that the
            ``deqa_quality`` prior provides: a trainable Linear state_dim -> in_dim is
            applied first (the scaffold's learned reduction in its IQA wrapper).

    Shapes: forward(fq (B, input_dim), width) -> (B, width); ``input_dim`` is
    ``state_dim`` when set, else ``in_dim``.
    """

    def __init__(self, dim: Context[int], in_dim: int = QUALITY_DIM, hidden: int = 0,
                 levels: int = 4, state_dim: int = 0):
        super().__init__()
        hidden = hidden or 4 * dim
        if dim < 1 or in_dim < 1 or hidden < 1 or levels < 1 or state_dim < 0:
            raise ValueError(f"quality_adapter: dim, in_dim, hidden and levels must be >= 1 and "
                             f"state_dim >= 0, got {dim}, {in_dim}, {hidden}, {levels}, "
                             f"{state_dim}")
        self.dim, self.in_dim, self.state_dim = dim, in_dim, state_dim
        self.input_dim = state_dim or in_dim
        self.reduce = nn.Linear(state_dim, in_dim) if state_dim else None
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.heads = nn.ModuleDict({str(dim * 2 ** i): nn.Linear(hidden, dim * 2 ** i)
                                    for i in range(levels)})

    def forward(self, fq: torch.Tensor, width: int) -> torch.Tensor:
        head = self.heads[str(width)] if str(width) in self.heads else None
        if head is None:
            raise InputError(f"quality_adapter: no head for width {width} (has "
                             f"{sorted(map(int, self.heads))})")
        if self.reduce is not None:
            fq = self.reduce(fq)
        return head(self.net(fq))


@register("block", "quality_guidance", aliases=("qgm",))
class QualityGuidance(GuidedBlock):
    """Quality Guidance Module (ClearAIR Eq. 4): FiLM of the normalised feature by the
    image-level quality embedding: LN(x) * (1 + Linear_s(f)) + Linear_b(f), with
    f = quality_adapter(prior.quality, C). As in the authors' scaffold there is no
    residual around it.

    Args:
        dim: channels C (context). shared: the U-Net's shared modules (context); uses
            ``shared[adapter]`` if present, else builds a private adapter.
        adapter: key of the shared quality adapter. source: ``"prior"`` reads
            ``prior.quality`` (B x 256); ``"learned"`` replaces it by a learnable
            constant (the paper's Table 7 ablation).
        quality_dim: the interface size (256).
        norm: the LayerNorm spec (the scaffold's: ``{type: layernorm, variant: centered,
            eps: 1.0e-6}``).

    Shapes: (B, C, H, W) -> (B, C, H, W). Reads ``prior.quality`` (source="prior").
    """

    def __init__(self, dim: Context[int], shared: Context[Optional[dict]] = None,
                 adapter: str = "quality_adapter", source: Literal["prior", "learned"] = "prior",
                 quality_dim: int = QUALITY_DIM, key: str = "prior.quality",
                 norm: BlockSpec = "layernorm"):
        super().__init__()
        self.dim, self.source, self.key, self.quality_dim = dim, source, key, quality_dim
        # a private adapter (no shared one) takes the block's own width as its 'd'
        shared_or_own(self, "adapter", shared, adapter,
                      {"type": "quality_adapter", "in_dim": quality_dim, "levels": 1}, dim=dim)
        self.norm = build(norm, "block", dim=dim)
        self.scale = nn.Linear(dim, dim)
        self.shift = nn.Linear(dim, dim)
        width = getattr(self.adapter, "input_dim", quality_dim)
        self.learned = nn.Parameter(torch.randn(width) * 0.02) if source == "learned" else None

    def guidance_io(self):
        return set(), ({self.key} if self.source == "prior" else set())

    def embedding(self, batch: int, guidance: Guidance, like: torch.Tensor) -> torch.Tensor:
        if self.learned is not None:
            return self.learned.to(like.dtype).expand(batch, -1)
        dim = getattr(self.adapter, "input_dim", self.quality_dim)
        return guidance_vector(guidance, self.key, dim, batch, "quality_guidance", "quality",
                               "; a raw MLLM state (deqa_quality: 4096) needs the recipe's "
                               "shared.quality_adapter.state_dim set to its width").to(like.dtype)

    def forward(self, x: torch.Tensor, guidance: Guidance | None = None) -> torch.Tensor:
        check_feature(x, self.dim, "quality_guidance")
        guidance = guidance if guidance is not None else Guidance()
        f = self.adapter(self.embedding(x.shape[0], guidance, x), self.dim)
        gamma = self.scale(f)[:, :, None, None]
        beta = self.shift(f)[:, :, None, None]
        return self.norm(x) * (1 + gamma) + beta
