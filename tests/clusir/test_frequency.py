"""FSB (constant input, weight properties), DWT/IDWT modules (pytorch-wavelets oracle, odd
sizes, other wavelets) and DAFMM shape/identity properties."""
import pytest
import torch
from pytorch_wavelets import DWTForward, DWTInverse

from irblocks.clusir import DWT, IDWT, FrequencySelfMining


def test_fsb_constant_input_low_equals_input_high_zero():
    fsb = FrequencySelfMining(8, kernel_size=3, groups=4)
    for hw in [(5, 7), (1, 1), (1, 6), (2, 2)]:
        x = torch.full((2, 8, *hw), 0.0) + torch.arange(8.0).view(1, 8, 1, 1) * 0.37 - 1.1
        low, high = fsb.decompose(x)
        torch.testing.assert_close(low, x, atol=1e-6, rtol=1e-6)
        assert high.abs().max() < 1e-6


@pytest.mark.parametrize("k,groups", [(3, 4), (5, 2), (3, 8)])
def test_fsb_weights_nonnegative_and_sum_to_one(k, groups):
    fsb = FrequencySelfMining(8, kernel_size=k, groups=groups)
    with torch.no_grad():
        fsb.weight_proj.weight.mul_(50)     # peaky softmax still sums to one
    w = fsb.filter_weights(torch.randn(3, 8, 6, 6) * 4)
    assert w.shape == (3, groups, k, k)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(dim=(-2, -1)), torch.ones(3, groups))


def test_fsb_is_a_low_pass_on_noise():
    fsb = FrequencySelfMining(8)
    x = torch.randn(1, 8, 32, 32)
    low, high = fsb.decompose(x)
    torch.testing.assert_close(low + high, x)
    assert low.var() < x.var()


def _oracle(x):
    yl, yh = DWTForward(J=1, wave="haar", mode="zero")(x)
    return torch.cat([yl, yh[0].transpose(1, 2).flatten(1, 2)], dim=1)


@pytest.mark.parametrize("hw", [(6, 8), (5, 7), (1, 4), (3, 1)])
def test_dwt_matches_pytorch_wavelets_and_inverts(hw):
    x = torch.randn(2, 3, *hw)
    y = DWT()(x)
    torch.testing.assert_close(y, _oracle(x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(IDWT()(y, hw), x, atol=1e-6, rtol=1e-6)


def test_idwt_matches_pytorch_wavelets_inverse():
    y = torch.randn(1, 12, 3, 4)
    yl, yh = y[:, :3], y[:, 3:].unflatten(1, (3, 3)).transpose(1, 2)
    ref = DWTInverse(wave="haar", mode="zero")((yl, [yh.contiguous()]))
    torch.testing.assert_close(IDWT()(y), ref, atol=1e-6, rtol=1e-6)


def test_other_wavelets_use_pytorch_wavelets():
    x = torch.randn(1, 2, 9, 10)
    dwt, idwt = DWT("db2"), IDWT("db2")
    y = dwt(x)
    assert y.shape[1] == 8
    torch.testing.assert_close(idwt(y, (9, 10)), x, atol=1e-5, rtol=1e-5)


def test_dwt_keeps_float32_and_channels_last():
    x = torch.randn(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    y = DWT()(x)
    assert y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_blocks_accept_other_wavelets():
    from irblocks.clusir import DAFMM, WaveAttention
    from irblocks.guidance import Guidance
    x = torch.randn(1, 8, 7, 6)
    assert WaveAttention(8, heads=2, sr=2, wave="db2").eval()(x).shape == x.shape
    blk = DAFMM(8, level=0, width=8, prompt_width=1.0, prompt_size=4, wave="sym2").eval()
    assert blk(x, Guidance({"prompt.sem0": torch.randn(1, 8, 2, 2)})).shape == x.shape


def _dafmm_scales(hw, **kw):
    """RMS and max of the amplitude the fusion convs see, and RMS of DAFMM's contribution
    out - x, on an hw x hw map of fixed statistics (per-channel mean + white texture)."""
    from irblocks.clusir import DAFMM
    from irblocks.guidance import Guidance
    torch.manual_seed(0)
    blk = DAFMM(16, level=0, width=16, prompt_width=1.0, prompt_size=4, prompt_length=3,
                bias=True, **kw).eval()
    seen = {}
    blk.amp.register_forward_pre_hook(lambda mod, args: seen.__setitem__("amp", args[0]))
    g = torch.Generator().manual_seed(5)
    x = 0.5 + torch.randn(2, 16, 1, 1, generator=g) + 0.5 * torch.randn(2, 16, hw, hw, generator=g)
    s = torch.randn(2, 16, 4, 4, generator=g)
    with torch.no_grad():
        y = blk(x, Guidance({"prompt.sem0": s}))
    rms = lambda t: t.pow(2).mean().sqrt().item()   # noqa: E731
    return rms(seen["amp"]), seen["amp"].abs().max().item(), rms(y - x)


def test_dafmm_frequency_path_is_scale_invariant_to_input_size():
    """Issue 14.2: the same statistics at 32x32 and 128x128 give fusion inputs and outputs of
    the same size. The first build (unnormalised FFT, raw amplitude) grew the amplitude with
    H x W (RMS x4, max x16 here) and made clusir-tiny diverge."""
    small, big = _dafmm_scales(32), _dafmm_scales(128)
    assert 0.8 < big[0] / small[0] < 1.25, (small, big)       # amplitude RMS seen by the convs
    assert big[1] / small[1] < 4.5, (small, big)              # its max = DC bin
    assert 0.8 < big[2] / small[2] < 1.25, (small, big)       # DAFMM's contribution
    old = {"fft_norm": "backward", "amplitude": "raw"}
    old_small, old_big = _dafmm_scales(32, **old), _dafmm_scales(128, **old)
    assert old_big[0] / old_small[0] > 3 and old_big[1] / old_small[1] > 10   # the test can fail
    ortho_raw_small, ortho_raw_big = (_dafmm_scales(n, amplitude="raw") for n in (32, 128))
    assert 0.8 < ortho_raw_big[0] / ortho_raw_small[0] < 1.25   # orthonormal FFT alone: RMS kept


def test_dafmm_scale_options_are_validated_and_default_to_normalized_ortho():
    from irblocks.clusir import DAFMM
    blk = DAFMM(8, width=8)
    assert (blk.fft_norm, blk.amplitude) == ("ortho", "normalized")
    with pytest.raises(ValueError, match="fft_norm"):
        DAFMM(8, width=8, fft_norm="unitary")
    with pytest.raises(ValueError, match="amplitude"):
        DAFMM(8, width=8, amplitude="log")
