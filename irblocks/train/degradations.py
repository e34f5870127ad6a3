"""Synthetic degradations (registry kind ``"degradation"``), seeded and reproducible.

A degradation is called on a float image in [0, 1], C x H x W or B x C x H x W:
``deg(img, generator=torch.Generator().manual_seed(s))`` (or ``seed=s``); the same
seed gives the same output on any machine (all draws come from the CPU generator
given; with none, torch's global generator is used). Every image of a batch gets
its own random parameters. The output is float32, same shape, in [0, 1] (except
Gaussian noise in the "float" convention, which is not clipped).

Registered names:

* ``gaussian_noise`` (sigma on the 0-255 scale; 15/25/50 are the benchmark levels).
  ``convention="uint8"`` (default): the AirNet/PromptIR data code: the clean image
  as uint8, plus N(0, sigma^2), clipped to [0, 255] and truncated to uint8 (so the
  effective noise is clipped at black/white and lost below 1/255).
  ``convention="float"``: x + N(0, (sigma/255)^2), no clipping nor quantisation
  (the DnCNN/Restormer-style training convention).
* ``haze``: atmospheric scattering model I = J t + A (1 - t), t = exp(-beta d).
  Without a depth map (``depth=`` argument of the call), a depth proxy is used: a
  top-far vertical ramp mixed with a smooth random field, normalised to [0, 1];
  so t spans [exp(-beta), 1]. ``transmission()`` returns t for inspection.
* ``rain``: rain streaks: sparse random drops blurred along a random line (angle,
  length), added to the image.
* ``snow``: sparse soft flakes of a few sizes, slightly smeared, screen-blended.
* ``motion_blur``: convolution with a random line kernel (angle, length).
* ``low_light``: out = scale * img^gamma + N(0, noise^2), clipped.
* ``jpeg``: JPEG re-encoding (Pillow) at a random quality.
* ``compose``: a list of degradation specs applied in order.
* ``cdd11``: a CDD-11 combination (``low``, ``haze``, ``rain``, ``snow``,
  ``low_haze``, ``low_rain``, ``low_snow``, ``haze_rain``, ``haze_snow``,
  ``low_haze_rain``, ``low_haze_snow``); applied in the physical order
  haze -> rain/snow -> low light.
"""
from __future__ import annotations

import io
import math
from typing import Any, List, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from irblocks.registry import build, register

__all__ = [
    "Degradation", "GaussianNoise", "Haze", "Rain", "Snow", "MotionBlur", "LowLight", "JPEG",
    "Compose", "CDD11", "CDD11_COMBOS", "build_degradation", "parse_degradation", "line_kernel",
]


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    if hi <= lo:
        return float(lo)
    return float(lo + (hi - lo) * torch.rand((), generator=g).item())


def _randint(lo: int, hi: int, g) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (), generator=g).item()) if hi > lo else int(lo)


def _range(name: str, lo: float, hi: float, low_bound: float = 0.0,
           high_bound: float = math.inf) -> None:
    if not (low_bound <= lo <= hi <= high_bound):
        raise ValueError(f"{name}: expected {low_bound} <= min <= max <= {high_bound}, got {lo}, "
                         f"{hi}")


class Degradation:
    """Base class: subclasses implement ``apply(img, g, **kw)`` on one C x H x W float32 image."""

    name = "degradation"

    def __call__(self, img: torch.Tensor, generator: Optional[torch.Generator] = None,
                 seed: Optional[int] = None, **kw) -> torch.Tensor:
        if (not isinstance(img, torch.Tensor) or img.dim() not in (3, 4)
                or not img.is_floating_point()):
            got = (f"{img.dtype} tensor of shape {tuple(img.shape)}"
                   if isinstance(img, torch.Tensor) else type(img).__name__)
            raise ValueError(f"{self.name}: expected a float image C x H x W or B x C x H x W in "
                             f"[0, 1], got {got}")
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        x = img.detach().float()
        if x.dim() == 3:
            return self.apply(x, generator, **kw)
        outs = []
        for i in range(x.shape[0]):
            kwi = {k: (v[i] if isinstance(v, torch.Tensor) and v.dim() == 4 else v)
                   for k, v in kw.items()}
            outs.append(self.apply(x[i], generator, **kwi))
        return torch.stack(outs)

    def apply(self, img: torch.Tensor, g: torch.Generator | None,
              **kw) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        from irblocks.registry import spec_of
        spec = spec_of(self) or {"type": self.name}
        args = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "type")
        return f"{spec['type']}({args})"


