"""What every ClearAIR guidance prior shares: the interface sizes, output checks,
fixed seeded projections and small image-statistics helpers.

A prior (registry kind ``"prior"``) is a frozen module whose ``forward(img)`` takes the
padded RGB input (B x 3 x H x W, values roughly in [0, 1]) and returns a dict of
tensors; ``provides()`` names the dict keys. The U-Net runs priors under ``no_grad``
and stores each output as guidance field ``prior.<key>``.

Interface sizes are fixed, so the network's size does not depend on the prior
plugged in: quality 256, degradation 512, content 512, masks K x H x W. One exception,
as in ClearAIR's scaffold: ``deqa_quality`` provides DeQA's raw 4096-d hidden state,
which the network reduces to 256 with a trainable Linear
(``shared.quality_adapter.state_dim: 4096``, +1,048,832 parameters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from irblocks.errors import InputError, check_feature
from irblocks.ssim import gaussian_window, separable_filter

__all__ = ["QUALITY_DIM", "DEGRADATION_DIM", "CONTENT_DIM", "GuidancePrior", "PriorOutputError",
           "check_prior_output", "seeded_projection", "lift", "luminance", "box_blur",
           "gaussian_blur"]

QUALITY_DIM = 256
DEGRADATION_DIM = 512
CONTENT_DIM = 512


class PriorOutputError(InputError):
    """A prior returned a tensor of the wrong shape (one-line message naming the prior)."""


def check_prior_output(name: str, key: str, t, batch: int, shape_tail: tuple | None,
                       hw: tuple[int, int] | None = None) -> None:
    """Raise if ``t`` is not (batch, *shape_tail); shape_tail None means (K, H, W) masks."""
    if not isinstance(t, torch.Tensor):
        raise PriorOutputError(f"prior {name!r} output {key!r}: expected a tensor, got "
                               f"{type(t).__name__}")
    if shape_tail is None:
        ok = t.dim() == 4 and t.shape[0] == batch
        want = f"{batch} x K x H x W" + (f" (H x W = {hw[0]} x {hw[1]})" if hw else "")
    else:
        ok = tuple(t.shape) == (batch, *shape_tail)
        want = " x ".join(str(s) for s in (batch, *shape_tail))
    if not ok:
        got = "x".join(str(s) for s in t.shape)
        raise PriorOutputError(f"prior {name!r} output {key!r}: expected shape {want}, got {got}")


class GuidancePrior(nn.Module):
    """Base of the built-in priors and adapters: frozen, no parameters of its own
    that train, validates what ``compute`` returns against ``OUTPUTS``.

    ``OUTPUTS`` maps output key -> tail shape after the batch axis (``None`` for
    K x H x W masks).
    """

    OUTPUTS: dict[str, tuple | None] = {}
    name = "prior"

    def provides(self) -> set[str]:
        return set(self.OUTPUTS)

    def compute(self, img: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        check_feature(img, 3, f"prior {self.name!r} input")
        with torch.no_grad():
            out = self.compute(img)
        if not isinstance(out, dict):
            raise PriorOutputError(f"prior {self.name!r}: compute() must return a dict of tensors "
                                   f"{sorted(self.OUTPUTS)}, got {type(out).__name__}")
        for key, tail in self.OUTPUTS.items():
            if key not in out:
                raise PriorOutputError(f"prior {self.name!r}: output {key!r} is missing "
                                       f"(got keys {sorted(out)})")
            check_prior_output(self.name, key, out[key], img.shape[0], tail)
        return out

    def train(self, mode: bool = True):   # priors stay in eval mode
        return super().train(False)


# --------------------------------------------------------------------------- projections
_PROJ_CACHE: dict[tuple, torch.Tensor] = {}


def seeded_projection(n_in: int, n_out: int, seed: int, device, dtype) -> torch.Tensor:
    """A fixed (n_in, n_out) Gaussian matrix scaled by 1/sqrt(n_in), generated on the CPU
    from ``seed`` (identical on every machine), then moved to ``device``."""
    key = (n_in, n_out, seed)
    w = _PROJ_CACHE.get(key)
    if w is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        w = torch.randn(n_in, n_out, generator=g, dtype=torch.float64, device="cpu") / n_in ** 0.5
        _PROJ_CACHE[key] = w
    return w.to(device=device, dtype=dtype)


def lift(features: torch.Tensor, n_out: int, seed: int) -> torch.Tensor:
    """(B, F) raw statistics -> (B, n_out): signed log compresses their ranges, then a
    fixed seeded projection lifts them to the interface size."""
    f = torch.sign(features) * torch.log1p(features.abs())
    f = torch.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
    return f @ seeded_projection(f.shape[1], n_out, seed, f.device, f.dtype)


# --------------------------------------------------------------------------- image helpers
def luminance(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) Rec.601 luma."""
    w = img.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (img * w).sum(1, keepdim=True)


def _pad_same(x: torch.Tensor, k: int) -> torch.Tensor:
    p = k // 2
    mode = "reflect" if min(x.shape[-2:]) > p else "replicate"
    return F.pad(x, (p, p, p, p), mode=mode)


def box_blur(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.avg_pool2d(_pad_same(x, k), k, stride=1)


def gaussian_blur(x: torch.Tensor, sigma: float = 7 / 6, k: int = 7) -> torch.Tensor:
    """Separable Gaussian blur per channel ('same' size, reflect padding)."""
    g = gaussian_window(k, sigma, dtype=x.dtype, device=x.device)
    return separable_filter(_pad_same(x, k), g)


def moments(x: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, 4): mean, variance, skewness, excess kurtosis."""
    m = x.mean(1, keepdim=True)
    d = x - m
    var = (d ** 2).mean(1, keepdim=True)
    sd = var.clamp_min(1e-12).sqrt()
    skew = (d ** 3).mean(1, keepdim=True) / sd ** 3
    kurt = (d ** 4).mean(1, keepdim=True) / sd ** 4 - 3.0
    return torch.cat([m, var, skew, kurt], 1)
