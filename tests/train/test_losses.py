"""Losses: values against hand computations, gradients, the composite built from a recipe."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from irblocks.aux_loss import record_aux_loss
from irblocks.losses import (
    CharbonnierLoss,
    FFTLoss,
    ICRMLoss,
    L1Loss,
    MSSSIMLoss,
    build_loss,
    icrm_views,
    ms_ssim,
    validate_loss_section,
)
from irblocks.registry import build, list_names

NAMES = ["l1", "l2", "charbonnier", "ms_ssim", "fft", "icrm", "aux"]


def _pair(shape=(2, 3, 32, 32)):
    g = torch.Generator().manual_seed(1)
    t = torch.rand(shape, generator=g)
    p = (t + 0.1 * torch.randn(shape, generator=g)).clamp(0, 1)
    return p, t


def test_all_registered():
    assert set(NAMES) <= set(list_names("loss"))


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_finite(name):
    p, t = _pair()
    p = p.clone().requires_grad_(True)
    m = build(name, "loss")
    v = m(p, t)
    assert v.dim() == 0 and torch.isfinite(v)
    if name != "aux":
        v.backward()
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_l1_charbonnier_values():
    p, t = _pair()
    assert torch.allclose(L1Loss()(p, t), (p - t).abs().mean())
    c = CharbonnierLoss(eps=1e-3)(p, t)
    assert torch.allclose(c, torch.sqrt((p - t) ** 2 + 1e-6).mean())
    assert CharbonnierLoss()(t, t) == pytest.approx(1e-3, rel=1e-4)


def test_fft_loss_is_l1_on_real_imag():
    p, t = _pair((1, 3, 17, 20))
    P, T = torch.fft.rfft2(p), torch.fft.rfft2(t)
    ref = (torch.cat([(P.real - T.real).abs().flatten(), (P.imag - T.imag).abs().flatten()])).mean()
    assert torch.allclose(FFTLoss()(p, t), ref, rtol=1e-5)
    assert FFTLoss()(t, t) == 0


def test_ms_ssim():
    p, t = _pair((2, 3, 64, 64))
    assert MSSSIMLoss()(t, t).abs() < 1e-5
    v = ms_ssim(p, t)
    assert v.shape == (2,) and ((v > 0) & (v < 1)).all()
    # more noise -> lower MS-SSIM
    worse = (t + 0.3 * torch.randn_like(t)).clamp(0, 1)
    assert (ms_ssim(worse, t) < v).all()
    # small patches: scales that do not fit the window are dropped
    assert torch.isfinite(MSSSIMLoss()(*_pair((1, 3, 24, 24))))
    with pytest.raises(ValueError, match="at least 11x11"):
        MSSSIMLoss()(*_pair((1, 3, 8, 8)))


def test_ms_ssim_single_scale_is_gaussian_ssim():
    # with one scale, MS-SSIM is the Gaussian SSIM (population covariance, valid window)
    from irblocks.train.metrics import batch_ssim
    p, t = _pair((1, 3, 16, 16))
    assert (ms_ssim(p.double(), t.double()).item()
            == pytest.approx(batch_ssim(p, t, mode="gaussian").item(), abs=1e-6))


def test_icrm_compares_weak_and_strong_views():
    x = torch.rand(2, 3, 20, 30)
    torch.manual_seed(3)
    weak, strong = icrm_views(x)
    assert weak.shape == strong.shape == x.shape
    torch.manual_seed(3)
    assert torch.allclose(ICRMLoss()(x), F.mse_loss(weak, strong))
    # without jitter and blur the strong view equals the weak one
    assert ICRMLoss(jitter=0.0, blur_kernel=1)(x) == 0
    # weak view is a crop of ~0.7 resized back: a constant image stays constant
    c = torch.full((1, 3, 20, 20), 0.4)
    w, s = icrm_views(c, jitter=0.0)
    assert torch.allclose(w, c) and torch.allclose(s, c, atol=1e-6)
    # reproducible with a seed; target ignored
    torch.manual_seed(5)
    a = ICRMLoss()(x, None)
    torch.manual_seed(5)
    assert torch.equal(a, ICRMLoss()(x, x))


def test_icrm_crop_is_a_zoom():
    # a horizontal ramp zoomed in by 1/0.7: each output pixel covers 0.7 input pixels
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(1, 3, 64, 64).contiguous()
    w, _ = icrm_views(ramp, crop_scale=0.7, jitter=0.0, blur_kernel=1)
    slope = (w[0, 0, 0, 40] - w[0, 0, 0, 20]) / 20
    assert slope.item() == pytest.approx(1 / 63 * int(64 * 0.7) / 64, rel=0.02)


class _AuxNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        record_aux_loss(self, "balance", y.mean() ** 2)
        return y


def test_composite_from_recipe_section_and_aux():
    net = _AuxNet()
    p, t = _pair()
    y = net(p)
    comp = build_loss([{"type": "l1", "weight": 1.0}, {"type": "fft", "weight": 0.1},
                       {"type": "charbonnier", "weight": 0.5, "eps": 1e-2}])
    total, parts = comp(y, t, net)
    assert set(parts) == {"l1", "fft", "charbonnier", "aux"}
    exp = parts["l1"] + 0.1 * parts["fft"] + 0.5 * parts["charbonnier"] + parts["aux"]
    assert torch.allclose(total.detach(), exp)
    assert parts["aux"] == pytest.approx(float(y.detach().mean() ** 2))
    total.backward()
    assert net.conv.weight.grad is not None
    # explicit aux weight; aux 0 switches it off
    total0, parts0 = build_loss([{"type": "l1"}, {"type": "aux", "weight": 0}])(net(p), t, net)
    assert "aux" not in parts0
    assert "l1" in parts0 and comp.describe().startswith("1*l1 + 0.1*fft")


def test_composite_repeated_types_and_default():
    comp = build_loss([{"type": "l1"}, {"type": "l1", "weight": 2}])
    p, t = _pair()
    total, parts = comp(p, t)
    assert set(parts) == {"l1", "l1#2"} and torch.allclose(total, 3 * parts["l1"])
    assert build_loss(None).describe() == "1*l1 + 1*aux"


def test_loss_section_errors():
    assert validate_loss_section([{"type": "l1"}, {"type": "fft", "weight": 0.1}]) == []
    errs = validate_loss_section([{"type": "l11"}, {"type": "charbonnier", "epsilon": 1},
                                  {"type": "l1", "weight": -1}, {"weight": 1}])
    assert len(errs) == 4
    assert "Did you mean" in errs[0] and "'l1'" in errs[0]
    assert "loss[1].epsilon" in errs[1]
    assert "loss[2].weight" in errs[2]
    assert "needs a 'type'" in errs[3]
    assert all("\n" not in e for e in errs)
    with pytest.raises(Exception, match="is a block, not a loss"):
        build_loss([{"type": "gdfn"}])


def test_construction_errors():
    with pytest.raises(ValueError, match="crop_scale"):
        ICRMLoss(crop_scale=1.5)
    with pytest.raises(ValueError, match="odd"):
        MSSSIMLoss(win_size=10)
    with pytest.raises(ValueError, match="shapes differ"):
        L1Loss()(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def test_losses_compile():
    p, t = _pair((1, 3, 16, 16))
    for m in (L1Loss(), CharbonnierLoss(), FFTLoss()):
        c = torch.compile(m, backend="aot_eager")
        assert torch.allclose(c(p, t), m(p, t), atol=1e-6)


def test_icrm_clamp_as_the_scaffold():
    # the scaffold's current ICRM clamps the prediction before both views (clamp_input=True);
    # its first revision (clamp=False) left the weak view raw, only the jitter clamped the strong
    x = torch.rand(2, 3, 20, 20) * 1.6 - 0.3
    torch.manual_seed(7)
    weak, strong = icrm_views(x)
    assert weak.min() < 0 and weak.max() > 1 and 0 <= strong.min() and strong.max() <= 1
    torch.manual_seed(7)
    assert torch.allclose(ICRMLoss(clamp=False)(x), F.mse_loss(weak, strong))
    torch.manual_seed(7)
    weak_c, strong_c = icrm_views(x.clamp(0, 1))
    torch.manual_seed(7)
    assert torch.allclose(ICRMLoss()(x), F.mse_loss(weak_c, strong_c))
    assert not torch.allclose(F.mse_loss(weak_c, strong_c), F.mse_loss(weak, strong))
    # and its views carry gradients (the first revision's no_grad views trained nothing)
    p = x.clone().requires_grad_()
    ICRMLoss()(p.sigmoid()).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def _degradations(t, g):
    noisy = (t + 0.1 * torch.randn(t.shape, generator=g, dtype=t.dtype)).clamp(0, 1)
    blurred = F.avg_pool2d(F.pad(t, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    one_channel = t.clone()
    noise = 0.3 * torch.randn(one_channel[:, :1].shape, generator=g, dtype=t.dtype)
    one_channel[:, :1] = (one_channel[:, :1] + noise).clamp(0, 1)
    return {"noise": noisy, "blur": blurred, "one channel": one_channel}


@pytest.mark.parametrize("channels", [3, 1])
def test_ms_ssim_equals_pytorch_msssim(channels):
    # the standard definition: per-channel product over the five scales with the published
    # weights (not renormalised), then the mean over channels. 192 x 200: all five scales,
    # odd sides at the coarse scales (the pooling convention matters there)
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(2, channels, 24, 25, generator=g, dtype=torch.float64),
                         size=(192, 200), mode="bicubic", align_corners=False).clamp(0, 1)
    for name, p in _degradations(base, g).items():
        if channels == 1 and name == "one channel":
            continue
        want = pytorch_msssim.ms_ssim(p, base, data_range=1.0, size_average=False)
        got = ms_ssim(p, base)
        assert torch.allclose(got, want, rtol=0, atol=1e-6), (name, got, want)
        loss = MSSSIMLoss()(p.float(), base.float())
        assert loss.item() == pytest.approx(1 - want.mean().item(), abs=1e-5)
