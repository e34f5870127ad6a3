"""Every ClusIR block: forward + backward on tiny inputs (odd sizes too), every parameter
gets a finite gradient (under dense_routing for routed blocks), torch.compile(aot_eager)."""
import copy

import pytest
import torch

import irblocks
from irblocks.clusir import (
    DAFMM,
    DWT,
    ClusterMoE,
    FrequencySelfMining,
    PCGRMRouter,
    PromptFusion,
    PrototypeBank,
    WaveAttention,
    WaveFFN,
    WaveletBlock,
)
from irblocks.guidance import Guidance
from irblocks.registry import build
from irblocks.testing import dense_routing


def _sem(b, d, widths=(1.0, 1.0, 1.0), h=3, w=2):
    g = Guidance()
    for lvl, s in enumerate(widths):
        g.put(f"prompt.sem{lvl}", torch.randn(b, max(1, round(s * d)), h, w))
    return g


def _stage_prompts(b, d, n=4):
    g = Guidance()
    for lvl in range(n):
        g.put(f"prompt.enc{lvl}", torch.randn(b, d * 2 ** lvl))
    return g


CASES = {
    "wavelet_block": (lambda: WaveletBlock(8, heads=2, sr=2, mlp_ratio=2.0), 8, None),
    "wave_attention": (lambda: WaveAttention(8, heads=2, sr=1), 8, None),
    "wave_ffn": (lambda: WaveFFN(8, mlp_ratio=2.0), 8, None),
    "fsb": (lambda: FrequencySelfMining(8, kernel_size=3, groups=4), 8, None),
    "clusir_moe": (lambda: ClusterMoE(8, expert={"type": "gdfn", "expansion": 1.0}, gate_tokens=2),
                   8, lambda b: Guidance()),
    "dafmm": (lambda: DAFMM(8, level=1, width=8, prompt_width=1.0, prompt_size=4, prompt_length=3),
              8, lambda b: _sem(b, 8)),
    "clusir_prompt_fusion": (lambda: PromptFusion(32, width=4, heads=2, level=3, fusion_width=2.0,
                                                  attention_heads=2, semantic_width=[1.0, 1.0, 1.0],
                                                  stage={"type": "clusir_moe", "gate_tokens": 2,
                                                         "expert": {"type": "gdfn",
                                                                    "expansion": 1.0}}),
                             32, lambda b: _stage_prompts(b, 4, 3)),
}


def _run(block, x, gf, extra=None):
    if gf is None:
        return block(x)
    g = gf(x.shape[0])
    out = block(x, g)
    if extra is not None:   # guidance the block wrote (prompts) joins the loss
        extra.extend(v for k, v in g.fields.items() if v.requires_grad)
    return out


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("hw", [(6, 8), (7, 5)])
def test_forward_backward_all_params(name, hw):
    make, c, gf = CASES[name]
    torch.manual_seed(0)
    block = make().train()
    x = torch.randn(2, c, *hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    written = []
    with dense_routing():
        out = _run(block, x, gf, written)
    assert out.shape == x.shape
    loss = out.square().mean() + sum(t.square().mean() for t in written)
    aux = irblocks.total_aux_loss(block)
    (loss + (aux if aux is not None else 0)).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for n, p in block.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {n}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {n}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_compile_aot_eager(name):
    make, c, gf = CASES[name]
    torch.manual_seed(0)
    block = make().eval()
    x = torch.randn(1, c, 6, 6)
    fields = gf(1).fields if gf is not None else None
    fresh = (lambda b: Guidance(dict(fields))) if gf is not None else None
    ref = _run(block, x, fresh)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager")
    out = _run(compiled, x, fresh)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_registered_names_build_from_specs():
    for name in ("dwt", "idwt", "wavelet_block", "wave_attention", "wave_ffn", "prototype_bank",
                 "pcgrm", "clusir_moe", "fsb", "dafmm", "clusir_prompt_fusion"):
        assert name in irblocks.registry.list_names("block")
    b = build({"type": "wavelet_block", "sr": [4, 2, 1, 1]}, "block", dim=8, heads=1, level=1)
    assert b.attn.sr == 2
    r = build({"type": "pcgrm", "clusters": 4}, "block", dim=8)
    assert isinstance(r, PCGRMRouter) and r.clusters == 4
    assert isinstance(build({"type": "prototype_bank", "count": 2}, "block", dim=4), PrototypeBank)


def test_wave_attention_any_size_and_sr_larger_than_map():
    blk = WaveAttention(8, heads=1, sr=4).eval()
    for hw in [(1, 1), (3, 5), (2, 9)]:
        x = torch.randn(1, 8, *hw)
        assert blk(x).shape == x.shape


def test_batchnorm_layers_present():
    blk = WaveAttention(8, heads=1, sr=2)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in blk.modules()) == 2


def test_bad_values_fail_at_construction():
    with pytest.raises(ValueError, match="multiple of 4"):
        WaveAttention(6)
    with pytest.raises(ValueError, match="sr"):
        WaveAttention(8, sr=0)
    with pytest.raises(ValueError, match="groups"):
        FrequencySelfMining(6, groups=4)
    with pytest.raises(ValueError, match="kernel_size"):
        FrequencySelfMining(8, kernel_size=4)
    with pytest.raises(ValueError, match="wavelet"):
        DWT("nope")


def test_dafmm_rejects_mismatched_semantic_prompt():
    blk = DAFMM(8, level=0, width=8, prompt_width=2.0, prompt_size=4)
    with pytest.raises(irblocks.InputError, match="semantic prompt"):
        blk(torch.randn(1, 8, 4, 4), _sem(1, 8))


def test_wiring_rejects_dafmm_without_fusion():
    from irblocks.guidance import GuidanceError
    with pytest.raises((GuidanceError, ValueError), match="prompt.sem"):
        data = copy.deepcopy(irblocks.resolve_recipe("clusir-tiny").data)
        data.pop("extends", None)
        data["model"]["latent_end"] = None       # an override of None now keeps the recipe's value
        irblocks.create_model(data)


def test_batchnorm_train_mode_needs_more_than_one_value_clear_error():
    from irblocks.errors import InputError
    m = irblocks.create_model("clusir-tiny").train()
    with pytest.raises(InputError,
                       match=r"wave_attention: BatchNorm in train mode needs more than one value"):
        m(torch.rand(1, 3, 16, 16))
    assert m(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)       # a batch > 1 is fine
