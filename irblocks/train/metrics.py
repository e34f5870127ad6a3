"""PSNR and SSIM in the conventions of the all-in-one restoration papers.

Default convention (``"aio"``: PromptIR / AirNet / AnyIR / ClearAIR test code):
RGB, images in [0, 1] (clamped), no border crop, per image, then averaged over
images. SSIM as ``skimage.metrics.structural_similarity(..., data_range=1,
channel_axis=-1)`` computes it by default: 7x7 uniform window, sample
covariance (N / (N - 1)), K1 = 0.01, K2 = 0.03, mean over the valid region
(the (win-1)/2 border, where the window would leave the image, is excluded),
averaged over channels.

Options:

* ``ssim_mode="gaussian"``: BasicSR's SSIM: 11x11 Gaussian window (sigma 1.5),
  population covariance, valid region; the same as skimage with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``.
* ``y_channel=True``: both metrics on the ITU-R BT.601 luma that BasicSR uses
  (Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255, range [16/255, 235/255]).
* ``crop_border``: crop this many pixels from every side first (BasicSR's
  super-resolution habit; 0 in the all-in-one papers).

BasicSR additionally quantises to uint8 before measuring (``tensor2img``);
pass ``quantize=True`` for that.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from irblocks.errors import InputError
from irblocks.ssim import gaussian_window, ssim_maps, uniform_window

__all__ = ["psnr", "ssim", "rgb_to_y", "prepare", "batch_psnr", "batch_ssim"]

SSIMMode = Literal["uniform", "gaussian"]


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) BT.601 luma in [16/255, 235/255] (BasicSR's Y)."""
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_y: expected 3 channels (RGB), got {x.shape[1]}")
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (16.0 + (x * w).sum(1, keepdim=True)) / 255.0


def _as4d(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError("metrics: expected C x H x W or B x C x H x W images, got shape "
                         f"{tuple(x.shape)}")
    return x


def _check_images(x: torch.Tensor, name: str) -> None:
    """Metric inputs are float images in [0, 1]. Integer/bool tensors (e.g. uint8 0..255) are
    refused rather than clamped (clamping would collapse them and give PSNR = inf); so is
    a float target far outside [0, 1] (the 0..255 scale). Predictions are clamped as in
    the papers' test code, so only the target's range is checked."""
    if not x.is_floating_point():
        raise InputError(f"metrics: {name} has dtype {x.dtype}; expected floating-point images in "
                         "[0, 1] (convert 0..255 images with x.float() / 255)")
    if name == "target" and x.numel() and x.device.type != "meta":
        lo, hi = float(x.min()), float(x.max())
        if lo < -0.5 or hi > 1.5:
            raise InputError(f"metrics: target values span [{lo:.4g}, {hi:.4g}]; expected "
                             "images in [0, 1] (0..255 images: divide by 255)")


def prepare(pred: torch.Tensor, target: torch.Tensor, y_channel: bool = False, crop_border: int = 0,
            quantize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Clamp to [0, 1], optionally quantise to 1/255, crop the border, convert to Y; float64."""
    pred, target = _as4d(pred), _as4d(target)
    _check_images(pred, "prediction")
    _check_images(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"metrics: prediction and target shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}")
    p = pred.detach().double().clamp(0, 1)
    t = target.detach().double().clamp(0, 1)
    if quantize:
        p, t = torch.round(p * 255) / 255, torch.round(t * 255) / 255
    if crop_border:
        c = int(crop_border)
        p, t = p[..., c:-c, c:-c], t[..., c:-c, c:-c]
    if y_channel:
        p, t = rgb_to_y(p), rgb_to_y(t)
    return p, t


def batch_psnr(pred: torch.Tensor, target: torch.Tensor, y_channel: bool = False,
               crop_border: int = 0, quantize: bool = False) -> torch.Tensor:
    """PSNR in dB per image, shape (B,) (data range 1; inf for identical images)."""
    p, t = prepare(pred, target, y_channel, crop_border, quantize)
    mse = (p - t).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def psnr(pred: torch.Tensor, target: torch.Tensor, y_channel: bool = False, crop_border: int = 0,
         quantize: bool = False) -> float:
    """PSNR (dB) averaged over the images of a batch (or of one C x H x W image)."""
    return float(batch_psnr(pred, target, y_channel, crop_border, quantize).mean())


def _window(mode: str, dtype, device) -> tuple[torch.Tensor, float]:
    """The 1-D window of ``mode`` and its covariance factor (sample N / (N - 1) or 1)."""
    if mode == "uniform":
        k = 7
        return uniform_window(k, dtype, device), k * k / (k * k - 1)
    if mode == "gaussian":
        return gaussian_window(11, 1.5, dtype, device), 1.0
    raise ValueError("ssim: mode must be 'uniform' (scikit-image default) or 'gaussian' "
                     f"(BasicSR), got {mode!r}")


def batch_ssim(pred: torch.Tensor, target: torch.Tensor, mode: SSIMMode = "uniform",
               y_channel: bool = False, crop_border: int = 0,
               quantize: bool = False) -> torch.Tensor:
    """SSIM per image, shape (B,) (see the module docstring for the conventions)."""
    p, t = prepare(pred, target, y_channel, crop_border, quantize)
    g, cov = _window(mode, p.dtype, p.device)
    k = g.numel()
    if min(p.shape[-2:]) < k:
        raise ValueError(f"ssim: images must be at least {k}x{k} for the {mode} window, "
                         f"got {p.shape[-2]}x{p.shape[-1]}")
    s, _ = ssim_maps(p, t, g, data_range=1.0, covariance=cov)
    return s.mean(dim=(2, 3)).mean(1)


def ssim(pred: torch.Tensor, target: torch.Tensor, mode: SSIMMode = "uniform",
         y_channel: bool = False, crop_border: int = 0, quantize: bool = False) -> float:
    """SSIM averaged over the images of a batch (or of one C x H x W image)."""
    return float(batch_ssim(pred, target, mode, y_channel, crop_border, quantize).mean())


def finite_or_none(v: float) -> float | None:
    """JSON-friendly: inf/nan -> None."""
    return v if math.isfinite(v) else None
