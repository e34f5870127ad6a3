"""ClearAIR diagnostics: the guidance the priors give and where the semantic cross-attention looks.

:func:`guidance_diagnostics` runs the model once and returns the prior fields it was
guided by (region masks, quality and degradation vectors) and, for every
:class:`~irblocks.clearair.sca.SemanticCrossAttention` (grouped per U-Net level), the
attention its queries give to each region: the softmax weights over pattern tokens
(log-area bias included, as in the forward) averaged over heads and query pixels, summed
over the patterns inside each mask (overlapping masks share the weight of their common
pixels, so the region weights can add up to more than 1; ``uncovered`` is the weight of
pixels in no mask), plus the per-pixel map of that attention (sums to 1 over pixels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irblocks.clearair.mask_pool import level_masks
from irblocks.clearair.sca import SemanticCrossAttention
from irblocks.diagnose import level_of
from irblocks.guidance import Guidance
from irblocks.kernels.pattern_sca import pattern_tokens

__all__ = ["guidance_diagnostics", "region_attention"]


@torch.no_grad()
def region_attention(
    sca: SemanticCrossAttention,
    x: torch.Tensor,
    guidance: Guidance,
    src: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """For one SCA call: ``regions`` (B, K) attention weight per mask, ``uncovered`` (B,),
    ``map`` (B, H, W) mean attention received per key pixel. Mask dropout follows the
    module's train/eval mode (eval: none)."""
    b, _, h, w = x.shape
    src = x if src is None else src
    q = sca._split(sca.q_proj(sca.norm(x)))  # (B, heads, N, hd)
    masks = level_masks(guidance, sca.key, (h, w), sca.mask_dropout, sca.training, "diagnostics")
    tokens, bias, inverse = pattern_tokens(masks, src)  # (B,P,C) (B,P) (B,N)
    k = sca._lin(sca.k_proj, sca._lin(sca.sem_proj, tokens))
    k = k.view(b, -1, sca.heads, sca.head_dim).transpose(1, 2)  # (B, heads, P, hd)
    logits = (q.float() @ k.float().transpose(-2, -1)) * sca.scale + bias.float()[:, None, None, :]
    wbar = logits.softmax(-1).mean(dim=(1, 2))  # (B, P)
    flat = masks.reshape(b, masks.shape[1], h * w).float()  # (B, K, N)
    area = F.one_hot(inverse, wbar.shape[1]).sum(1).float().clamp_min(1)  # (B, P)
    per_pixel = torch.gather(wbar / area, 1, inverse)  # (B, N)
    regions = torch.einsum("bkn,bn->bk", flat, per_pixel)
    uncovered = (per_pixel * (flat.sum(1) == 0)).sum(1)
    return {"regions": regions, "uncovered": uncovered, "map": per_pixel.view(b, h, w)}


@torch.no_grad()
def guidance_diagnostics(model: nn.Module, x: torch.Tensor) -> dict:
    """Run ``model`` on ``x``; returns ``priors`` {field: tensor} (``masks`` B x K x H x W
    binarised at 0.5, ``quality``, ``degradation``... as the priors wrote them) and
    ``attention`` {level: {"regions" (B, K), "uncovered" (B,), "map" (B, H_l, W_l)}} (the
    mean over the level's SCA blocks; blocks with learned tokens are skipped)."""
    found: dict[str, list] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, SemanticCrossAttention) and m.source == "prior":

            def hook(mod, args, kwargs, _name=name):
                x_ = args[0]
                g = args[1] if len(args) > 1 else kwargs.get("guidance")
                src = args[2] if len(args) > 2 else kwargs.get("src")
                found.setdefault(level_of(_name), []).append(region_attention(mod, x_, g, src))

            hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    if not hooks:
        raise ValueError(
            f"guidance_diagnostics: {type(model).__name__} has no semantic_cross_attention "
            "reading region masks (not a ClearAIR network)"
        )
    g = Guidance()
    try:
        model(x, g)
    finally:
        for h in hooks:
            h.remove()
    priors = {}
    for key, v in g.fields.items():
        if key.startswith("prior.") and "#" not in key and isinstance(v, torch.Tensor):
            priors[key[len("prior.") :]] = (v > 0.5).float() if key == "prior.masks" else v.float()
    attention = {
        lvl: {k: torch.stack([c[k] for c in calls]).mean(0) for k in calls[0]}
        for lvl, calls in found.items()
    }
    return {"priors": priors, "attention": attention}
