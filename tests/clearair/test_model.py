"""The clearair recipes: size, training, any input size, ablations, checkpointing."""
import pytest
import torch

import irblocks
from irblocks.registry import build

TARGET = 30.79e6


def count(m):
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


def test_clearair_size_on_meta():
    with torch.device("meta"):
        m = irblocks.create_model("clearair")
    n = count(m)
    assert abs(n / TARGET - 1) < 0.03, n
    # exactly the scaffold's count:
    # backbone 25,609,767 + 7 guidance units 4,617,168 + shared 565,653
    assert n == 30_792_588
    norms = [x for x in m.modules() if isinstance(x, irblocks.ChannelLayerNorm)]
    assert len(norms) == 2 * (3 + 5 + 6 + 8 + 6 + 5 + 3 + 3) + 3 * 7
    assert all(x.variant == "centered" and x.bias is None and x.eps == 1e-6 for x in norms)
    kv = sum(p.numel() for k, p in m.named_parameters() if "content_kv" in k)
    assert kv == 1_132_704     # the 7 DAM sites' Linear 512 -> 2C (architectures.md: 1.13M)
    assert sum(1 for x in m.modules() if type(x).__name__ == "ClearAIRGuidance") == 7


def test_clearair_flops_on_meta():
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        m = irblocks.create_model("clearair").eval()
        x = torch.empty(1, 3, 224, 224)
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x)
    gmacs = fc.get_total_flops() / 2e9
    assert 100 < gmacs < 200, gmacs


def test_tiny_is_small_and_every_parameter_gets_a_gradient():
    m = irblocks.create_model("clearair-tiny").train()
    assert count(m) < 3e6
    x = torch.rand(2, 3, 32, 32)
    m(x).square().mean().backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_tiny_any_input_size():
    m = irblocks.create_model("clearair-tiny").eval()
    with torch.no_grad():
        for shape in [(1, 3, 37, 53), (1, 3, 8, 8), (2, 3, 5, 19)]:
            y = m(torch.rand(shape))
            assert y.shape == shape and torch.isfinite(y).all()


def test_tiny_trains_30_steps_with_falling_loss():
    torch.manual_seed(0)
    m = irblocks.create_model("clearair-tiny").train()
    l1, icrm = build("l1", "loss"), build("icrm", "loss")
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    clean = torch.nn.functional.interpolate(torch.rand(4, 3, 8, 8, generator=g), size=32,
                                            mode="bilinear")
    noisy = (clean + 0.15 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    losses = []
    for step in range(30):
        i = (step % 2) * 2
        out = m(noisy[i:i + 2])
        loss = l1(out, clean[i:i + 2]) + 0.0125 * icrm(out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_recipe_loss_section():
    from irblocks.registry import recipe as recipes
    r = recipes.load("clearair")
    assert r.data["loss"] == [{"type": "l1", "weight": 1.0}, {"type": "icrm", "weight": 0.0125}]


def test_pattern_model_equals_dense_model_float64():
    torch.manual_seed(0)
    a = irblocks.create_model("clearair-tiny").double().eval()
    b = irblocks.create_model("clearair-tiny", mid_block={"sca_mode": "dense"}).double().eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 3, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_checkpointing_switch_gives_the_same_gradients():
    torch.manual_seed(0)
    kw = {"mid_block": {"mask_dropout": 0.0}}
    a = irblocks.create_model("clearair-tiny", **kw).train()
    b = irblocks.create_model("clearair-tiny", checkpoint=True, **kw).train()
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 3, 16, 16)
    for m in (a, b):
        m(x).square().mean().backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("over", [
    {"mid_block": {"order": "where-what-how"}},
    {"mid_block": {"order": "what-how-where"}},
    {"mid_block": {"quality": "learned"}},
    {"mid_block": {"regions": "learned"}},
    {"mid_block": {"degradation": "learned"}},
    {"mid_block": {"quality": "learned", "regions": "learned", "degradation": "learned"}},
])
def test_ablations_by_recipe(over):
    m = irblocks.create_model("clearair-tiny", **over).train()
    m(torch.rand(1, 3, 16, 16)).mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_mask_k0_and_dropout_in_model_no_nan():
    m = irblocks.create_model("clearair-tiny",
                              priors={"regions": {"type": "kmeans_regions", "k": 0}}).train()
    y = m(torch.rand(1, 3, 16, 16))
    assert torch.isfinite(y).all()


def test_save_load_and_to_recipe_roundtrip(tmp_path):
    m = irblocks.create_model("clearair-tiny").eval()
    path = irblocks.save(m, tmp_path / "tiny.safetensors")
    m2 = irblocks.load(path).eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(m(x), m2(x))
    assert set(m2.priors) == {"quality", "regions", "degradation"}
    m3 = irblocks.create_model(irblocks.to_recipe(m))
    m3.load_state_dict(m.state_dict())


def test_recipe_training_section_is_the_scaffolds():
    # House-yuyu/ClearAIR train.py: AdamW(2e-4, wd 1e-4), CosineAnnealingLR(T_max=iterations,
    # eta_min=1e-6), clip_grad_norm_(1.0), batch 4, 256 patches, 300k iterations
    from irblocks.train.config import parse_sections
    opt, sched, train = parse_sections(irblocks.resolve_recipe("clearair").data)
    assert (opt.type, opt.lr, opt.weight_decay) == ("adamw", 2e-4, 1e-4)
    assert tuple(opt.betas) == (0.9, 0.999)
    assert (sched.type, sched.warmup_epochs, sched.min_lr) == ("warmup_cosine", 0, 1e-6)
    assert (train.grad_clip, train.batch_size, train.patch_size) == (1.0, 4, 256)
    assert train.iterations == 300000
    # CosineAnnealingLR(T_max=iterations, eta_min=1e-6) over the run: 2e-4 -> 1.1e-4 -> 1e-6
    from irblocks.train.config import lr_factor
    span = sched.epochs
    lrs = [opt.lr * lr_factor(sched, f * span, opt.lr) for f in (0.0, 0.5, 1.0)]
    assert lrs == pytest.approx([2e-4, 1e-6 + (2e-4 - 1e-6) / 2, 1e-6], rel=1e-9)
