"""ClusIR's MoE block driven by PCGRM: per-sample routing, only the active experts run."""
from __future__ import annotations

from typing import Annotated, Literal

import torch
from annotated_types import Ge, Gt
from torch import nn
from torch.func import functional_call

from irblocks.aux_loss import record_aux_loss
from irblocks.clusir.router import PCGRMRouter, Routing
from irblocks.errors import check_feature
from irblocks.guidance import Guidance, GuidedBlock
from irblocks.registry import BlockSpec, Context, build, register

__all__ = ["ClusterMoE"]


@register("block", "clusir_moe", aliases=("pcgrm_moe", "cluster_moe"))
class ClusterMoE(GuidedBlock):
    """x + sum over active slots of w_a * expert_a(norm(x)), routed per sample by
    :class:`PCGRMRouter`.

    w_a = p(k|x) p(e|k,x) of slot a, renormalised only over selections that keep more
    than one entry: with top_k = 1 the weight is the gate's probability itself
    (switch-style), so the restoration loss trains the gate (see :class:`PCGRMRouter`).

    Writes the stage prompt (B, prompt_dim) to guidance ``prompt_key`` (default
    ``prompt.enc{level}``) and, with ``Guidance(diagnostics=True)``, records the
    routing under ``routing.<prompt_key>`` (cluster posterior, chosen clusters,
    chosen experts as pool indices, slot weights, p(e|x)).

    Experts: ``expert`` is any registered block spec (built with ``dim``,
    ``heads``, ``level``), default a GDFN (expansion 2.66). ``sharing``:
    ``"owned"`` (default): each cluster owns ``experts`` experts (pool K*E) --
    the paper activates "experts within each selected cluster", and only owned
    experts make the cluster choice decide which weights run; ``"shared"``: one
    pool of ``experts`` experts, every cluster has its own gate over it (the
    ``sum_k p(k|x) p(e|k,x)`` reading).

    Dispatch: fixed-k per sample -- the expert parameters are stacked (E, ...),
    gathered for the (B * A) chosen slots and evaluated with
    ``torch.func.vmap(functional_call)`` on one sample each. No data-dependent
    shapes, so it runs on the ``meta`` device, under torch.compile and under
    FlopCounterMode, which counts only the B * A active expert evaluations.
    Memory: the gathered weights take B * A * (expert parameters). Experts must
    not keep buffers that change in forward (no BatchNorm).

    Aux losses: ``balance`` = balance_weight * N * sum_e f_e P_e (Switch-style:
    f_e = fraction of slots routed to pool expert e, P_e = batch mean of p(e|x))
    plus the prototype bank's ``orthogonality``.

    Args: dim, heads, level (context); expert: expert block spec; clusters,
        active_clusters, experts (per cluster, or pool size when shared), top_k,
        sharing, temperature, prototype_init, orthogonality_weight, balance_weight,
        gate_tokens, gate_heads, prompt_dim (0 -> dim), router_dim, renormalize,
        noisy_gate (see :class:`PCGRMRouter`); norm: pre-norm spec; prompt_key.

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: Context[int], heads: Context[int] = 1, level: Context[int] = 0,
                 expert: BlockSpec = None, clusters: Annotated[int, Ge(1)] = 3,
                 active_clusters: Annotated[int, Ge(1)] = 2, experts: Annotated[int, Ge(1)] = 2,
                 top_k: Annotated[int, Ge(1)] = 1, sharing: Literal["owned", "shared"] = "owned",
                 temperature: Annotated[float, Gt(0)] = 0.1,
                 prototype_init: Literal["orthogonal", "random"] = "orthogonal",
                 orthogonality_weight: Annotated[float, Ge(0)] = 0.01,
                 balance_weight: Annotated[float, Ge(0)] = 0.01,
                 gate_tokens: Annotated[int, Ge(0)] = 8, gate_heads: Annotated[int, Ge(1)] = 1,
                 prompt_dim: int = 0,
                 router_dim: int = 0, renormalize: bool = True, noisy_gate: bool = True,
                 norm: BlockSpec = "layernorm", prompt_key: str = "prompt.enc{level}"):
        super().__init__()
        self.router = PCGRMRouter(dim, clusters=clusters, active_clusters=active_clusters,
                                  experts=experts, top_k=top_k, temperature=temperature,
                                  prototype_init=prototype_init,
                                  orthogonality_weight=orthogonality_weight,
                                  renormalize=renormalize, noisy_gate=noisy_gate,
                                  gate_tokens=gate_tokens, gate_heads=gate_heads,
                                  router_dim=router_dim, prompt_dim=prompt_dim)
        self.dim, self.level, self.sharing = dim, level, sharing
        self.balance_weight = balance_weight
        self.prompt_key = prompt_key.format(level=level)
        pool = clusters * experts if sharing == "owned" else experts
        spec = expert if expert is not None else {"type": "gdfn", "expansion": 2.66}
        self.norm = build(norm, "block", dim=dim, heads=heads, level=level)
        self.experts = nn.ModuleList(
            [build(spec, "block", dim=dim, heads=heads, level=level) for _ in range(pool)])
        names = [[(n, tuple(p.shape)) for n, p in e.named_parameters()] for e in self.experts]
        if any(n != names[0] for n in names):
            raise ValueError("clusir_moe: experts must share one structure (same parameter names "
                             "and shapes)")
        if getattr(self.experts[0], "guided", False):
            raise ValueError("clusir_moe: an expert cannot be a guided block")
        self._param_names = [n for n, _ in names[0]]

    def guidance_io(self) -> tuple[set[str], set[str]]:
        return {self.prompt_key}, set()

    @property
    def pool_size(self) -> int:
        return len(self.experts)

    def routed_experts(self) -> tuple[int, int, int]:
        """(experts one sample runs, experts in the pool, parameters per expert): what
        ``irblocks summary`` counts as idle parameters (the unpicked experts)."""
        run = min(self.pool_size, self.router.active_clusters * self.router.top_k)
        return run, self.pool_size, sum(p.numel() for p in self.experts[0].parameters())

    def pool_index(self, r: Routing) -> torch.Tensor:
        """(B, A) pool indices of the chosen experts."""
        if self.sharing == "owned":
            return r.slot_clusters * self.router.experts + r.experts
        return r.experts

    def _dispatch(self, xn: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Run pool expert idx[b, a] on sample b: (B, C, H, W), (B, A) -> (B, A, C, H, W)."""
        b, a = idx.shape
        flat = idx.reshape(-1)
        params = {n: torch.stack([dict(e.named_parameters())[n] for e in self.experts])[flat]
                  for n in self._param_names}
        buffers = dict(self.experts[0].named_buffers())
        xs = xn.unsqueeze(1).expand(b, a, *xn.shape[1:]).reshape(b * a, *xn.shape[1:])
        template = self.experts[0]

        def one(p, xi):
            return functional_call(template, ({**p, **buffers}), (xi.unsqueeze(0),)).squeeze(0)

        y = torch.func.vmap(one, in_dims=(0, 0))(params, xs)
        return y.reshape(b, a, *y.shape[1:])

    def forward(self, x: torch.Tensor, guidance: Guidance | None = None) -> torch.Tensor:
        check_feature(x, self.dim, "clusir_moe input")
        r = self.router(x)
        idx = self.pool_index(r)
        y = self._dispatch(self.norm(x), idx)                                # B, A, C, H, W
        out = x + torch.einsum("ba,bachw->bchw", r.weights.to(y.dtype), y)
        if self.training and self.balance_weight > 0:
            p_e = self.router.expert_posterior(r, shared=self.sharing == "shared")      # B, N
            with torch.no_grad():
                f = torch.zeros(self.pool_size, device=x.device, dtype=p_e.dtype)
                f = f.scatter_add(0, idx.reshape(-1),
                                  torch.ones_like(idx.reshape(-1), dtype=p_e.dtype))
                f = f / idx.numel()
            record_aux_loss(self, "balance",
                            self.balance_weight * self.pool_size * (f * p_e.mean(0)).sum())
        if guidance is not None:
            guidance.put(self.prompt_key, r.prompt)
            if guidance.diagnostics is not None:
                guidance.record(f"routing.{self.prompt_key}", {
                    "cluster_posterior": r.cluster_posterior.detach(),
                    "clusters": r.clusters.detach(),
                    "cluster_weights": r.cluster_weights.detach(),
                    "experts": idx.detach(),
                    "weights": r.weights.detach(),
                    "expert_posterior": self.router.expert_posterior(
                        r, shared=self.sharing == "shared").detach(),
                })
        return out.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else out
