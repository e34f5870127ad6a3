"""ClearAIR blocks: registered, forward/backward, every parameter gets a gradient, compile,
errors."""
import itertools

import pytest
import torch

from irblocks.guidance import Guidance
from irblocks.registry import build

C, H, W = 8, 6, 5


def guidance(b=2, k=3, h=12, w=10):
    torch.manual_seed(1)
    return Guidance({"prior.quality": torch.randn(b, 256),
                     "prior.masks": (torch.rand(b, k, h, w) < 0.4).float(),
                     "prior.degradation": torch.randn(b, 512),
                     "prior.content": torch.randn(b, 512)})


BLOCKS = [
    {"type": "quality_guidance"},
    {"type": "quality_guidance", "source": "learned"},
    {"type": "semantic_cross_attention"},
    {"type": "semantic_cross_attention", "mode": "dense"},
    {"type": "semantic_cross_attention", "source": "learned"},
    {"type": "degradation_aware"},
    {"type": "degradation_aware", "source": "learned"},
    {"type": "clearair_guidance"},
    {"type": "clearair_guidance", "quality": "learned", "regions": "learned",
     "degradation": "learned"},
    {"type": "clearair_guidance", "checkpoint": True},
]


def _id(spec):
    return "-".join(str(v) for v in spec.values())


@pytest.mark.parametrize("spec", BLOCKS, ids=_id)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_forward_backward_all_grads(spec, layout):
    blk = build(spec, "block", dim=C).train()
    x = torch.randn(2, C, H, W, requires_grad=True)
    xin = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    y = blk(xin, guidance())
    assert y.shape == (2, C, H, W) and torch.isfinite(y).all()
    y.square().mean().backward()
    for n, p in blk.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("spec", [BLOCKS[0], BLOCKS[2], BLOCKS[5], BLOCKS[7]], ids=_id)
def test_compile_aot_eager(spec):
    blk = build(spec, "block", dim=C).eval()
    x = torch.randn(1, C, H, W)
    g = guidance(1)
    ref = blk(x, g)
    out = torch.compile(blk, backend="aot_eager")(x, g)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_mask_average_pool_block_and_shared_modules():
    mp = build("mask_average_pool", "block")
    x = torch.randn(2, C, H, W, requires_grad=True)
    mp(x, torch.ones(2, 1, H, W)).sum().backward()
    torch.testing.assert_close(x.grad, torch.ones_like(x))
    qa = build("quality_adapter", "block", dim=C)
    assert [qa(torch.randn(2, 256), C * 2 ** i).shape[1] for i in range(4)] == [8, 16, 32, 64]
    dp = build({"type": "degradation_prompt", "length": 3}, "block", dim=C)
    assert dp(torch.randn(2, 512)).shape == (2, 4 * C)


def test_shared_modules_are_referenced_not_registered_twice():
    from torch import nn
    shared = nn.ModuleDict({"quality_adapter": build("quality_adapter", "block", dim=C),
                            "degradation_prompt": build("degradation_prompt", "block", dim=C)})
    blk = build("clearair_guidance", "block", dim=C, shared=shared)
    assert (blk.qgm.adapter is shared["quality_adapter"]
            and blk.dam.prompt_gen is shared["degradation_prompt"])
    assert not any("adapter" in k or "prompt_gen" in k for k in blk.state_dict())


@pytest.mark.parametrize("order",
                         ["-".join(p) for p in itertools.permutations(["how", "where", "what"])])
def test_perception_order_permutes(order):
    torch.manual_seed(0)
    blk = build({"type": "clearair_guidance", "order": order}, "block", dim=C).eval()
    torch.manual_seed(0)
    ref = build("clearair_guidance", "block", dim=C).eval()
    ref.load_state_dict(blk.state_dict())
    x = torch.randn(2, C, H, W)
    same = torch.allclose(blk(x, guidance()), ref(x, guidance()))
    assert same == (order == "how-where-what")


def test_ablation_switches_drop_the_prior_reads():
    blk = build({"type": "clearair_guidance", "quality": "learned", "degradation": "learned"},
                "block", dim=C)
    assert blk.guidance_io()[1] == {"prior.masks"}
    blk = build({"type": "clearair_guidance", "regions": "learned"}, "block", dim=C)
    assert blk.guidance_io()[1] == {"prior.quality", "prior.degradation", "prior.content"}


@pytest.mark.parametrize("spec,match", [
    ({"type": "clearair_guidance", "order": "how-how-what"}, "permutation of how-where-what"),
    ({"type": "semantic_cross_attention", "num_heads": 3}, "num_heads=3 must divide dim=8"),
    ({"type": "degradation_aware", "num_heads": 5}, "num_heads=5 must divide dim=8"),
    ({"type": "semantic_cross_attention", "mask_dropout": 1.0},
     "mask_dropout: expected float >= 0 and < 1"),
    ({"type": "mask_average_pool", "mask_dropout": -0.1},
     "mask_dropout: expected float >= 0 and < 1"),
])
def test_construction_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        build(spec, "block", dim=C)


def test_bad_tensors():
    from irblocks.errors import InputError
    blk = build("semantic_cross_attention", "block", dim=C)
    with pytest.raises(InputError, match="expected 8 channels"):
        blk(torch.randn(1, 4, H, W), guidance(1))
    g = guidance(1)
    g.put("prior.masks", torch.rand(1, H, W))
    with pytest.raises(InputError, match="B x K x H x W"):
        blk(torch.randn(1, C, H, W), g)
    dam = build("degradation_aware", "block", dim=C)
    g = guidance(1)
    g.put("prior.content", torch.randn(1, 300))
    with pytest.raises(InputError, match=r"prior.content.*degradation prior must be 1 x 512"):
        dam(torch.randn(1, C, H, W), g)
