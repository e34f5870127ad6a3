"""Adapters for the paper's pretrained guidance models: DeQA (quality), SAM 2 (regions),
DA-CLIP (degradation and content).

None of them is fetched at run time: each loads from a local path, and only when its
package is installed; otherwise construction fails with one line saying what to
install and where the weights go. The interface sizes stay fixed (quality 256,
degradation 512, content 512): a backend whose embedding has another width is
reduced by a fixed seeded projection (the learnable adaptation happens in the
network's ``quality_adapter`` / DAM layers, which do not depend on the prior).

Backends are looked up in :data:`LOADERS` (name -> ``loader(path, **options)``
returning a callable) after :data:`REQUIRES` (name -> packages) is checked; tests
and users can put their own loader there. Backend contracts:

* ``deqa``: ``fn(img)`` -> (B, D) hidden state of the token before the quality level;
* ``sam2``: ``fn(img)`` -> list (one per image) of (M_i, H, W) bool masks, largest
  first preferred (the adapter keeps the ``k`` largest);
* ``daclip``: ``fn(img)`` -> (content (B, Dc), degradation (B, Dd)).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch
import torch.nn.functional as F

from irblocks.registry import register

from .priors_common import CONTENT_DIM, DEGRADATION_DIM, QUALITY_DIM, GuidancePrior, PriorOutputError, \
    seeded_projection

__all__ = ["DeQAQualityPrior", "SAM2RegionPrior", "DACLIPDegradationPrior", "LOADERS", "REQUIRES",
           "MissingBackendError"]


class MissingBackendError(ImportError):
    """A prior adapter's package or weights are missing (one-line message)."""


REQUIRES: dict[str, tuple[str, ...]] = {
    "deqa": ("transformers",),
    "sam2": ("sam2",),
    "daclip": ("open_clip",),
}

INSTALL_HINT = {
    "deqa": ("pip install transformers accelerate (DeQA-Score: github.com/zhiyuanyou/DeQA-Score)",
             "the DeQA-Score checkpoint folder (e.g. DeQA-Score-Mix3)"),
    "sam2": ("pip install 'git+https://github.com/facebookresearch/sam2'",
             "the SAM 2 checkpoint file (e.g. sam2.1_hiera_tiny.pt; pass its model config as config=)"),
    "daclip": ("install DA-CLIP's open_clip (github.com/Algolzw/daclip-uir, da-clip/src)",
               "the DA-CLIP checkpoint file (e.g. daclip_ViT-B-32.pt)"),
}


def _check(name: str, prior: str, path: str) -> None:
    missing = [p for p in REQUIRES.get(name, ()) if importlib.util.find_spec(p) is None]
    install, weights = INSTALL_HINT[name]
    if missing:
        raise MissingBackendError(f"prior {prior!r} needs the package(s) {', '.join(missing)}: {install}; "
                                  f"then pass path= pointing to {weights} on local disk (nothing is downloaded)")
    if not path or not os.path.exists(path):
        raise MissingBackendError(f"prior {prior!r}: path={path!r} does not exist; pass path= pointing to "
                                  f"{weights} on local disk (nothing is downloaded)")


