"""Degradations: statistics (noise sigma, haze transmission, low-light mean, ...), seeding,
registry."""
import math

import pytest
import torch

from irblocks.registry import build, list_names
from irblocks.train.degradations import (
    CDD11,
    CDD11_COMBOS,
    JPEG,
    Compose,
    GaussianNoise,
    Haze,
    LowLight,
    MotionBlur,
    Rain,
    Snow,
    build_degradation,
    line_kernel,
    parse_degradation,
)

NAMES = ["gaussian_noise", "haze", "rain", "snow", "motion_blur", "low_light", "jpeg", "compose",
         "cdd11"]


def grey(v=0.5, h=128, w=128):
    return torch.full((3, h, w), v)


def texture(h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g)


def test_registered():
    import irblocks.train  # noqa: F401
    assert set(NAMES) <= set(list_names("degradation"))
    assert isinstance(build({"type": "gaussian_noise", "sigma": 15}, "degradation"), GaussianNoise)


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_noise_sigma_float_convention(sigma):
    x = grey(0.5, 256, 256)
    y = GaussianNoise(sigma, convention="float")(x, seed=0)
    d = (y - x) * 255
    assert d.std().item() == pytest.approx(sigma, rel=0.02)
    assert abs(d.mean().item()) < 0.02 * sigma


@pytest.mark.parametrize("sigma", [15, 25, 50])
def test_noise_sigma_uint8_convention(sigma):
    x = grey(128 / 255, 256, 256)
    y = GaussianNoise(sigma)(x, seed=0)
    d = (y - x) * 255
    # quantised to 1/255 and clipped to [0, 1]
    assert torch.allclose(y * 255, torch.round(y * 255), atol=1e-4)
    assert y.min() >= 0 and y.max() <= 1
    # truncation to uint8 lowers the mean by ~0.5 levels; the std stays sigma (+1/12 quantisation)
    assert d.mean().item() == pytest.approx(-0.5, abs=0.02 * sigma + 0.1)
    if sigma < 50:    # at 50 clipping at 0/255 (2.5 sigma) starts to shrink the spread
        assert d.std().item() == pytest.approx(math.sqrt(sigma ** 2 + 1 / 12), rel=0.02)
    # clipping: a black image only gets brighter, unlike the float convention
    assert GaussianNoise(sigma)(grey(0.0), seed=1).min() == 0
    assert GaussianNoise(sigma, convention="float")(grey(0.0), seed=1).min() < 0


def test_noise_blind_range_and_seed():
    n = GaussianNoise(10, sigma_max=50, convention="float")
    stds = [((n(grey(0.5, 64, 64), seed=s) - 0.5) * 255).std().item() for s in range(20)]
    assert 9 < min(stds) and max(stds) < 52 and max(stds) - min(stds) > 15
    a = GaussianNoise(25)(texture(), seed=3)
    assert torch.equal(a, GaussianNoise(25)(texture(), seed=3))
    assert not torch.equal(a, GaussianNoise(25)(texture(), seed=4))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(GaussianNoise(25)(texture(), generator=g1),
                       GaussianNoise(25)(texture(), generator=g2))


@pytest.mark.parametrize("beta", [0.6, 1.2, 2.0])
def test_haze_transmission_range(beta):
    hz = Haze(beta_min=beta, beta_max=beta, airlight_min=0.9, airlight_max=0.9)
    t = hz.transmission(64, 80, torch.Generator().manual_seed(0))
    assert t.min().item() == pytest.approx(math.exp(-beta), rel=1e-4)
    assert t.max().item() == pytest.approx(1.0, abs=1e-6)
    # the proxy puts the far field (low transmission) at the top on average
    assert t[:16].mean() < t[-16:].mean()
    # the output follows I = J t + A (1 - t) with that t
    x = texture(64, 80)
    y = hz(x, seed=0)
    t2 = hz.transmission(64, 80, torch.Generator().manual_seed(0))
    assert torch.allclose(y, (x * t2 + 0.9 * (1 - t2)).clamp(0, 1), atol=1e-6)
    # haze lowers contrast and pulls the mean toward A
    assert y.std() < x.std() and abs(y.mean() - 0.9) < abs(x.mean() - 0.9)


def test_haze_with_depth():
    depth = torch.linspace(0, 10, 32).view(1, 32).expand(16, 32)
    hz = Haze(beta_min=1.0, beta_max=1.0, airlight_min=1.0, airlight_max=1.0)
    y = hz(grey(0.0, 16, 32), seed=0, depth=depth)
    exp = 1 - torch.exp(-depth / 10)          # J = 0, A = 1: I = 1 - t, depth normalised to [0, 1]
    assert torch.allclose(y[0], exp, atol=1e-6)
    with pytest.raises(ValueError, match="non-negative"):
        hz(grey(0.0, 16, 32), depth=-depth - 1)