def _randn(shape, g) -> torch.Tensor:
    return torch.randn(shape, generator=g)


# --------------------------------------------------------------------------- noise
@register("degradation", "gaussian_noise", aliases=("noise", "denoise"))
class GaussianNoise(Degradation):
    """Additive white Gaussian noise; sigma on the 0-255 scale.

    Args:
        sigma: noise level (15, 25, 50 in the benchmarks).
        sigma_max: if given, sigma is drawn uniformly in [sigma, sigma_max] per image (blind).
        convention: "uint8" (AirNet/PromptIR: clip to [0, 255] and truncate to uint8)
            or "float" (no clipping or quantisation).
    """

    name = "gaussian_noise"

    def __init__(self, sigma: float = 25.0, sigma_max: Optional[float] = None,
                 convention: Literal["uint8", "float"] = "uint8"):
        if sigma < 0 or (sigma_max is not None and sigma_max < sigma):
            raise ValueError(f"gaussian_noise: need 0 <= sigma <= sigma_max, got sigma={sigma}, "
                             f"sigma_max={sigma_max}")
        if convention not in ("uint8", "float"):
            raise ValueError("gaussian_noise: convention must be 'uint8' or 'float', got "
                             f"{convention!r}")
        self.sigma, self.sigma_max, self.convention = float(sigma), sigma_max, convention

    def apply(self, img, g, **kw):
        s = self.sigma if self.sigma_max is None else _uniform(self.sigma, float(self.sigma_max), g)
        n = _randn(img.shape, g)
        if self.convention == "float":
            return img + n * (s / 255.0)
        x = torch.round(img.clamp(0, 1) * 255.0)
        return torch.floor((x + n * s).clamp(0, 255)) / 255.0


# --------------------------------------------------------------------------- haze
def _smooth_field(h: int, w: int, g, cells: int = 4) -> torch.Tensor:
    coarse = torch.rand((1, 1, cells, cells), generator=g)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0, 0]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)


@register("degradation", "haze", aliases=("dehaze",))
class Haze(Degradation):
    """Atmospheric scattering: I = J t + A (1 - t), t = exp(-beta d), d in [0, 1].

    Args:
        beta_min, beta_max: scattering coefficient range (per image).
        airlight_min, airlight_max: global atmospheric light A range (grey).
        ramp: weight of the vertical top-far ramp in the depth proxy (the rest is
            a smooth random field).
    A depth map (H x W, any positive scale; normalised to [0, 1]) may be passed
    as ``haze(img, depth=d)``.
    """

    name = "haze"

    def __init__(self, beta_min: float = 0.6, beta_max: float = 2.0, airlight_min: float = 0.7,
                 airlight_max: float = 1.0, ramp: float = 0.6):
        _range("haze beta", beta_min, beta_max)
        _range("haze airlight", airlight_min, airlight_max, 0.0, 1.0)
        _range("haze ramp", ramp, ramp, 0.0, 1.0)
        self.beta = (float(beta_min), float(beta_max))
        self.airlight = (float(airlight_min), float(airlight_max))
        self.ramp = float(ramp)

    def depth_proxy(self, h: int, w: int, g) -> torch.Tensor:
        ramp = torch.linspace(1.0, 0.0, h).view(h, 1).expand(h, w)
        return _normalise(self.ramp * ramp + (1 - self.ramp) * _smooth_field(h, w, g))

    def transmission(self, h: int, w: int, g=None, depth: torch.Tensor | None = None,
                     beta: float | None = None) -> torch.Tensor:
        if depth is None:
            d = self.depth_proxy(h, w, g)
        else:
            d = torch.as_tensor(depth, dtype=torch.float32).reshape(-1, h, w)[0]
            if bool((d < 0).any()):
                raise ValueError("haze: depth must be non-negative")
            d = _normalise(d)
        b = _uniform(*self.beta, g) if beta is None else beta
        return torch.exp(-b * d)

    def apply(self, img, g, depth=None, **kw):
        _, h, w = img.shape
        t = self.transmission(h, w, g, depth)
        a = _uniform(*self.airlight, g)
        return (img * t + a * (1 - t)).clamp(0, 1)


