"""Semantic Cross-Attention (ClearAIR Eq. 8-9) over pattern tokens."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt
from torch import nn

from irblocks.errors import check_feature
from irblocks.guidance import Guidance, GuidedBlock
from irblocks.kernels.pattern_sca import pattern_attention, pattern_tokens
from irblocks.registry import BlockSpec, Context, build, register

from .mask_pool import level_masks, mask_average_pool

__all__ = ["SemanticCrossAttention"]


@register("block", "semantic_cross_attention", aliases=("sca",))
class SemanticCrossAttention(GuidedBlock):
    """Semantic cross-attention: x + proj(attention(q = Wq LN(x), k/v = Wk/Wv F_sem)),
    F_sem = Wsem MAP(src, masks) the mask-average-pooled feature (overlapping masks add
    their means, uncovered pixels 0), softmax over all H*W keys, ``num_heads`` heads,
    scale head_dim ** -0.5.

    ``mode="pattern"`` (default) computes it exactly with one token per distinct
    mask-membership pattern present (including the empty pattern of uncovered pixels)
    and log(pattern area) added to its logit: memory O(H*W*P) instead of O((H*W)^2)
    (kernel ``irblocks.kernels.pattern_sca``). ``mode="dense"`` is the scaffold's
    formulation, kept as the test reference (do not use above ~64x64).

    Masks come from ``prior.masks`` (B x K x H' x W'): thresholded at 0.5 and
    nearest-resized to the feature size (any size accepted); in training each mask is
    dropped with probability ``mask_dropout`` (one draw per forward, shared by every
    level). K = 0 leaves every pixel uncovered (keys and values 0: the block adds
    proj(0)).

    ``source="learned"`` (the paper's Table 7 ablation) replaces the semantic prior by
    ``learned_tokens`` learnable tokens of equal area.

    Args:
        dim: channels C (context). num_heads: attention heads (4; must divide C).
        mask_dropout: training-time mask dropout (0.2 in the scaffold).
        mode: "pattern" | "dense". source: "prior" | "learned".
        learned_tokens: number of tokens when source="learned".
        bias: bias of the 1x1 projections. norm: the LayerNorm spec (default ``layernorm``).

    Shapes: (B, C, H, W) -> (B, C, H, W); ``forward(x, guidance, src=None)`` pools
    ``src`` (default x), which the ClearAIR guidance block sets to its own input.
    """

    def __init__(self, dim: Context[int], num_heads: int = 4,
                 mask_dropout: Annotated[float, Ge(0), Lt(1)] = 0.2,
                 mode: Literal["pattern", "dense"] = "pattern",
                 source: Literal["prior", "learned"] = "prior", learned_tokens: int = 16,
                 bias: bool = False, key: str = "prior.masks", norm: BlockSpec = "layernorm"):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"semantic_cross_attention: num_heads={num_heads} must divide "
                             f"dim={dim}")
        if source == "learned" and learned_tokens < 1:
            raise ValueError("semantic_cross_attention: learned_tokens must be >= 1, got "
                             f"{learned_tokens}")
        self.dim, self.heads, self.mode, self.source, self.key = dim, num_heads, mode, source, key
        self.mask_dropout = mask_dropout
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.norm = build(norm, "block", dim=dim)
        self.sem_proj = nn.Conv2d(dim, dim, 1, bias=False)
        self.q_proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.k_proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.v_proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.out_proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.tokens = (nn.Parameter(torch.randn(learned_tokens, dim) * 0.02)
                       if source == "learned" else None)

    def guidance_io(self):
        return set(), ({self.key} if self.source == "prior" else set())

    # 1x1 convs applied to (B, P, C) token tables
    @staticmethod
    def _lin(conv: nn.Conv2d, t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, conv.weight.flatten(1), conv.bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, heads, H*W, head_dim) (a view for channels_last input)."""
        b, c, h, w = t.shape
        return t.permute(0, 2, 3, 1).reshape(b, h * w, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, o: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, heads, N, hd) -> (B, C, H, W) in channels_last memory."""
        b = o.shape[0]
        return o.transpose(1, 2).reshape(b, h, w, self.dim).permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor, guidance: Guidance | None = None,
                src: torch.Tensor | None = None) -> torch.Tensor:
        check_feature(x, self.dim, "semantic_cross_attention")
        guidance = guidance if guidance is not None else Guidance()
        b, c, h, w = x.shape
        src = x if src is None else src
        q = self._split(self.q_proj(self.norm(x)))
        if self.source == "learned":
            tok = self._lin(self.sem_proj, self.tokens.to(x.dtype)).expand(b, -1, -1)
            bias = x.new_zeros(b, tok.shape[1])
            out = self._token_attention(q, tok, bias)
        else:
            masks = level_masks(guidance, self.key, (h, w), self.mask_dropout, self.training,
                                "semantic_cross_attention prior.masks")
            if masks.shape[0] != b:
                from irblocks.errors import InputError
                raise InputError("semantic_cross_attention: prior.masks from the region prior "
                                 f"must be {b} x K x H x W, got batch {masks.shape[0]}")
            if self.mode == "dense":
                out = self._dense(q, src, masks)
            else:
                tokens, bias, _ = pattern_tokens(masks, src)
                out = self._token_attention(q, self._lin(self.sem_proj, tokens), bias)
        return x + self.out_proj(self._merge(out, h, w))

    def _token_attention(self, q: torch.Tensor, tok: torch.Tensor,
                         bias: torch.Tensor) -> torch.Tensor:
        b, p, _ = tok.shape
        k = self._lin(self.k_proj, tok).view(b, p, self.heads, self.head_dim).transpose(1, 2)
        v = self._lin(self.v_proj, tok).view(b, p, self.heads, self.head_dim).transpose(1, 2)
        return pattern_attention(q, k, v, bias.to(q.dtype), self.scale)

    def _dense(self, q: torch.Tensor, src: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """The scaffold's formulation: per-pixel MAP keys/values, full (HW)^2 softmax."""
        f_sem = self.sem_proj(mask_average_pool(src, masks))
        k = self._split(self.k_proj(f_sem))
        v = self._split(self.v_proj(f_sem))
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(-1)
        return attn @ v