# --------------------------------------------------------------------------- real loaders
def _load_deqa(path: str, device: str = "cpu", prompt: str = "The quality of the image is") -> Callable:
    """DeQA-Score through transformers (trust_remote_code, local files only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, local_files_only=True,
                                                 torch_dtype=torch.float16 if device != "cpu" else torch.float32)
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=True)

    @torch.no_grad()
    def fn(img: torch.Tensor) -> torch.Tensor:
        ids = tok(f"USER: <|image|>{prompt} ASSISTANT:", return_tensors="pt").input_ids.to(device)
        pix = F.interpolate(img.float(), size=(448, 448), mode="bicubic", align_corners=False).to(device)
        out = model(input_ids=ids.expand(img.shape[0], -1), images=pix.to(model.dtype), output_hidden_states=True)
        return out.hidden_states[-1][:, -1].float()
    return fn


def _load_sam2(path: str, device: str = "cpu", config: str = "configs/sam2.1/sam2.1_hiera_t.yaml") -> Callable:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    gen = SAM2AutomaticMaskGenerator(build_sam2(config, path, device=device))

    @torch.no_grad()
    def fn(img: torch.Tensor):
        outs = []
        for im in img:
            arr = (im.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
            anns = sorted(gen.generate(arr), key=lambda a: -a["area"])
            outs.append(torch.stack([torch.as_tensor(a["segmentation"]) for a in anns]) if anns else
                        torch.zeros(0, *im.shape[-2:], dtype=torch.bool))
        return outs
    return fn


def _load_daclip(path: str, device: str = "cpu", model_name: str = "daclip_ViT-B-32") -> Callable:
    import open_clip

    model = open_clip.create_model(model_name, pretrained=path).to(device).eval()
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)

    @torch.no_grad()
    def fn(img: torch.Tensor):
        x = F.interpolate(img.float(), size=(224, 224), mode="bicubic", align_corners=False)
        x = ((x - mean.to(x)) / std.to(x)).to(device)
        content, degradation = model.encode_image(x, control=True)
        return content.float(), degradation.float()
    return fn


LOADERS: dict[str, Callable[..., Callable]] = {"deqa": _load_deqa, "sam2": _load_sam2, "daclip": _load_daclip}


def _fit(t: torch.Tensor, dim: int, seed: int, prior: str, key: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        got = "x".join(map(str, t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
        raise PriorOutputError(f"prior {prior!r}: backend output {key!r} must be B x D, got {got}")
    t = t.float()
    if t.shape[1] == dim:
        return t
    return t @ seeded_projection(t.shape[1], dim, seed, t.device, t.dtype)


class _Adapter(GuidancePrior):
    backend_name = ""

    def _load(self, path: str, **options) -> Callable:
        _check(self.backend_name, self.name, path)
        return LOADERS[self.backend_name](path, **options)


@register("prior", "deqa_quality", aliases=("deqa",))
class DeQAQualityPrior(_Adapter):
    """Quality embedding from DeQA-Score (the paper's MLLM quality model): the hidden
    state of the token before the quality level, reduced to 256 dims by a fixed seeded
    projection when wider (DeQA: 4096).

    Args:
        path: local DeQA-Score checkpoint folder. device: where the MLLM runs.
        seed: seed of the fixed reduction.

    Shapes: (B, 3, H, W) -> {"quality": (B, 256)}. Needs ``transformers``.
    """

    OUTPUTS = {"quality": (QUALITY_DIM,)}
    name = "deqa_quality"
    backend_name = "deqa"

    def __init__(self, path: str = "", device: str = "cpu", seed: int = 2028):
        super().__init__()
        self.seed = seed
        self.backend = self._load(path, device=device)

    def compute(self, img):
        return {"quality": _fit(self.backend(img), QUALITY_DIM, self.seed, self.name, "quality").to(img.dtype)}


@register("prior", "sam2_regions", aliases=("sam2",))
class SAM2RegionPrior(_Adapter):
    """Region masks from SAM 2's automatic mask generator (the paper's SGU): the ``k``
    largest masks, nearest-resized to the input size; fewer masks are padded with empty
    ones (their pixels stay uncovered).

    Args:
        path: local SAM 2 checkpoint. config: SAM 2 model config name. k: masks kept (16).
        device: where SAM 2 runs.

    Shapes: (B, 3, H, W) -> {"masks": (B, k, H, W)} in {0, 1}. Needs ``sam2``.
    """

    OUTPUTS = {"masks": None}
    name = "sam2_regions"
    backend_name = "sam2"

    def __init__(self, path: str = "", config: str = "configs/sam2.1/sam2.1_hiera_t.yaml", k: int = 16,
                 device: str = "cpu"):
        super().__init__()
        if k < 0:
            raise ValueError(f"sam2_regions: k must be >= 0, got {k}")
        self.k = k
        self.backend = self._load(path, device=device, config=config)

    def compute(self, img):
        b, _, h, w = img.shape
        per = self.backend(img)
        if len(per) != b:
            raise PriorOutputError(f"prior {self.name!r}: backend returned masks for {len(per)} images, expected {b}")
        out = img.new_zeros(b, self.k, h, w)
        for i, m in enumerate(per):
            m = torch.as_tensor(m)
            if m.dim() != 3:
                raise PriorOutputError(f"prior {self.name!r}: backend masks of image {i} must be M x H x W, "
                                       f"got {'x'.join(map(str, m.shape))}")
            m = m[: self.k].to(img.device, torch.float32)
            if m.shape[0] and tuple(m.shape[-2:]) != (h, w):
                m = F.interpolate(m[None], size=(h, w), mode="nearest")[0]
            out[i, : m.shape[0]] = (m > 0.5).to(img.dtype)
        return {"masks": out}


@register("prior", "daclip_degradation", aliases=("daclip",))
class DACLIPDegradationPrior(_Adapter):
    """Degradation and content embeddings from DA-CLIP (the paper's task identifier),
    512-d each for ViT-B-32 (other widths are reduced by a fixed seeded projection).

    Args:
        path: local DA-CLIP checkpoint. model_name: open_clip model name. device.
        seed: seed of the fixed reductions.

    Shapes: (B, 3, H, W) -> {"degradation": (B, 512), "content": (B, 512)}. Needs DA-CLIP's open_clip.
    """

    OUTPUTS = {"degradation": (DEGRADATION_DIM,), "content": (CONTENT_DIM,)}
    name = "daclip_degradation"
    backend_name = "daclip"

    def __init__(self, path: str = "", model_name: str = "daclip_ViT-B-32", device: str = "cpu", seed: int = 2029):
        super().__init__()
        self.seed = seed
        self.backend = self._load(path, device=device, model_name=model_name)

    def compute(self, img):
        content, degradation = self.backend(img)
        return {"degradation": _fit(degradation, DEGRADATION_DIM, self.seed, self.name, "degradation").to(img.dtype),
                "content": _fit(content, CONTENT_DIM, self.seed + 1, self.name, "content").to(img.dtype)}
