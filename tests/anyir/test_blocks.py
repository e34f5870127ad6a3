"""AnyIR blocks: skip-split, GatedDA, spatial-frequency fusion, the DAB mixer."""
import pytest
import torch

import irblocks
from irblocks import registry
from irblocks.anyir import (
    DegradationAdaptation,
    GatedDegradationAdaptation,
    GatedDegradationAdaption,
    SkipSplit,
    SpatialFrequencyFusion,
    skip_merge,
    skip_split,
)
from irblocks.anyir.gated_da import gated_da_channels
from irblocks.errors import InputError


def _all_grads(module, *inputs):
    out = module(*inputs)
    out = out if isinstance(out, torch.Tensor) else torch.cat([o.flatten() for o in out])
    (out.float() ** 2).mean().backward()
    for n, p in module.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{n} has a non-finite gradient"
    return out


# ------------------------------------------------------------------ skip-split
@pytest.mark.parametrize("mode", ["interleaved", "contiguous"])
@pytest.mark.parametrize("cl", [False, True])
def test_skip_split_roundtrip(mode, cl):
    x = torch.randn(2, 6, 5, 3)
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    a, b = skip_split(x, mode)
    assert a.shape == b.shape == (2, 3, 5, 3)
    assert a.data_ptr() >= x.data_ptr()   # views, no copies
    torch.testing.assert_close(skip_merge(a, b, mode), x, rtol=0, atol=0)
    blk = SkipSplit(dim=6, mode=mode)
    a2, b2 = blk(x)
    torch.testing.assert_close(blk.merge(a2, b2), x, rtol=0, atol=0)


def test_skip_split_interleaved_is_even_odd():
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    a, b = skip_split(x)
    assert a.flatten().tolist() == [0, 2, 4] and b.flatten().tolist() == [1, 3, 5]
    a, b = skip_split(x, "contiguous")
    assert a.flatten().tolist() == [0, 1, 2] and b.flatten().tolist() == [3, 4, 5]


def test_skip_split_errors():
    with pytest.raises(ValueError, match="even channel count, got dim=5"):
        SkipSplit(dim=5)
    with pytest.raises(ValueError, match="even channel count, got C=3"):
        skip_split(torch.randn(1, 3, 2, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        skip_split(torch.randn(1, 4, 2, 2), "random")


# ------------------------------------------------------------------ GatedDA
def test_gated_da_released_channel_arithmetic():
    assert gated_da_channels(14, 8 / 3) == (14, 14, 9)      # dim 28 -> C/2 = 14: W_exp 14 -> 37
    assert gated_da_channels(112, 8 / 3) == (112, 112, 75)
    blk = GatedDegradationAdaptation(dim=14)
    assert blk.w_exp.weight.shape == (37, 14, 1, 1)
    assert blk.w_depth.weight.shape == (9, 1, 7, 7)
    assert blk.w_gate.weight.shape == (14, 23, 1, 1)
    assert blk.w_proj.weight.shape == (14, 14, 1, 1)
    assert blk.tau.shape == (1, 14, 1, 1) and isinstance(blk.norm, torch.nn.BatchNorm2d)


def test_gated_da_names_and_alias():
    assert GatedDegradationAdaption is GatedDegradationAdaptation
    assert irblocks.GatedDegradationAdaptation is GatedDegradationAdaptation
    for name in ("gated_da", "gated_degradation_adaptation", "gated_degradation_adaption"):
        assert isinstance(registry.build(name, "block", dim=8), GatedDegradationAdaptation)


def test_gated_da_expansion_error_names_values():
    with pytest.raises(ValueError, match=r"expansion=2 with dim=14 .* leaving 0 alpha channels"):
        GatedDegradationAdaptation(dim=14, expansion=2.0)
    with pytest.raises(ValueError, match="kernel_size"):
        GatedDegradationAdaptation(dim=8, kernel_size=4)
    with pytest.raises(ValueError, match="norm_groups=3 must divide dim=8"):
        GatedDegradationAdaptation(dim=8, norm="group", norm_groups=3)


@pytest.mark.parametrize("norm", ["batch", "layer", "group"])
def test_gated_da_norms_forward_backward(norm):
    blk = GatedDegradationAdaptation(dim=6, norm=norm, norm_groups=2).train()
    x = torch.randn(2, 6, 7, 5, requires_grad=True)
    out = _all_grads(blk, x)
    assert out.shape == x.shape and x.grad is not None


def test_gated_da_batch_independent_norms():
    """layer / group norms give each sample the same output alone or in a batch (BatchNorm does
    not)."""
    x = torch.randn(3, 6, 5, 5)
    for norm in ("layer", "group"):
        blk = GatedDegradationAdaptation(dim=6, norm=norm).train()
        torch.testing.assert_close(blk(x)[:1], blk(x[:1]))


def test_gated_da_batchnorm_train_needs_more_than_one_value():
    blk = GatedDegradationAdaptation(dim=4).train()
    with pytest.raises(InputError, match="more than one value per channel.*1 x 1 x 1.*16x16"):
        blk(torch.randn(1, 4, 1, 1))
    blk(torch.randn(1, 4, 2, 1))      # two values per channel: fine
    blk.eval()(torch.randn(1, 4, 1, 1))  # eval uses running statistics: fine


def test_gated_da_matches_released_formulation():
    blk = GatedDegradationAdaptation(dim=6).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
        blk.norm.running_mean.normal_()
    x = torch.randn(2, 6, 9, 7).contiguous(memory_format=torch.channels_last)
    fast = blk(x)
    irblocks.set_execution(blk, "official")
    torch.testing.assert_close(fast, blk(x.contiguous()), atol=1e-5, rtol=1e-5)


def test_gated_da_bad_input():
    blk = GatedDegradationAdaptation(dim=6)
    with pytest.raises(InputError, match="expected 6 channels"):
        blk(torch.randn(1, 5, 4, 4))


# ------------------------------------------------------------------ fusion
@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (5, 1), (1, 6)])
@pytest.mark.parametrize("cl", [False, True])
def test_fusion_fft_and_direct_agree(hw, cl):
    h, w = hw
    direct = SpatialFrequencyFusion(dim=8, frequency="direct")
    fft = SpatialFrequencyFusion(dim=8, frequency="fft")
    fft.load_state_dict(direct.state_dict())
    a, g = torch.randn(2, 4, h, w) * 3, torch.randn(2, 4, h, w) * 3
    if cl:
        a, g = (t.contiguous(memory_format=torch.channels_last) for t in (a, g))
    a.requires_grad_(), g.requires_grad_()
    od = direct(a, g)
    gd = torch.autograd.grad(od.sum(), (a, g, direct.lam))
    of = fft(a, g)
    gf = torch.autograd.grad(of.sum(), (a, g, fft.lam))
    assert od.shape == (2, 8, h, w)
    torch.testing.assert_close(od, of, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gd, gf, atol=1e-4, rtol=1e-5)


