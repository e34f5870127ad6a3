"""PSNR / SSIM pinned against scikit-image on a fixed image pair (and literal reference values)."""
import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from irblocks.train.metrics import batch_psnr, batch_ssim, psnr, rgb_to_y, ssim

# literal values computed with scikit-image 0.26 on the pair below (a fixed crop of
# skimage.data.astronaut plus seeded Gaussian noise, clipped)
REF = {"psnr": 20.298310001751414, "ssim": 0.48205681457620075, "ssim_gauss": 0.4232471649445542,
       "psnr_y": 25.164197114154522, "ssim_gauss_y": 0.5970716853621731}


@pytest.fixture(scope="module")
def pair():
    import skimage.data
    a = skimage.data.astronaut()[100:164, 200:280].astype(np.float64) / 255
    rng = np.random.default_rng(0)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)  # noqa: E731
    return a, b, t(a), t(b)


def test_psnr_matches_skimage(pair):
    a, b, ta, tb = pair
    ref = peak_signal_noise_ratio(a, b, data_range=1)
    assert psnr(tb, ta) == pytest.approx(ref, abs=1e-9)
    assert ref == pytest.approx(REF["psnr"], abs=1e-9)
    assert psnr(tb.float(), ta.float()) == pytest.approx(ref, abs=1e-4)


def test_ssim_default_is_skimage_default(pair):
    a, b, ta, tb = pair
    # 7x7 uniform, sample covariance
    ref = structural_similarity(b, a, data_range=1, channel_axis=2)
    assert ssim(tb, ta) == pytest.approx(ref, abs=1e-9)
    assert ref == pytest.approx(REF["ssim"], abs=1e-9)
    # the all-in-one code calls it on float32 images
    assert ssim(tb.float(), ta.float()) == pytest.approx(ref, abs=1e-5)


def test_ssim_gaussian_is_basicsr(pair):
    a, b, ta, tb = pair
    # BasicSR's SSIM (11x11 Gaussian, sigma 1.5, population covariance, valid region) ==
    # skimage with gaussian_weights and without the sample-covariance correction
    ref = structural_similarity(b * 255, a * 255, data_range=255, channel_axis=2,
                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert ssim(tb, ta, mode="gaussian") == pytest.approx(ref, abs=1e-9)
    assert ref == pytest.approx(REF["ssim_gauss"], abs=1e-9)
    # the two conventions differ by several hundredths
    assert abs(ssim(tb, ta) - ssim(tb, ta, mode="gaussian")) > 0.02


def test_y_channel_matches_skimage_ycbcr(pair):
    a, b, ta, tb = pair
    ya, yb = rgb2ycbcr(a)[..., 0] / 255, rgb2ycbcr(b)[..., 0] / 255
    assert torch.allclose(rgb_to_y(ta[None])[0, 0], torch.from_numpy(ya), atol=1e-12)
    ref_p = peak_signal_noise_ratio(ya, yb, data_range=1)
    ref_s = structural_similarity(yb * 255, ya * 255, data_range=255, gaussian_weights=True,
                                  sigma=1.5, use_sample_covariance=False)
    assert psnr(tb, ta, y_channel=True) == pytest.approx(ref_p, abs=1e-9)
    assert ssim(tb, ta, mode="gaussian", y_channel=True) == pytest.approx(ref_s, abs=1e-9)
    assert ref_p == pytest.approx(REF["psnr_y"], abs=1e-9)
    assert ref_s == pytest.approx(REF["ssim_gauss_y"], abs=1e-9)


def test_batch_crop_and_edge_cases(pair):
    a, b, ta, tb = pair
    x = torch.stack([tb, ta])
    y = torch.stack([ta, ta])
    ps = batch_psnr(x, y)
    assert ps[0] == pytest.approx(REF["psnr"]) and torch.isinf(ps[1])
    assert batch_ssim(x, y)[1] == pytest.approx(1.0)
    ref = peak_signal_noise_ratio(a[4:-4, 4:-4], b[4:-4, 4:-4], data_range=1)
    assert psnr(tb, ta, crop_border=4) == pytest.approx(ref, abs=1e-9)
    # values outside [0, 1] are clamped (the papers clamp the network output)
    assert psnr(tb + 5, ta) == psnr(torch.ones_like(tb), ta)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(tb, ta[:, :-1])
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(tb[:, :5, :5], ta[:, :5, :5])
