"""PCGRM: ClusIR's probabilistic cluster-guided routing (cluster posterior, then experts per
cluster)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt
from torch import nn

from irblocks.clusir.prototypes import PrototypeBank
from irblocks.errors import check_feature
from irblocks.registry import Context, register
from irblocks.testing import dense_routing_enabled

__all__ = ["PCGRMRouter", "Routing"]


@dataclass
class Routing:
    """What the router decided for a batch (A = active clusters x top_k slots per sample).

    cluster_posterior: (B, K) p(k|x), sums to 1 per sample.
    clusters: (B, Ka) indices of the selected clusters (descending posterior).
    cluster_weights: (B, Ka) selected posteriors p(k|x), renormalised to sum to 1 when
        more than one cluster is kept and ``renormalize`` (raw otherwise).
    expert_posterior_in_cluster: (B, Ka, E) p(e|k,x) for the selected clusters
        (softmax of the gate logits; noisy logits in training).
    experts: (B, A) cluster-local expert indices (slot a = cluster a // top_k).
    slot_clusters: (B, A) the cluster of each slot.
    weights: (B, A) cluster weight x p(e|k,x) of each slot; p(e|k,x) is renormalised
        within the cluster's top_k only when top_k > 1 (and ``renormalize``), so with
        top_k = 1 the slot weight is the gate probability itself (switch-style).
    prompt: (B, prompt_dim) sum_k p(k|x) (mu_k + sigma_k * eps) over the selected clusters.
    """

    cluster_posterior: torch.Tensor
    clusters: torch.Tensor
    cluster_weights: torch.Tensor
    expert_posterior_in_cluster: torch.Tensor
    experts: torch.Tensor
    slot_clusters: torch.Tensor
    weights: torch.Tensor
    prompt: torch.Tensor


@register("block", "pcgrm", aliases=("pcgrm_router", "cluster_router"))
class PCGRMRouter(nn.Module):
    """Probabilistic Cluster-Guided Routing Mechanism (ClusIR, Sec. 3.2), per sample.

    Stage 1 (cluster posterior): z = normalise(Linear(GAP(x))); p(k|x) =
    softmax_k(cos(z, c_k) / temperature) over the L2-normalised prototypes
    (:class:`PrototypeBank`, orthogonal init, near-orthogonality aux loss); keep
    the top ``active_clusters``.

    Stage 2 (experts within each selected cluster): cluster k carries a Gaussian
    prior N(mu_k, sigma_k^2); its prompt e_k = mu_k + sigma_k * eps (eps only in
    training, mu_k in eval). Each e_k queries the features by multi-head cross-
    attention (keys/values from the feature map average-pooled to
    ``gate_tokens`` x ``gate_tokens``; 0 = every pixel) -> h_k; the gate logits of
    cluster k are W_k h_k + b_k (E = ``experts`` logits, a separate gate per
    cluster) plus, in training only, eps' * softplus(W'_k h_k) (learnable noisy
    top-k gating, Shazeer et al.). p(e|k,x) = softmax of the logits; the top
    ``top_k`` are kept. Slot weight = p(k|x) p(e|k,x); the stage prompt is
    sum_k p(k|x) e_k. The expert posterior over a pool is
    p(e|x) = sum_k p(k|x) p(e|k,x) (:meth:`expert_posterior`).

    Weighting the kept entries (how the task loss reaches the router): a selection
    that keeps more than one entry is renormalised to sum to 1 (``renormalize``,
    default: the MoE output keeps the scale of one expert); a selection that keeps
    exactly one entry keeps its raw probability -- the Switch Transformer's rule
    (Fedus et al. 2021: y = p_i(x) E_i(x) for the single chosen expert i).
    Renormalising a single entry would make its weight exactly 1, a constant: the
    gate (q, kv, gate_w, gate_b, noise_w, and mu / log_sigma through the gate's
    query) would then get no gradient from the restoration loss, only from the
    load-balancing loss. So with the shipped top_k = 1 the slot weight is
    p(k|x)/sum_selected p(k'|x) * p(e|k,x) and the gate learns from L1; the MoE
    output is x + sum of weights (< 1) x experts, a residual, so the smaller scale
    is absorbed by the experts.

    Choices where the paper is silent (each a constructor argument):
    ``temperature`` 0.1 (cosines lie in [-1, 1]; at 1 the posterior is nearly
    uniform); ``renormalize`` multi-entry selections (above); mu ~ N(0, 1), log sigma = log 0.1 at
    init; pooled gate tokens (8 x 8) so the gate cost does not grow with H x W;
    router_dim / prompt_dim / gate_dim default to ``dim``.

    Under :func:`irblocks.testing.dense_routing` every cluster and expert is
    selected (same weights), so gradients reach all of them.

    Args: dim (context), clusters K, active_clusters, experts per cluster E,
        top_k per cluster, temperature, prototype_init, orthogonality_weight,
        renormalize, noisy_gate, gate_tokens, gate_heads, router_dim, prompt_dim,
        gate_dim (0 -> dim).

    Shapes: forward (B, dim, H, W) -> :class:`Routing`.
    """

    def __init__(self, dim: Context[int], clusters: Annotated[int, Ge(1)] = 3,
                 active_clusters: Annotated[int, Ge(1)] = 2,
                 experts: Annotated[int, Ge(1)] = 2, top_k: Annotated[int, Ge(1)] = 1,
                 temperature: Annotated[float, Gt(0)] = 0.1,
                 prototype_init: Literal["orthogonal", "random"] = "orthogonal",
                 orthogonality_weight: Annotated[float, Ge(0)] = 0.01,
                 renormalize: bool = True, noisy_gate: bool = True,
                 gate_tokens: Annotated[int, Ge(0)] = 8, gate_heads: Annotated[int, Ge(1)] = 1,
                 router_dim: int = 0, prompt_dim: int = 0, gate_dim: int = 0):
        super().__init__()
        # single-value ranges are the annotations above (the one validator checks them)
        if not 1 <= active_clusters <= clusters:
            raise ValueError(f"pcgrm: active_clusters must be in 1..clusters={clusters}, got "
                             f"{active_clusters}")
        if not 1 <= top_k <= experts:
            raise ValueError(f"pcgrm: top_k must be in 1..experts={experts}, got {top_k}")
        router_dim = router_dim or dim
        prompt_dim = prompt_dim or dim
        gate_dim = gate_dim or dim
        if gate_dim % gate_heads:
            raise ValueError(f"pcgrm: gate_heads={gate_heads} must divide gate_dim={gate_dim}")
        self.dim, self.clusters, self.active_clusters = dim, clusters, active_clusters
        self.experts, self.top_k, self.temperature = experts, top_k, temperature
        self.renormalize, self.noisy_gate = renormalize, noisy_gate
        self.gate_tokens, self.gate_heads = gate_tokens, gate_heads
        self.router_dim, self.prompt_dim, self.gate_dim = router_dim, prompt_dim, gate_dim

        self.proj = nn.Linear(dim, router_dim)
        self.bank = PrototypeBank(router_dim, clusters, prototype_init, orthogonality_weight)
        self.mu = nn.Parameter(torch.empty(clusters, prompt_dim))
        self.log_sigma = nn.Parameter(torch.empty(clusters, prompt_dim))
        self.q = nn.Linear(prompt_dim, gate_dim)
        self.kv = nn.Linear(dim, 2 * gate_dim)
        self.gate_w = nn.Parameter(torch.empty(clusters, experts, gate_dim))
        self.gate_b = nn.Parameter(torch.zeros(clusters, experts))
        self.noise_w = (nn.Parameter(torch.empty(clusters, experts, gate_dim)) if noisy_gate
                        else None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.mu.device.type == "meta":
            return
        with torch.no_grad():
            nn.init.normal_(self.mu, 0.0, 1.0)
            self.log_sigma.fill_(-2.302585)          # sigma = 0.1
            nn.init.normal_(self.gate_w, 0.0, self.gate_dim ** -0.5)
            if self.noise_w is not None:
                nn.init.normal_(self.noise_w, 0.0, 0.02)

    # ------------------------------------------------------------------ parts
    def token(self, x: torch.Tensor) -> torch.Tensor:
        """z = normalise(Linear(GAP(x))): (B, router_dim)."""
        return F.normalize(self.proj(x.mean(dim=(-2, -1))), dim=-1)

    def cluster_posterior(self, x: torch.Tensor) -> torch.Tensor:
        """p(k|x): (B, K), softmax of cosine / temperature."""
        return F.softmax(self.token(x) @ self.bank().t() / self.temperature, dim=-1)

    def affinity(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel cosine affinity of the projected features to each prototype: (B, K, H, W)."""
        z = F.normalize(self.proj(x.permute(0, 2, 3, 1)), dim=-1)          # B H W D
        return torch.einsum("bhwd,kd->bkhw", z, self.bank.normalized())

    def _gate_keys(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_tokens:
            x = F.adaptive_avg_pool2d(x, self.gate_tokens)
        b = x.shape[0]
        return self.kv(x.permute(0, 2, 3, 1).reshape(b, -1, self.dim))    # B, T, 2G

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> Routing:
        check_feature(x, self.dim, "pcgrm input")
        b = x.shape[0]
        dense = dense_routing_enabled()
        ka = self.clusters if dense else self.active_clusters
        tk = self.experts if dense else self.top_k

        post = self.cluster_posterior(x)                                   # B, K
        cw, cidx = post.topk(ka, dim=-1)                                   # B, Ka
        if self.renormalize and ka > 1:      # one kept cluster keeps p(k|x): see the docstring
            cw = cw / cw.sum(-1, keepdim=True)

        mu, sigma = self.mu[cidx], self.log_sigma.exp()[cidx]             # B, Ka, P
        e = mu + sigma * torch.randn_like(mu) if self.training else mu
        prompt = (cw.unsqueeze(-1) * e).sum(1)                             # B, P

        # cross-attention of each selected cluster's prompt with the features
        hd = self.gate_dim // self.gate_heads
        q = self.q(e).reshape(b, ka, self.gate_heads, hd).transpose(1, 2)            # B, h, Ka, d
        k, v = self._gate_keys(x).reshape(b, -1, 2, self.gate_heads, hd).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, ka, self.gate_dim)
        logits = torch.einsum("bkd,bked->bke", h, self.gate_w[cidx]) + self.gate_b[cidx]  # B, Ka, E
        if self.training and self.noise_w is not None:
            std = F.softplus(torch.einsum("bkd,bked->bke", h, self.noise_w[cidx]))
            logits = logits + torch.randn_like(logits) * std
        p_e = F.softmax(logits, dim=-1)                                    # p(e|k,x)
        ew, eidx = p_e.topk(tk, dim=-1)                                    # B, Ka, k
        if self.renormalize and tk > 1:      # switch-style for top-1: the gate learns from the task
            ew = ew / ew.sum(-1, keepdim=True)
        weights = (cw.unsqueeze(-1) * ew).reshape(b, ka * tk)
        slot_clusters = cidx.unsqueeze(-1).expand(b, ka, tk).reshape(b, ka * tk)
        return Routing(post, cidx, cw, p_e, eidx.reshape(b, ka * tk), slot_clusters, weights,
                       prompt)

    def expert_posterior(self, r: Routing, shared: bool = False) -> torch.Tensor:
        """p(e|x) = sum_k p(k|x) p(e|k,x) over the pool (B, K*E owned / E shared), dense
        over the selected clusters' experts (not just the top_k)."""
        b, ka, e = r.expert_posterior_in_cluster.shape
        contrib = r.cluster_weights.unsqueeze(-1) * r.expert_posterior_in_cluster    # B, Ka, E
        if shared:
            return contrib.sum(1)
        out = contrib.new_zeros(b, self.clusters, e)
        out = out.scatter_add(1, r.clusters.unsqueeze(-1).expand(b, ka, e), contrib)
        return out.reshape(b, self.clusters * e)

    def extra_repr(self) -> str:
        return (f"{self.dim}, clusters={self.clusters}, active_clusters={self.active_clusters}, "
                f"experts={self.experts}, top_k={self.top_k}, temperature={self.temperature}")
