"""ClusIR recipes: one structure at three widths, within 5% of the paper's parameter counts
AND of its GMACs at 1x3x224x224 (meta device, fvcore-style, only the experts a forward runs),
any input size, and the tiny recipe trains on synthetic pairs."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import irblocks
from irblocks.testing import dense_routing

# paper (arXiv 2512.10948, Tab. 7): params, FLOPs (fvcore-style MACs at 224x224)
PAPER = {"clusir-base": (54.66e6, 28.85e9), "clusir-s": (25.03e6, 13.42e9),
         "clusir-t": (6.89e6, 3.79e9)}


def _meta_macs(model, h, w):
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        out = model(torch.empty(1, 3, h, w, device="meta"))
    return fc.get_total_flops() / 2, out


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_gmacs_at_224_within_5_percent_and_any_size_builds(name):
    with torch.device("meta"):
        m = irblocks.create_model(name).eval()
    n = sum(p.numel() for p in m.parameters() if p.requires_grad)
    macs, out = _meta_macs(m, 224, 224)
    p0, f0 = PAPER[name]
    assert out.shape == (1, 3, 224, 224)
    assert abs(n / p0 - 1) < 0.05, f"{name}: {n / 1e6:.2f}M params vs paper {p0 / 1e6:.2f}M"
    assert abs(macs / f0 - 1) < 0.05, f"{name}: {macs / 1e9:.2f} GMACs @224 vs paper {f0 / 1e9:.2f}"
    for h, w in ((97, 131), (33, 8)):                  # any size, odd ones too
        macs, out = _meta_macs(m, h, w)
        assert out.shape == (1, 3, h, w) and macs > 0


def test_deep_variant_is_the_first_build_and_not_the_paper_cost():
    """clusir-deep keeps the first build (Restormer depths): the paper's params, ~6x its MACs."""
    with torch.device("meta"):
        m = irblocks.create_model("clusir-deep").eval()
    n = sum(p.numel() for p in m.parameters())
    macs, _ = _meta_macs(m, 224, 224)
    assert abs(n / PAPER["clusir-base"][0] - 1) < 0.05
    assert 5 < macs / PAPER["clusir-base"][1] < 7


def test_recipes_share_one_structure():
    shapes = {}
    for name in ("clusir-base", "clusir-s", "clusir-t"):
        with torch.device("meta"):
            m = irblocks.create_model(name)
        shapes[name] = [k for k, _ in m.named_parameters()]
    assert shapes["clusir-base"] == shapes["clusir-s"] == shapes["clusir-t"]


def test_gmacs_on_meta_device_tiny():
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


def test_summary_shows_where_the_macs_go_per_stage():
    from irblocks.summary import by_kind, format_summary, summarize
    s = summarize("clusir-t", size=(224, 224))
    top = [r for r in s.rows if r.depth == 0]
    assert sum(r.flops for r in top) == s.flops and sum(r.params for r in top) == s.params
    stages = [r for r in top if r.path.startswith("encoders.")]
    assert [r.shape for r in stages] == [(16, 224, 224), (32, 112, 112), (64, 56, 56)]
    inner = {r.path: r.kind for r in s.rows if r.depth == 1}
    for lvl in range(3):
        assert inner[f"encoders.{lvl}.blocks.0"] == "WaveletBlock"
        assert inner[f"encoders.{lvl}.blocks.1"] == "ClusterMoE"
    assert inner["latent.blocks.0"] == "WaveletBlock" and inner["latent_end.stage"] == "ClusterMoE"
    moe = [r for r in s.rows if r.kind == "ClusterMoE"]
    assert len(moe) == 4 and all("2 of 27 experts run" in r.note for r in moe)
    assert s.idle == sum(r.idle for r in moe) > s.params / 2     # most parameters are never run
    kinds = {k: (n, f) for k, n, p, i, f in by_kind(s)}
    assert kinds["WaveletBlock"][0] == 4 and kinds["ClusterMoE"][0] == 4 and kinds["DAFMM"][0] == 3
    assert sum(f for _, f in kinds.values()) == s.flops
    text = format_summary(s)
    assert "encoders.0.blocks.1" in text and "by block type" in text
    assert "experts the router does not pick" in text


def test_decoder_blocks_is_a_recipe_parameter():
    """The paper-cost decoder has no blocks; decoder_blocks puts them back per level."""
    with torch.device("meta"):
        m = irblocks.create_model("clusir-tiny")
        assert [len(d.blocks) for d in m.decoders] == [0, 0, 0] and len(m.refinement.blocks) == 0
        m = irblocks.create_model("clusir-tiny", decoder_blocks=[2, 0, 1])   # [level 0, 1, 2]
        assert [len(d.blocks) for d in m.decoders] == [1, 0, 2]             # run order: 2, 1, 0
        assert [e.level for e in m.decoder_ends] == [2, 1, 0]
    with pytest.raises(irblocks.registry.recipe.RecipeError, match=r"decoder_blocks must list 3"):
        irblocks.create_model("clusir-tiny", decoder_blocks=[1, 1])
