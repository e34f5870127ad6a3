"""ClusIR recipes: one structure, three widths within 5% of the paper's parameter counts
(meta device), GMACs measurable on meta, and the tiny recipe trains on synthetic pairs."""
import pytest
import torch

import irblocks
from irblocks.testing import dense_routing

PAPER = {"clusir-base": 54.66e6, "clusir-s": 25.03e6, "clusir-t": 6.89e6}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_param_counts_within_5_percent(name):
    with torch.device("meta"):
        m = irblocks.create_model(name)
    n = sum(p.numel() for p in m.parameters())
    assert abs(n / PAPER[name] - 1) < 0.05, f"{name}: {n / 1e6:.2f}M vs paper {PAPER[name] / 1e6:.2f}M"


def test_recipes_share_one_structure():
    shapes = {}
    for name in ("clusir-base", "clusir-s", "clusir-t"):
        with torch.device("meta"):
            m = irblocks.create_model(name)
        shapes[name] = [k for k, _ in m.named_parameters()]
    assert shapes["clusir-base"] == shapes["clusir-s"] == shapes["clusir-t"]


def test_gmacs_on_meta_device_tiny():
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        m = irblocks.create_model("clusir-tiny").eval()
        x = torch.empty(1, 3, 40, 56)
    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        out = m(x)
    assert out.shape == (1, 3, 40, 56) and fc.get_total_flops() > 0


def test_tiny_is_small():
    m = irblocks.create_model("clusir-tiny")
    assert sum(p.numel() for p in m.parameters()) < 1_000_000


def test_tiny_every_parameter_gets_a_gradient_and_any_size_works():
    torch.manual_seed(0)
    m = irblocks.create_model("clusir-tiny").train()
    x = torch.rand(2, 3, 32, 32)
    with dense_routing():
        out = m(x)
    loss = (out - x).abs().mean() + irblocks.total_aux_loss(m)
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in m.named_parameters() if not torch.isfinite(p.grad).all()]
    assert not bad, bad
    m.eval()
    with torch.no_grad():
        y = m(torch.rand(1, 3, 37, 53))
    assert y.shape == (1, 3, 37, 53) and torch.isfinite(y).all()


def test_tiny_trains_30_steps_with_falling_loss():
    torch.manual_seed(0)
    m = irblocks.create_model("clusir-tiny").train()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(4, 3, 32, 32, generator=g)
    noisy = (clean + 0.1 * torch.randn(4, 3, 32, 32, generator=g)).clamp(0, 1)
    losses = []
    for step in range(30):
        i = (2 * step) % 4
        out = m(noisy[i:i + 2])
        loss = (out - clean[i:i + 2]).abs().mean()
        opt.zero_grad()
        (loss + irblocks.total_aux_loss(m)).backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, losses


def test_tiny_eval_is_deterministic_and_routes_per_sample():
    torch.manual_seed(0)
    m = irblocks.create_model("clusir-tiny").eval()
    x = torch.rand(3, 3, 24, 24)
    with torch.no_grad():
        a, b = m(x), m(x)
        one = m(x[1:2])
    assert torch.equal(a, b)
    torch.testing.assert_close(one, a[1:2], atol=1e-5, rtol=1e-5)
