"""Built-in quality prior: a natural-scene-statistics embedding (BRISQUE-style)."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge

from irblocks.registry import register

from .priors_common import QUALITY_DIM, GuidancePrior, gaussian_blur, lift, luminance, moments

__all__ = ["NSSQualityPrior", "nss_features"]

_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))   # horizontal, vertical, two diagonals


def _mscn(lum: torch.Tensor, c: float = 1.0 / 255) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean-subtracted contrast-normalised coefficients and the local sigma map."""
    mu = gaussian_blur(lum)
    var = (gaussian_blur(lum * lum) - mu * mu).clamp_min(0)
    sigma = var.sqrt()
    return (lum - mu) / (sigma + c), sigma


def _pair_products(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Products of each MSCN coefficient with its neighbour at (dy, dx), flattened."""
    h, w = m.shape[-2:]
    if dy >= h or abs(dx) >= w:
        return m.new_zeros(m.shape[0], 1)
    a = m[..., : h - dy, max(0, -dx): w - max(0, dx)]
    b = m[..., dy:, max(0, dx): w + min(0, dx)]
    return (a * b).flatten(1)


def _asym(x: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, 2): left and right standard deviations (AGGD shape cues)."""
    neg = (x < 0).to(x.dtype)
    pos = 1 - neg
    left = ((x ** 2) * neg).sum(1) / neg.sum(1).clamp_min(1)
    right = ((x ** 2) * pos).sum(1) / pos.sum(1).clamp_min(1)
    return torch.stack([left.sqrt(), right.sqrt()], 1)


def nss_features(img: torch.Tensor, scales: int = 3) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 27 * scales) natural-scene statistics.

    Per scale (each half the previous, area-averaged): MSCN moments (4), mean |MSCN|,
    MSCN left/right deviations (2); for each of 4 neighbour orientations the pairwise
    product's mean, variance and left/right deviations (16); the local sigma map's
    mean and variance (2); plus mean luminance and its std (2).
    """
    lum = luminance(img.float())
    feats = []
    for s in range(scales):
        m, sigma = _mscn(lum)
        flat = m.flatten(1)
        feats += [moments(flat), flat.abs().mean(1, keepdim=True), _asym(flat)]
        for dy, dx in _SHIFTS:
            p = _pair_products(m, dy, dx)
            feats += [p.mean(1, keepdim=True), p.var(1, unbiased=False, keepdim=True), _asym(p)]
        sf = sigma.flatten(1)
        lf = lum.flatten(1)
        feats += [sf.mean(1, keepdim=True), sf.var(1, unbiased=False, keepdim=True),
                  lf.mean(1, keepdim=True), lf.std(1, unbiased=False, keepdim=True)]
        if s + 1 < scales and min(lum.shape[-2:]) >= 2:
            lum = F.avg_pool2d(lum, 2, ceil_mode=True)
    return torch.cat(feats, 1)


@register("prior", "nss_quality", aliases=("quality_nss", "brisque_quality"))
class NSSQualityPrior(GuidancePrior):
    """Parameter-free quality embedding from natural-scene statistics.

    Mean-subtracted contrast-normalised (MSCN) coefficients of the luminance and
    their moments (mean, variance, skewness, kurtosis, asymmetric deviations),
    pairwise-product statistics in four orientations and local-contrast statistics,
    at ``scales`` dyadic scales; lifted to 256 dims by a fixed projection seeded with
    ``seed``. Deterministic; no weights.

    Args:
        scales: number of dyadic scales (>= 1).
        seed: seed of the fixed projection.

    Shapes: (B, 3, H, W) -> {"quality": (B, 256)}.
    """

    OUTPUTS = {"quality": (QUALITY_DIM,)}
    name = "nss_quality"

    def __init__(self, scales: Annotated[int, Ge(1)] = 3, seed: int = 2026):
        super().__init__()
        self.scales, self.seed = scales, seed

    def compute(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        if img.device.type == "meta":
            return {"quality": img.new_zeros(img.shape[0], QUALITY_DIM)}
        f = nss_features(img, self.scales)
        return {"quality": lift(f, QUALITY_DIM, self.seed).to(img.dtype)}
