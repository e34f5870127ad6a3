"""Built-in degradation prior: classical degradation estimates and a content descriptor."""
from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge

from irblocks.registry import register

from .priors_common import (
    CONTENT_DIM,
    DEGRADATION_DIM,
    GuidancePrior,
    box_blur,
    lift,
    luminance,
    moments,
)

__all__ = ["ClassicalDegradationPrior", "degradation_features", "content_features"]

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
_LAPLACE = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def _conv3(x: torch.Tensor, k) -> torch.Tensor:
    w = x.new_tensor(k).view(1, 1, 3, 3)
    mode = "reflect" if min(x.shape[-2:]) > 1 else "replicate"
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode=mode), w)


def _gradients(lum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gx = _conv3(lum, _SOBEL_X)
    gy = _conv3(lum, tuple(zip(*_SOBEL_X)))
    return gx, gy


def _haar_hh(lum: torch.Tensor) -> torch.Tensor:
    """Finest diagonal Haar detail band (orthonormal), (B, 1, ceil(H/2), ceil(W/2))."""
    h, w = lum.shape[-2:]
    x = F.pad(lum, (0, w % 2, 0, h % 2), mode="replicate")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a - b - c + d) / 2


def _min_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    p = k // 2
    return -F.max_pool2d(F.pad(-x, (p, p, p, p), mode="replicate"), k, stride=1)


