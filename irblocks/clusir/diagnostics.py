"""Routing diagnostics for ClusIR: per-stage cluster posteriors, chosen experts, prototype affinity
maps."""
from __future__ import annotations

import torch
from torch import nn

from irblocks.clusir.moe import ClusterMoE
from irblocks.guidance import Guidance

__all__ = ["routing_diagnostics", "prototype_affinity_maps"]


def _run(model: nn.Module, x: torch.Tensor, guidance: Guidance):
    if getattr(model, "guided", False) or "guidance" in model.forward.__code__.co_varnames:
        return model(x, guidance)
    return model(x)


@torch.no_grad()
def routing_diagnostics(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Run ``model`` on ``x`` with ``Guidance(diagnostics=True)`` and return, per routed stage
    (keyed by its prompt key, e.g. ``prompt.enc0``): ``cluster_posterior`` (B, K),
    ``clusters`` (B, Ka), ``cluster_weights`` (B, Ka), ``experts`` (B, A) pool indices,
    ``weights`` (B, A) and ``expert_posterior`` (B, pool). Uses the model's current
    train/eval mode (eval: deterministic)."""
    g = Guidance(diagnostics=True)
    _run(model, x, g)
    return {k[len("routing."):]: v
            for k, v in (g.diagnostics or {}).items() if k.startswith("routing.")}


@torch.no_grad()
def prototype_affinity_maps(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pixel cosine affinity of each routed stage's projected input features to its
    prototypes: {prompt key: (B, K, H_l, W_l)} (the router itself pools globally)."""
    maps: dict[str, torch.Tensor] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, ClusterMoE):
            def hook(mod, args, _m=m):
                maps[_m.prompt_key] = _m.router.affinity(args[0])
            hooks.append(m.register_forward_pre_hook(hook))
    if not hooks:
        raise ValueError(f"prototype_affinity_maps: {type(model).__name__} has no clusir_moe block")
    try:
        _run(model, x, Guidance())
    finally:
        for h in hooks:
            h.remove()
    return maps
