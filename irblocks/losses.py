"""Training losses (registry kind ``"loss"``) and the composite loss of a recipe.

Every loss is an ``nn.Module`` whose ``forward(pred, target)`` returns a scalar
tensor (images B x C x H x W, range [0, 1]). Registered names:

* ``l1``          mean absolute error.
* ``l2`` (``mse``) mean squared error.
* ``charbonnier`` sqrt((pred - target)^2 + eps^2), averaged (eps 1e-3).
* ``ms_ssim``     1 - MS-SSIM (Gaussian 11x11, sigma 1.5, the five standard
  scale weights; scales that no longer fit the window are dropped and the
  remaining weights renormalised, so 32x32 training patches work).
* ``fft``         AnyIR's frequency loss: L1 between the real and imaginary parts
  (stacked on a last axis) of ``torch.fft.rfft2`` of prediction and target
  (default "backward" normalisation, as in the released code).
* ``icrm``        ClearAIR's Internal Clue Reuse Mechanism (Eq. 15-17): the
  restored image is weakly augmented (random crop of ``crop_scale`` of each side,
  bilinearly resized back), the weak view is strongly augmented (brightness,
  contrast and saturation jitter of strength ``jitter`` then a ``blur_kernel``
  Gaussian blur of ``blur_sigma``), and the loss is the mean squared difference
  between the weak and the strong view. Only the prediction is used (the target
  is ignored); gradients flow through both views. The paper's weights
  (alpha = 0.25, gamma = 0.05) go into the recipe's ``weight`` (0.0125).
* ``aux``         the sum of the auxiliary losses the model's blocks recorded in
  their forward (``irblocks.aux_losses(model)``: MoE load balancing, prototype
  orthogonality...). The composite loss adds it with weight 1 when the recipe
  does not list it; list ``{type: aux, weight: w}`` to change the weight
  (0 switches it off).

A recipe's ``loss:`` section is a list of ``{type, weight, ...constructor
args}``; :func:`build_loss` turns it into a :class:`CompositeLoss` whose
``forward(pred, target, model=None)`` returns ``(total, parts)`` with every term
(unweighted, detached) in ``parts``.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Le, Lt
from torch import nn

from irblocks.aux_loss import aux_losses
from irblocks.registry import ConfigError, build, lookup, register
from irblocks.registry.sections import register_section
from irblocks.ssim import gaussian_window, separable_filter, ssim_maps

__all__ = [
    "L1Loss", "L2Loss", "CharbonnierLoss", "MSSSIMLoss", "FFTLoss", "ICRMLoss", "AuxLoss",
    "CompositeLoss", "build_loss", "validate_loss_section", "ms_ssim", "gaussian_window",
    "icrm_views",
]


def _check_pair(pred: torch.Tensor, target: torch.Tensor, where: str) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(f"{where}: expected two tensors (pred, target), got "
                        f"{type(pred).__name__} and {type(target).__name__}")
    if pred.shape != target.shape:
        raise ValueError(f"{where}: prediction and target shapes differ: "
                         f"{tuple(pred.shape)} vs {tuple(target.shape)}")


# --------------------------------------------------------------------------- pixel losses
@register("loss", "l1")
class L1Loss(nn.Module):
    """Mean absolute error. (B, C, H, W) x 2 -> scalar."""

    def __init__(self):
        super().__init__()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "l1 loss")
        return F.l1_loss(pred, target)


@register("loss", "l2", aliases=("mse",))
class L2Loss(nn.Module):
    """Mean squared error. (B, C, H, W) x 2 -> scalar."""

    def __init__(self):
        super().__init__()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "l2 loss")
        return F.mse_loss(pred, target)


@register("loss", "charbonnier")
class CharbonnierLoss(nn.Module):
    """Charbonnier (smooth L1): mean of sqrt((pred - target)^2 + eps^2).

    Args:
        eps: smoothing constant (1e-3 as in MPRNet/Restormer-era code).
    """

    def __init__(self, eps: Annotated[float, Gt(0)] = 1e-3):
        super().__init__()
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "charbonnier loss")
        d = pred - target
        return torch.sqrt(d * d + self.eps ** 2).mean()


# --------------------------------------------------------------------------- MS-SSIM
_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
            sigma: float = 1.5, weights: Sequence[float] = _MS_WEIGHTS) -> torch.Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) per image, shape (B,).

    The standard definition (as pytorch-msssim computes it): at each scale the
    contrast-structure term (the SSIM term at the coarsest) is averaged over the
    pixels of each channel; per channel, the product over scales of term ** weight;
    then the mean over channels. Between scales: 2x2 average pooling, zero-padded by
    one on both sides of an odd dimension (``avg_pool2d(padding=size % 2)``, the
    library's convention). Negative terms are clamped at 0 before the power.

    With the five standard weights, images whose smaller side is at least
    ``win_size * 16`` use all five scales with the weights as published (they sum
    to 1.0001). Smaller images drop the coarsest scales whose side would fall below
    ``win_size``; the remaining weights are then renormalised to sum to 1 (an
    extension: the standard definition is undefined there).
    """
    _check_pair(pred, target, "ms_ssim")
    if min(pred.shape[-2:]) < win_size:
        raise ValueError(f"ms_ssim: images must be at least {win_size}x{win_size} "
                         f"(the window), got {pred.shape[-2]}x{pred.shape[-1]}")
    dtype = pred.dtype if pred.is_floating_point() else torch.float32
    g = gaussian_window(win_size, sigma, dtype=dtype, device=pred.device)
    sizes = [tuple(pred.shape[-2:])]
    while len(sizes) < len(weights):
        nxt = tuple(s // 2 + s % 2 for s in sizes[-1])
        if min(nxt) < win_size:
            break
        sizes.append(nxt)
    n = len(sizes)
    w = torch.tensor(list(weights[:n]), dtype=dtype, device=pred.device)
    if n < len(weights):
        w = w / w.sum()
    x, y = pred, target
    vals = []
    for i in range(n):
        ssim_map, cs_map = ssim_maps(x, y, g, data_range)
        term = ssim_map if i == n - 1 else cs_map
        vals.append(term.flatten(2).mean(-1).clamp_min(0))           # (B, C)
        if i < n - 1:
            pad = (x.shape[-2] % 2, x.shape[-1] % 2)
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
    stack = torch.stack(vals, dim=0)                                  # (scales, B, C)
    # eps keeps the gradient of x**w finite at x = 0
    return torch.prod((stack + 1e-8) ** w.view(-1, 1, 1), dim=0).mean(1)


@register("loss", "ms_ssim", aliases=("msssim",))
class MSSSIMLoss(nn.Module):
    """1 - MS-SSIM, averaged over the batch (ClusIR trains with L1 + MS-SSIM).

    Args:
        win_size: Gaussian window size (11). sigma: its standard deviation (1.5).
        data_range: value range of the images (1.0).
    """

    def __init__(self, win_size: int = 11, sigma: float = 1.5, data_range: float = 1.0):
        super().__init__()
        if win_size < 3 or win_size % 2 == 0:
            raise ValueError(f"ms_ssim: win_size must be an odd number >= 3, got {win_size}")
        if not sigma > 0 or not data_range > 0:
            raise ValueError(f"ms_ssim: sigma and data_range must be > 0, got {sigma}, "
                             f"{data_range}")
        self.win_size, self.sigma, self.data_range = win_size, float(sigma), float(data_range)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        v = ms_ssim(pred.float(), target.float(), self.data_range, self.win_size, self.sigma)
        return 1.0 - v.mean()


# --------------------------------------------------------------------------- FFT
@register("loss", "fft", aliases=("frequency",))
class FFTLoss(nn.Module):
    """AnyIR's frequency loss: L1 on stacked (real, imag) of rfft2(pred) vs rfft2(target).

    Computed in float32 (FFTs of half precision need power-of-two sizes).
    Args:
        norm: ``torch.fft`` normalisation ("backward" = the released code's default).
    """

    def __init__(self, norm: Literal["backward", "ortho", "forward"] = "backward"):
        super().__init__()
        self.norm = norm

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_pair(pred, target, "fft loss")
        p = torch.fft.rfft2(pred.float(), norm=self.norm)
        t = torch.fft.rfft2(target.float(), norm=self.norm)
        return F.l1_loss(torch.stack([p.real, p.imag], dim=-1),
                         torch.stack([t.real, t.imag], dim=-1))


# --------------------------------------------------------------------------- ICRM
_LUMA = (0.299, 0.587, 0.114)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def _blend(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f * a + (1 - f) * b, clamped to [0, 1] (torchvision's float-image rule)."""
    return (f * a + (1 - f) * b).clamp(0, 1)


def icrm_views(x: torch.Tensor, crop_scale: float = 0.7, jitter: float = 0.4, blur_kernel: int = 5,
               blur_sigma: float = 1.0, generator: Optional[torch.Generator] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The weak and strong views of ICRM for a batch (B, C, H, W) in [0, 1].

    weak: per image, a random crop of round(crop_scale * H) x round(crop_scale * W)
    resized back to H x W (bilinear). strong: weak -> brightness, contrast,
    saturation factors each uniform in [1 - jitter, 1 + jitter] (per image) ->
    Gaussian blur (reflect padding). Random draws use ``generator`` (else torch's
    global generator).
    """
    b, c, h, w = x.shape
    ch, cw = max(1, int(h * crop_scale)), max(1, int(w * crop_scale))
    dev = x.device
    tops = torch.randint(0, h - ch + 1, (b,), generator=generator).tolist()
    lefts = torch.randint(0, w - cw + 1, (b,), generator=generator).tolist()
    crops = [x[i:i + 1, :, t:t + ch, l:l + cw] for i, (t, l) in enumerate(zip(tops, lefts))]
    weak = torch.cat([F.interpolate(cr, size=(h, w), mode="bilinear", align_corners=False)
                      for cr in crops], 0)
    f = 1.0 + (torch.rand(3, b, 1, 1, 1, generator=generator) * 2 - 1) * jitter
    f = f.clamp_min(0).to(device=dev, dtype=x.dtype)
    s = (weak * f[0]).clamp(0, 1)                                  # brightness
    mean = _gray(s).mean(dim=(1, 2, 3), keepdim=True)
    s = _blend(s, mean, f[1])                                       # contrast
    if c == 3:
        s = _blend(s, _gray(s), f[2])                               # saturation
    if blur_kernel > 1:
        g = gaussian_window(blur_kernel, blur_sigma, dtype=x.dtype, device=dev)
        r = blur_kernel // 2
        mode = "reflect" if min(h, w) > r else "replicate"
        s = separable_filter(F.pad(s, (r, r, r, r), mode=mode), g)
    return weak, s


@register("loss", "icrm")
class ICRMLoss(nn.Module):
    """ClearAIR's Internal Clue Reuse Mechanism loss: ||weak(pred) - strong(weak(pred))||^2 (mean).

    The target is not used. See :func:`icrm_views` for the augmentations. The
    paper's weights alpha = 0.25 and gamma = 0.05 belong in the recipe's
    ``weight`` (0.0125).

    Args:
        crop_scale: side fraction of the weak random crop (0.7).
        jitter: colour-jitter strength (0.4: factors in [0.6, 1.4]).
        blur_kernel, blur_sigma: the strong view's Gaussian blur (5, 1.0).
        clamp: clamp the prediction to [0, 1] before both views (default), as the
            scaffold's current ICRM does (House-yuyu/ClearAIR src/losses.py,
            ``ICRMConfig.clamp_input = True``, the revision whose views carry gradients).
            ``clamp=False`` is its first revision: the prediction is not clamped, so only
            the strong view is, by torchvision's colour-jitter rule on float images (each
            adjustment clamps to [0, 1]); that revision also computed both views under
            ``no_grad``, so its ICRM trained nothing.
    """

    def __init__(self, crop_scale: Annotated[float, Gt(0), Le(1)] = 0.7,
                 jitter: Annotated[float, Ge(0), Lt(1)] = 0.4, blur_kernel: int = 5,
                 blur_sigma: Annotated[float, Gt(0)] = 1.0, clamp: bool = True):
        super().__init__()
        if blur_kernel < 1 or blur_kernel % 2 == 0:
            raise ValueError(f"icrm: blur_kernel must be an odd number >= 1, got {blur_kernel}")
        self.crop_scale, self.jitter = float(crop_scale), float(jitter)
        self.blur_kernel, self.blur_sigma, self.clamp = blur_kernel, float(blur_sigma), clamp

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        if pred.dim() != 4:
            raise ValueError("icrm loss: expected a B x C x H x W prediction, got shape "
                             f"{tuple(pred.shape)}")
        x = pred.float()
        if self.clamp:
            x = x.clamp(0, 1)
        weak, strong = icrm_views(x, self.crop_scale, self.jitter, self.blur_kernel,
                                  self.blur_sigma)
        return F.mse_loss(weak, strong)


# --------------------------------------------------------------------------- aux
@register("loss", "aux")
class AuxLoss(nn.Module):
    """Sum of the auxiliary losses the model recorded in its last forward (0 if none)."""

    def __init__(self):
        super().__init__()

    def forward(self, pred: torch.Tensor, target: torch.Tensor = None,
                model: nn.Module | None = None):
        vals = list(aux_losses(model).values()) if model is not None else []
        if not vals:
            return pred.new_zeros(())
        return torch.stack([v.float().reshape(()) for v in vals]).sum()


# --------------------------------------------------------------------------- composite
class CompositeLoss(nn.Module):
    """Weighted sum of loss terms; ``forward(pred, target, model=None) -> (total, parts)``.

    ``parts`` maps each term's name (``l1``, ``fft``, ``aux``; repeated types get
    ``#2``...) to its unweighted, detached value. ``aux`` is appended with weight
    ``aux_weight`` unless given in ``terms``.
    """

    def __init__(self, terms: List[Tuple[str, float, nn.Module]], aux_weight: float = 1.0):
        super().__init__()
        names = []
        for name, _, _ in terms:
            n, k = name, 2
            while n in names:
                n, k = f"{name}#{k}", k + 1
            names.append(n)
        self.names = names
        self.weights = [float(w) for _, w, _ in terms]
        self.terms = nn.ModuleList([m for _, _, m in terms])
        if not any(isinstance(m, AuxLoss) for m in self.terms):
            self.names.append("aux")
            self.weights.append(float(aux_weight))
            self.terms.append(AuxLoss())

    def forward(self, pred: torch.Tensor, target: torch.Tensor, model: nn.Module | None = None):
        total = None
        parts: Dict[str, torch.Tensor] = {}
        for name, w, term in zip(self.names, self.weights, self.terms):
            if isinstance(term, AuxLoss):
                if model is None or w == 0:
                    continue
                v = term(pred, target, model=model)
                if not aux_losses(model):
                    continue
            else:
                if w == 0:
                    continue
                v = term(pred, target)
            parts[name] = v.detach()
            total = w * v if total is None else total + w * v
        if total is None:
            total = pred.sum() * 0.0
        return total, parts

    def describe(self) -> str:
        return " + ".join(f"{w:g}*{n}" for n, w in zip(self.names, self.weights))


def _split_term(item: Any, i: int) -> Tuple[str, float, dict]:
    where = f"loss[{i}]"
    if isinstance(item, str):
        return item, 1.0, {}
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected a loss name or a mapping {{type, weight, ...}}, "
                          f"got {type(item).__name__}")
    if "type" not in item:
        raise ConfigError(f"{where}: a loss term needs a 'type' key, got keys {sorted(item)}")
    w = item.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
        raise ConfigError(f"{where}.weight: expected a finite number >= 0, got {w!r}")
    return item["type"], float(w), {k: v for k, v in item.items() if k not in ("type", "weight")}


def build_loss(section: Any = None, aux_weight: float = 1.0) -> CompositeLoss:
    """A :class:`CompositeLoss` from a recipe's ``loss:`` list (default: ``[l1]``).

    Also accepts one mapping or one name.
    """
    if section is None:
        section = [{"type": "l1", "weight": 1.0}]
    if isinstance(section, (str, dict)):
        section = [section]
    if not isinstance(section, (list, tuple)) or not section:
        raise ConfigError(f"loss: expected a non-empty list of {{type, weight, ...}} terms, got "
                          f"{section!r}")
    terms = []
    for i, item in enumerate(section):
        name, w, kwargs = _split_term(item, i)
        entry = lookup("loss", name)
        module = build({"type": name, **kwargs}, "loss", path=f"loss[{i}]")
        terms.append((entry.name, w, module))
    return CompositeLoss(terms, aux_weight=aux_weight)


def check_loss_section(section: Any) -> List[Tuple[str, str]]:
    """(path, message) problems of a recipe's ``loss:`` section: the term form and weight
    (:func:`_split_term`, what :func:`build_loss` applies) and each term's arguments (the
    registry's component check). Registered as the recipe section ``loss``."""
    from irblocks.registry.recipe import check_component
    if isinstance(section, (str, dict)):
        section = [section]
    if not isinstance(section, (list, tuple)) or not section:
        return [("loss",
                 f"expected a non-empty list of {{type, weight, ...}} terms, got {section!r}")]
    out: List[Tuple[str, str]] = []
    for i, item in enumerate(section):
        try:
            _split_term(item, i)
        except ConfigError as e:
            path, _, msg = str(e).partition(": ")
            out.append((path, msg))
            continue
        check_component(item, "loss", f"loss[{i}]", out, ignore=("weight",))
    return out


def validate_loss_section(section: Any) -> List[str]:
    """Errors (one line each, "path: message") in a recipe's ``loss:`` section; [] when valid."""
    return [] if section is None else [f"{p}: {m}" for p, m in check_loss_section(section)]


register_section("loss", check_loss_section,
                 lambda: {"type": "array", "items": {"$ref": "#/$defs/loss_item"}},
                 "weighted loss terms: [{type: <loss>, weight: w, ...}]")