def _quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row quantile of (B, N) by sorting (torch.quantile has size limits)."""
    s, _ = x.sort(1)
    i = min(s.shape[1] - 1, max(0, int(round(q * (s.shape[1] - 1)))))
    return s[:, i]


def degradation_features(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 30) classical degradation estimates.

    - noise: sigma = median(|HH|) / 0.6745 of the finest Haar diagonal band (Donoho),
      at two scales;
    - haze: dark channel (min over RGB, 15x15 min filter; smaller on small images):
      mean, 90th percentile, the atmospheric light (mean of the brightest 0.1 %) and the
      transmission estimate 1 - 0.95 * dark / A;
    - low light: mean and log-mean luminance, RMS contrast, fraction of pixels < 0.1,
      fraction > 0.9;
    - blur: variance of the Laplacian at three scales, mean gradient magnitude;
    - streaks: magnitude-weighted histogram of gradient orientations (8 bins) and the
      structure-tensor coherence (oriented energy concentration).
    """
    x = img.float().clamp(0, 1)
    b = x.shape[0]
    lum = luminance(x)
    feats = []
    # noise (two scales)
    l2 = lum
    for _ in range(2):
        hh = _haar_hh(l2).flatten(1)
        feats.append(hh.abs().median(1).values.unsqueeze(1) / 0.6745)
        if min(l2.shape[-2:]) >= 2:
            l2 = F.avg_pool2d(l2, 2, ceil_mode=True)
    # haze: dark channel prior
    k = max(1, min(15, 2 * (min(x.shape[-2:]) // 4) + 1))
    dark = _min_filter(x.min(1, keepdim=True).values, k).flatten(1)
    n_top = max(1, dark.shape[1] // 1000)
    top = dark.topk(n_top, dim=1).indices
    atm = x.flatten(2).max(1).values.gather(1, top).mean(1, keepdim=True).clamp_min(1e-3)
    trans = 1 - 0.95 * dark / atm
    feats += [dark.mean(1, keepdim=True), _quantile(dark, 0.9).unsqueeze(1), atm,
              trans.mean(1, keepdim=True), trans.std(1, unbiased=False, keepdim=True)]
    # low light
    lf = lum.flatten(1)
    feats += [lf.mean(1, keepdim=True), torch.log(lf + 1e-3).mean(1, keepdim=True),
              lf.std(1, unbiased=False, keepdim=True), (lf < 0.1).float().mean(1, keepdim=True),
              (lf > 0.9).float().mean(1, keepdim=True)]
    # blur: Laplacian variance at three scales
    l3 = lum
    for _ in range(3):
        feats.append(_conv3(l3, _LAPLACE).flatten(1).var(1, unbiased=False, keepdim=True))
        if min(l3.shape[-2:]) >= 2:
            l3 = F.avg_pool2d(l3, 2, ceil_mode=True)
    gx, gy = _gradients(lum)
    mag = (gx * gx + gy * gy).sqrt().flatten(1)
    feats.append(mag.mean(1, keepdim=True))
    # streaks: oriented gradient energy
    theta = torch.atan2(gy, gx).flatten(1) % math.pi                     # orientation in [0, pi)
    bins = (theta / math.pi * 8).long().clamp(0, 7)
    hist = x.new_zeros(b, 8).scatter_add_(1, bins, mag)
    hist = hist / hist.sum(1, keepdim=True).clamp_min(1e-8)
    jxx, jyy, jxy = (gx * gx).mean((1, 2, 3)), (gy * gy).mean((1, 2, 3)), (gx * gy).mean((1, 2, 3))
    coherence = ((jxx - jyy) ** 2 + 4 * jxy ** 2).sqrt() / (jxx + jyy).clamp_min(1e-8)
    feats += [hist, coherence.unsqueeze(1), torch.stack([jxx, jyy, jxy], 1)]
    return torch.cat(feats, 1)


def content_features(img: torch.Tensor, scales: int = 3, grid: int = 4) -> torch.Tensor:
    """(B, 3, H, W) -> (B, F) multi-scale colour and texture statistics.

    Per scale: RGB mean and std, opponent-colour (R-G, (R+G)/2-B) mean and std,
    gradient-magnitude moments, local-variance mean; at full scale also an 8-bin
    histogram per RGB channel and a grid x grid layout of luminance means.
    """
    x = img.float().clamp(0, 1)
    feats = []
    cur = x
    for s in range(scales):
        flat = cur.flatten(2)
        feats += [flat.mean(2), flat.std(2, unbiased=False)]
        rg = (cur[:, 0] - cur[:, 1]).flatten(1)
        yb = ((cur[:, 0] + cur[:, 1]) / 2 - cur[:, 2]).flatten(1)
        feats += [torch.stack([rg.mean(1), rg.std(1, unbiased=False), yb.mean(1),
                               yb.std(1, unbiased=False)], 1)]
        lum = luminance(cur)
        gx, gy = _gradients(lum)
        feats.append(moments((gx * gx + gy * gy).sqrt().flatten(1)))
        loc_var = (box_blur(lum * lum, 3) - box_blur(lum, 3) ** 2).clamp_min(0)
        feats.append(loc_var.flatten(1).mean(1, keepdim=True))
        if s + 1 < scales and min(cur.shape[-2:]) >= 2:
            cur = F.avg_pool2d(cur, 2, ceil_mode=True)
    bins = (x * 8).long().clamp(0, 7).flatten(2)                          # (B, 3, N)
    hist = x.new_zeros(x.shape[0], 3, 8).scatter_add_(2, bins, torch.ones_like(bins, dtype=x.dtype))
    feats.append((hist / bins.shape[2]).flatten(1))
    feats.append(F.adaptive_avg_pool2d(luminance(x), grid).flatten(1))
    return torch.cat(feats, 1)


@register("prior", "classical_degradation", aliases=("degradation_classical",))
class ClassicalDegradationPrior(GuidancePrior):
    """Parameter-free degradation and content embeddings (stand-in for DA-CLIP).

    Degradation: classical estimates (wavelet-MAD noise level, dark-channel haze
    density, luminance/contrast for low light, Laplacian variance for blur, oriented
    gradient energy for streaks), see :func:`degradation_features`. Content:
    multi-scale colour and texture statistics, see :func:`content_features`. Each is
    lifted to 512 dims by a fixed seeded projection.

    Args:
        seed: seed of the degradation projection (content uses ``seed + 1``).
        scales: scales of the content statistics.

    Shapes: (B, 3, H, W) -> {"degradation": (B, 512), "content": (B, 512)}.
    """

    OUTPUTS = {"degradation": (DEGRADATION_DIM,), "content": (CONTENT_DIM,)}
    name = "classical_degradation"

    def __init__(self, seed: int = 2027, scales: Annotated[int, Ge(1)] = 3):
        super().__init__()
        self.seed, self.scales = seed, scales

    def compute(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        if img.device.type == "meta":
            z = img.new_zeros(img.shape[0], DEGRADATION_DIM)
            return {"degradation": z, "content": img.new_zeros(img.shape[0], CONTENT_DIM)}
        d = lift(degradation_features(img), DEGRADATION_DIM, self.seed)
        c = lift(content_features(img, self.scales), CONTENT_DIM, self.seed + 1)
        return {"degradation": d.to(img.dtype), "content": c.to(img.dtype)}
