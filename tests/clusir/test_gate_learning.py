"""Issue 14 section 1: every router parameter learns from the task loss alone.

Train mode, auxiliary-loss weights 0, the *real* sparse routing (no ``dense_routing()``): an
L1 loss on the output must give every parameter of every router -- the cluster posterior
path (projection, prototypes) and the expert gate (prompt priors, query, key/value, gate and
noise weights) -- a non-zero gradient. Checked for the structure of every shipped ClusIR
recipe at tiny width, and for every routed block in the registry. Router parameters are the
ones whose name contains ``.router.`` (as ``../shared/checks/acceptance.py`` finds them).
"""
from __future__ import annotations

import inspect

import pytest
import torch

import irblocks
from irblocks import registry as core
from irblocks.clusir import ClusterMoE, PCGRMRouter, PrototypeBank
from irblocks.guidance import Guidance
from irblocks.testing import dense_routing_enabled

TINY = 8        # width override: the recipe's structure at d = 8
THRESH = 1e-11  # "non-zero": a cut path gives exactly 0 or round-off (<= 1e-13 measured)


def _zero_aux_weights(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, ClusterMoE):
            m.balance_weight = 0.0
        if isinstance(m, PrototypeBank):
            m.weight = 0.0


def _dead_router_params(model: torch.nn.Module) -> tuple[list[str], int]:
    dead, total = [], 0
    for n, p in model.named_parameters():
        if ".router." in f".{n}":
            total += 1
            if p.grad is None or not p.grad.abs().max().item() > THRESH:
                dead.append(n)
    return dead, total


@pytest.mark.parametrize("name", irblocks.list_models("clusir*"))
def test_recipe_routers_learn_from_l1_alone(name):
    assert not dense_routing_enabled()
    torch.manual_seed(0)
    m = irblocks.create_model(name, width=TINY).train()
    _zero_aux_weights(m)
    g = torch.Generator().manual_seed(1)
    x, target = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    (m(x) - target).abs().mean().backward()
    assert float(irblocks.total_aux_loss(m) or 0.0) == 0.0
    dead, total = _dead_router_params(m)
    assert total > 0, f"{name}: no parameter named '*.router.*'"
    assert not dead, (f"{name}: {len(dead)}/{total} router parameters get no gradient "
                      f"from L1: {dead[:6]}")


def _routed_classes() -> set[str]:
    """Registered blocks that route, by the library's convention (``routed = True`` or a
    forward that consults ``dense_routing_enabled``; see ``irblocks.train.trainer.has_routing``)."""
    out = set()
    for e in core.entries("block"):
        cls = e.obj
        if not inspect.isclass(cls):
            continue
        code = getattr(getattr(cls, "forward", None), "__code__", None)
        if getattr(cls, "routed", False) or (code is not None and "dense_routing_enabled" in (
                *code.co_names, *code.co_freevars)):
            out.add(e.name)
    return out


def _moe(**kw):
    kw = {"expert": {"type": "gdfn", "expansion": 1.0}, "gate_tokens": 2, **kw}
    return ClusterMoE(8, **kw)


# routed registry entry -> ways to host it in a block whose output an L1 loss can see
HOSTS = {
    "pcgrm": [
        lambda: _moe(clusters=3, active_clusters=2, experts=2, top_k=1),
        lambda: _moe(clusters=3, active_clusters=1, experts=2, top_k=1),
        lambda: _moe(clusters=3, active_clusters=2, experts=3, top_k=2),
        lambda: _moe(clusters=3, active_clusters=2, experts=2, top_k=1, sharing="shared"),
        lambda: _moe(clusters=2, active_clusters=2, experts=2, top_k=1, noisy_gate=False),
    ],
}


def test_every_routed_registry_block_has_a_gradient_check():
    assert _routed_classes() <= set(HOSTS), (
        f"routed blocks without a gradient-from-L1 check: {sorted(_routed_classes() - set(HOSTS))}")


@pytest.mark.parametrize("name,i", [(n, i) for n, hs in HOSTS.items() for i in range(len(hs))])
def test_routed_block_learns_from_l1_alone(name, i):
    torch.manual_seed(0)
    m = HOSTS[name][i]().train()
    assert any(isinstance(mod, PCGRMRouter) for mod in m.modules())
    _zero_aux_weights(m)
    x = torch.randn(6, 8, 6, 6) * torch.linspace(0.2, 3.0, 6).view(6, 1, 1, 1)
    (m(x, Guidance()) - torch.tanh(x)).abs().mean().backward()
    dead, total = _dead_router_params(m)
    assert total > 0 and not dead, f"{name} host {i}: no gradient from L1 for {dead}"
