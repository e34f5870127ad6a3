"""The SSIM windows and local statistics, written once.

Used by the SSIM metric (:mod:`irblocks.train.metrics`), the MS-SSIM loss
(:mod:`irblocks.losses`), ICRM's blur and the ClearAIR priors' Gaussian blur.

* :func:`gaussian_window`: normalised 1-D Gaussian, taps at ``i - (size - 1) / 2``
  (Wang et al.'s 11-tap, sigma 1.5 window; pytorch-msssim's and BasicSR's).
* :func:`uniform_window`: ``size`` taps of ``1 / size`` (scikit-image's default 7x7).
* :func:`separable_filter`: "valid" depthwise filtering of (B, C, H, W) with the
  outer product of a 1-D window (the output shrinks by ``size - 1`` per side pair).
* :func:`ssim_maps`: the SSIM and contrast-structure maps of Wang et al. (2004) with
  alpha = beta = gamma = 1 over the valid region, per channel.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gaussian_window", "uniform_window", "separable_filter", "ssim_maps"]


def gaussian_window(size: int, sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian of ``size`` taps, shape (size,)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def uniform_window(size: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """1-D box window of ``size`` taps, shape (size,)."""
    return torch.full((size,), 1.0 / size, dtype=dtype, device=device)


def separable_filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Valid filtering of every channel of (B, C, H, W) with the 2-D window g g^T.

    (B, C, H, W) -> (B, C, H - k + 1, W - k + 1) for a window of k taps.
    """
    c, k = x.shape[1], g.numel()
    x = F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim_maps(x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, data_range: float = 1.0,
              k1: float = 0.01, k2: float = 0.03, covariance: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM map and contrast-structure map of two (B, C, H, W) images, each
    (B, C, H - k + 1, W - k + 1).

    ``covariance`` scales the local (co)variances: 1 for the population estimate
    (Gaussian windows), N / (N - 1) for scikit-image's sample estimate.
    """
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mx, my = separable_filter(x, g), separable_filter(y, g)
    sxx = covariance * (separable_filter(x * x, g) - mx * mx)
    syy = covariance * (separable_filter(y * y, g) - my * my)
    sxy = covariance * (separable_filter(x * y, g) - mx * my)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return (2 * mx * my + c1) / (mx * mx + my * my + c1) * cs, cs