# --------------------------------------------------------------------------- kernels
def line_kernel(length: float, angle_deg: float, size: int | None = None) -> torch.Tensor:
    """Normalised size x size kernel of an anti-aliased line through the centre.

    ``angle_deg`` is measured from the horizontal axis, counter-clockwise.
    """
    length = max(1.0, float(length))
    size = size or (int(math.ceil(length)) | 1)
    k = torch.zeros(size, size)
    c = (size - 1) / 2
    th = math.radians(angle_deg)
    dx, dy = math.cos(th), -math.sin(th)
    n = max(2, int(length * 4))
    for i in range(n):
        s = (i / (n - 1) - 0.5) * (length - 1)
        x, y = c + s * dx, c + s * dy
        x0, y0 = int(math.floor(x)), int(math.floor(y))
        fx, fy = x - x0, y - y0
        for yy, xx, wgt in ((y0, x0, (1 - fx) * (1 - fy)), (y0, x0 + 1, fx * (1 - fy)),
                            (y0 + 1, x0, (1 - fx) * fy), (y0 + 1, x0 + 1, fx * fy)):
            if 0 <= yy < size and 0 <= xx < size:
                k[yy, xx] += wgt
    return k / k.sum()


def _conv_same(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Convolve each channel of C x H x W with the 2-D kernel k (reflect, or replicate when
    small)."""
    c, h, w = x.shape
    r = k.shape[-1] // 2
    mode = "reflect" if r < min(h, w) else "replicate"
    xp = F.pad(x.unsqueeze(0), (r, r, r, r), mode=mode)
    return F.conv2d(xp, k.view(1, 1, *k.shape).expand(c, 1, *k.shape), groups=c)[0]


@register("degradation", "motion_blur", aliases=("deblur", "blur"))
class MotionBlur(Degradation):
    """Linear motion blur: a line kernel of random length (pixels) and angle (degrees)."""

    name = "motion_blur"

    def __init__(self, length_min: float = 5.0, length_max: float = 15.0,
                 angle_min: float = 0.0, angle_max: float = 180.0):
        _range("motion_blur length", length_min, length_max, 1.0)
        _range("motion_blur angle", angle_min, angle_max, -360.0, 360.0)
        self.length = (float(length_min), float(length_max))
        self.angle = (float(angle_min), float(angle_max))

    def apply(self, img, g, **kw):
        k = line_kernel(_uniform(*self.length, g), _uniform(*self.angle, g))
        return _conv_same(img, k).clamp(0, 1)


# --------------------------------------------------------------------------- rain / snow
@register("degradation", "rain", aliases=("derain",))
class Rain(Degradation):
    """Rain streaks: sparse uniform noise, blurred along a random line, added.

    Args:
        density_min, density_max: fraction of pixels seeding a drop.
        length_min, length_max: streak length in pixels.
        angle_min, angle_max: streak angle from vertical, degrees.
        intensity_min, intensity_max: streak brightness gain.
    """

    name = "rain"

    def __init__(self, density_min: float = 0.01, density_max: float = 0.04,
                 length_min: float = 10.0, length_max: float = 30.0, angle_min: float = -30.0,
                 angle_max: float = 30.0, intensity_min: float = 0.6, intensity_max: float = 1.0):
        _range("rain density", density_min, density_max, 0.0, 1.0)
        _range("rain length", length_min, length_max, 1.0)
        _range("rain angle", angle_min, angle_max, -90.0, 90.0)
        _range("rain intensity", intensity_min, intensity_max)
        self.density = (float(density_min), float(density_max))
        self.length = (float(length_min), float(length_max))
        self.angle = (float(angle_min), float(angle_max))
        self.intensity = (float(intensity_min), float(intensity_max))

    def streaks(self, h: int, w: int, g) -> torch.Tensor:
        """The H x W streak layer in [0, 1]."""
        dens = _uniform(*self.density, g)
        drops = ((torch.rand((1, h, w), generator=g) < dens).float()
                 * torch.rand((1, h, w), generator=g))
        length = _uniform(*self.length, g)
        k = line_kernel(length, 90.0 + _uniform(*self.angle, g))
        s = _conv_same(drops, k)[0] * length * 0.5
        return s.clamp(0, 1)

    def apply(self, img, g, **kw):
        _, h, w = img.shape
        s = self.streaks(h, w, g) * _uniform(*self.intensity, g)
        return (img + s.unsqueeze(0)).clamp(0, 1)


@register("degradation", "snow", aliases=("desnow",))
class Snow(Degradation):
    """Snow: sparse soft flakes (Gaussian blobs of a random size), slightly smeared,
    screen-blended."""

    name = "snow"

    def __init__(self, density_min: float = 0.002, density_max: float = 0.008,
                 size_min: float = 0.8, size_max: float = 2.0, intensity_min: float = 0.7,
                 intensity_max: float = 1.0):
        _range("snow density", density_min, density_max, 0.0, 1.0)
        _range("snow size", size_min, size_max, 0.1)
        _range("snow intensity", intensity_min, intensity_max, 0.0, 1.0)
        self.density = (float(density_min), float(density_max))
        self.size = (float(size_min), float(size_max))
        self.intensity = (float(intensity_min), float(intensity_max))

    def apply(self, img, g, **kw):
        _, h, w = img.shape
        dens = _uniform(*self.density, g)
        flakes = (torch.rand((1, h, w), generator=g) < dens).float()
        sig = _uniform(*self.size, g)
        r = max(1, int(math.ceil(3 * sig)))
        x = torch.arange(-r, r + 1, dtype=torch.float32)
        gk = torch.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sig ** 2))
        layer = _conv_same(flakes, gk)[0]
        layer = _conv_same(layer.unsqueeze(0), line_kernel(3.0, 90 + _uniform(-20, 20, g)))[0]
        layer = (layer / layer.max().clamp_min(1e-6)).clamp(0, 1) * _uniform(*self.intensity, g) \
            if bool(layer.max() > 0) else layer
        return 1 - (1 - img) * (1 - layer.unsqueeze(0))


# --------------------------------------------------------------------------- low light
@register("degradation", "low_light", aliases=("lowlight", "low"))
class LowLight(Degradation):
    """Low light: out = clip(scale * img^gamma + N(0, (noise/255)^2)); parameters per image.

    Args:
        gamma_min, gamma_max: gamma (> 1 darkens mid-tones).
        scale_min, scale_max: global exposure scale.
        noise_min, noise_max: sensor noise sigma on the 0-255 scale.
    """

    name = "low_light"

    def __init__(self, gamma_min: float = 2.0, gamma_max: float = 3.5, scale_min: float = 0.5,
                 scale_max: float = 0.9, noise_min: float = 0.0, noise_max: float = 8.0):
        _range("low_light gamma", gamma_min, gamma_max, 0.01)
        _range("low_light scale", scale_min, scale_max, 0.0, 1.0)
        _range("low_light noise", noise_min, noise_max)
        self.gamma = (float(gamma_min), float(gamma_max))
        self.scale = (float(scale_min), float(scale_max))
        self.noise = (float(noise_min), float(noise_max))

    def apply(self, img, g, **kw):
        gm, sc, ns = _uniform(*self.gamma, g), _uniform(*self.scale, g), _uniform(*self.noise, g)
        out = sc * img.clamp(0, 1) ** gm + _randn(img.shape, g) * (ns / 255.0)
        return out.clamp(0, 1)


# --------------------------------------------------------------------------- JPEG
@register("degradation", "jpeg", aliases=("dejpeg",))
class JPEG(Degradation):
    """JPEG compression artefacts (Pillow, 4:2:0 chroma subsampling) at a random quality."""

    name = "jpeg"

    def __init__(self, quality_min: int = 10, quality_max: int = 40):
        _range("jpeg quality", quality_min, quality_max, 1, 100)
        self.quality = (int(quality_min), int(quality_max))

    def apply(self, img, g, **kw):
        from PIL import Image
        q = _randint(*self.quality, g)
        c = img.shape[0]
        arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        pil = Image.fromarray(arr[..., 0] if c == 1 else arr)
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=q)
        buf.seek(0)
        out = np.asarray(Image.open(buf).convert("L" if c == 1 else "RGB"),
                         dtype=np.float32) / 255.0
        t = torch.from_numpy(out.copy())
        return t.unsqueeze(0) if c == 1 else t.permute(2, 0, 1).contiguous()


# --------------------------------------------------------------------------- composites
def build_degradation(spec: Any) -> Degradation:
    """A degradation from a name, ``{type: ..., ...}``, a "name:k=v,k=v" string, or an instance."""
    if isinstance(spec, Degradation):
        return spec
    if isinstance(spec, str) and (":" in spec or "=" in spec):
        spec = parse_degradation(spec)
    return build(spec, "degradation")


def parse_degradation(text: str) -> dict:
    """"gaussian_noise:sigma=25,convention=float" -> {"type": "gaussian_noise", "sigma": 25.0,
    ...}."""
    from irblocks.registry.recipe import parse_yaml
    name, _, rest = text.partition(":")
    spec: dict = {"type": name.strip()}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        if "=" not in part:
            raise ValueError(f"degradation {text!r}: expected key=value after ':', got {part!r}")
        k, v = part.split("=", 1)
        spec[k.strip()] = parse_yaml(v, f"degradation {text!r}", k.strip())
    return spec


@register("degradation", "compose")
class Compose(Degradation):
    """Apply several degradations in order (``steps``: list of degradation specs)."""

    name = "compose"

    def __init__(self, steps: List[Any] = ()):
        if not steps:
            raise ValueError("compose: steps must list at least one degradation")
        self.steps = [build_degradation(s) for s in steps]

    def apply(self, img, g, **kw):
        for s in self.steps:
            img = s.apply(img, g, **(kw if isinstance(s, Haze) else {}))
        return img


CDD11_COMBOS = ("low", "haze", "rain", "snow", "low_haze", "low_rain", "low_snow", "haze_rain",
                "haze_snow", "low_haze_rain", "low_haze_snow")


@register("degradation", "cdd11")
class CDD11(Compose):
    """A CDD-11-style composite (e.g. ``combo: low_haze_rain``), applied haze -> rain/snow -> low
    light."""

    name = "cdd11"

    def __init__(self, combo: str = "low_haze_rain"):
        if combo not in CDD11_COMBOS:
            raise ValueError(f"cdd11: combo must be one of {', '.join(CDD11_COMBOS)}, got "
                             f"{combo!r}")
        parts = combo.split("_")
        order = [p for p in ("haze", "rain", "snow", "low") if p in parts]
        names = {"haze": "haze", "rain": "rain", "snow": "snow", "low": "low_light"}
        super().__init__([names[p] for p in order])
        self.combo = combo