def test_fusion_errors_and_grads():
    with pytest.raises(ValueError, match="dim must be even.*dim=7"):
        SpatialFrequencyFusion(dim=7)
    blk = SpatialFrequencyFusion(dim=4)
    with pytest.raises(InputError, match="expected 2 channels"):
        blk(torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4))
    _all_grads(blk, torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4))
    assert blk.lam.item() == 0.5


# ------------------------------------------------------------------ DAB mixer
def test_dab_mixer_structure_and_errors():
    m = registry.build("degradation_adaptation", "block", dim=16, heads=2)
    assert m.attn.project_out is None and m.attn.qkv.in_channels == 8
    assert m.gate.dim == 8 and m.fusion.dim == 16
    with pytest.raises(ValueError, match=r"heads=3 must divide C/2=8 \(dim=16\)"):
        DegradationAdaptation(dim=16, heads=3)
    with pytest.raises(ValueError, match="dim must be even.*dim=15"):
        DegradationAdaptation(dim=15)


@pytest.mark.parametrize("split", ["interleaved", "contiguous"])
def test_dab_block_grads_any_size_channels_last(split):
    blk = registry.build({"type": "transformer_block",
                          "mixer": {"type": "degradation_adaptation", "split": split}},
                         "block", dim=8, heads=2)
    x = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    out = _all_grads(blk, x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_dab_convenience_block():
    blk = registry.build("dab", "block", dim=8, heads=1)
    assert isinstance(blk.attn, DegradationAdaptation) and blk.ffn.hidden == 16


def test_dab_compile_aot_eager():
    blk = registry.build("dab", "block", dim=8, heads=2).eval()
    x = torch.randn(1, 8, 6, 5)
    ref = blk(x)
    out = torch.compile(blk, backend="aot_eager")(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_gated_da_and_fusion_compile_aot_eager():
    gda = GatedDegradationAdaptation(dim=6).train()
    x = torch.randn(2, 6, 5, 5, requires_grad=True)
    out = torch.compile(gda, backend="aot_eager")(x)
    out.sum().backward()
    assert gda.tau.grad is not None
    fus = SpatialFrequencyFusion(dim=6)
    a, g = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    torch.testing.assert_close(torch.compile(fus, backend="aot_eager")(a, g), fus(a, g))


def test_skip_split_and_mixer_compile_aot_eager():
    x = torch.randn(1, 8, 5, 6)
    sp = SkipSplit(dim=8)
    a, b = torch.compile(sp, backend="aot_eager")(x)
    torch.testing.assert_close(sp.merge(a, b), x)
    mix = registry.build("degradation_adaptation", "block", dim=8, heads=2).eval()
    xc = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(mix, backend="aot_eager")(xc), mix(xc), atol=1e-5,
                                   rtol=1e-5)


def test_fusion_example_inputs():
    blk = SpatialFrequencyFusion(dim=6)
    a, g = blk.example_inputs(batch=2, height=3, width=5)
    assert a.shape == g.shape == (2, 3, 3, 5) and blk(a, g).shape == (2, 6, 3, 5)