def test_low_light_mean():
    x = grey(0.5, 64, 64)
    ll = LowLight(gamma_min=2.0, gamma_max=2.0, scale_min=0.5, scale_max=0.5, noise_min=0,
                  noise_max=0)
    assert ll(x, seed=0).mean().item() == pytest.approx(0.5 * 0.5 ** 2, abs=1e-6)
    ll = LowLight(gamma_min=2.0, gamma_max=2.0, scale_min=0.5, scale_max=0.5, noise_min=10,
                  noise_max=10)
    y = ll(x, seed=0)
    assert y.mean().item() == pytest.approx(0.125, abs=0.003)
    assert (y * 255 - 0.125 * 255).std().item() == pytest.approx(10, rel=0.05)
    ys = [LowLight()(x, seed=s).mean().item() for s in range(10)]
    lo, hi = 0.5 * 0.5 ** 3.5, 0.9 * 0.5 ** 2.0
    assert all(lo - 0.01 < v < hi + 0.01 for v in ys) and max(ys) - min(ys) > 0.02


def test_line_kernel_and_motion_blur():
    for length, angle in [(1, 0), (7, 0), (9, 45), (15, 90), (10.5, 33)]:
        k = line_kernel(length, angle)
        assert k.sum().item() == pytest.approx(1.0) and k.shape[0] % 2 == 1 and (k >= 0).all()
    k = line_kernel(7, 0)
    assert k[k.shape[0] // 2].sum() > 0.99            # horizontal line on the centre row
    k = line_kernel(7, 90)
    assert k[:, k.shape[1] // 2].sum() > 0.99
    mb = MotionBlur(length_min=9, length_max=9, angle_min=0, angle_max=0)
    assert torch.allclose(mb(grey(0.3, 32, 32), seed=0), grey(0.3, 32, 32), atol=1e-6)
    x = texture()
    y = mb(x, seed=0)
    dx = lambda z: (z[..., 1:] - z[..., :-1]).abs().mean()  # noqa: E731
    dy = lambda z: (z[..., 1:, :] - z[..., :-1, :]).abs().mean()  # noqa: E731
    # horizontal blur: horizontal detail goes first
    assert dx(y) < 0.3 * dx(x) and dx(y) < 0.4 * dy(y)


def test_rain_streaks():
    rn = Rain(angle_min=0, angle_max=0, density_min=0.02, density_max=0.02)
    x = grey(0.3, 96, 96)
    y = rn(x, seed=0)
    d = (y - x)[0]
    assert (d >= 0).all() and d.max() > 0.2
    frac = (d > 0.02).float().mean().item()
    assert 0.05 < frac < 0.9                           # streaks cover part of the image
    # vertical streaks: neighbours along the streak correlate far more than across it
    dc = d - d.mean()
    along = (dc[1:] * dc[:-1]).mean() / dc.var()
    across = (dc[:, 1:] * dc[:, :-1]).mean() / dc.var()
    assert along > 0.8 and along > across + 0.2


def test_snow_jpeg():
    x = texture()
    s = Snow()(x, seed=0)
    assert s.shape == x.shape and (s >= x - 1e-6).all() and (s > x + 0.05).any()
    j = JPEG(quality_min=10, quality_max=10)(x, seed=0)
    err = (j - x).pow(2).mean().sqrt().item()
    assert 0.01 < err < 0.4
    assert torch.equal(j, JPEG(10, 10)(x, seed=5))
    assert JPEG(95, 95)(x, seed=0).sub(x).abs().mean() < JPEG(10, 10)(x, seed=0).sub(x).abs().mean()


@pytest.mark.parametrize("combo", CDD11_COMBOS)
def test_cdd11_combos(combo):
    d = CDD11(combo)
    x = texture(40, 40)
    y = d(x, seed=1)
    assert y.shape == x.shape and torch.isfinite(y).all() and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y, d(x, seed=1))
    names = [s.name for s in d.steps]
    order = ["haze", "rain", "snow", "low_light"]
    assert names == sorted(names, key=order.index)
    if "low" in combo:
        assert names[-1] == "low_light" and y.mean() < x.mean()


def test_batches_specs_and_errors():
    x = torch.stack([texture(seed=0), texture(seed=1)])
    y = build_degradation("gaussian_noise:sigma=50,convention=float")(x, seed=0)
    assert y.shape == x.shape and ((y - x) * 255).std().item() == pytest.approx(50, rel=0.03)
    assert (parse_degradation("haze:beta_min=1,beta_max=2")
            == {"type": "haze", "beta_min": 1, "beta_max": 2})
    c = Compose(["haze", {"type": "gaussian_noise", "sigma": 15}])
    assert c(texture(), seed=0).shape == (3, 64, 64)
    for bad, msg in [(lambda: GaussianNoise(-1), "sigma"),
                     (lambda: Haze(beta_min=2, beta_max=1), "haze beta"),
                     (lambda: CDD11("fog"), "combo must be one of"),
                     (lambda: JPEG(0, 10), "jpeg quality"),
                     (lambda: GaussianNoise(25)(torch.zeros(3, 8, 8, dtype=torch.uint8)),
                      "expected a float image"),
                     (lambda: build_degradation("gausian_noise"), "Did you mean")]:
        with pytest.raises(Exception, match=msg):
            bad()
