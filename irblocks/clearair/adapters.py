"""Adapters for the paper's pretrained guidance models: DeQA (quality), SAM 2 (regions),
DA-CLIP (degradation and content), each fed exactly as its own code expects and read
where ClearAIR's scaffold (House-yuyu/ClearAIR) reads it.

None of them is fetched at run time: each loads from a local path, and only when its
package is installed; otherwise construction fails with one line saying what to
install and where the weights go.

Backends are looked up in :data:`LOADERS` (name -> ``loader(path, **options)``
returning a callable) after :data:`REQUIRES` (name -> packages) is checked; users can
put their own loader there. What each real loader does (facts from the backends' code):

* ``deqa`` (DeQA-Score, an mPLUG-Owl2 model; zhiyuanyou/DeQA-Score ``src/evaluate/
  scorer.py``): the prompt ``USER: How would you rate the quality of this image?\n
  <|image|>\nASSISTANT: The quality of the image is`` is tokenized chunk by chunk around
  ``<|image|>``, which becomes the image token id -200 (IMAGE_TOKEN_INDEX) where the
  model splices in the vision features; BOS is kept once. Each image is padded to a
  square with the processor's mean colour (``expand2square``) and goes through the
  checkpoint's CLIPImageProcessor (448 x 448, CLIP mean/std). The feature is the last
  layer's hidden state at the prompt's final token ("is"), the position whose logits
  DeQA-Score reads for the quality level: ``fn(img) -> (B, 4096)``. The scaffold
  reduces it 4096 -> 256 with a trainable Linear: here that Linear lives in the
  network (``quality_adapter.state_dim: 4096``), is trained by the task loss and saved
  with the model.
* ``sam2`` (SAM 2's ``SAM2AutomaticMaskGenerator``): the scaffold's generator settings
  (4 points per side, 16 points per batch, predicted-IoU threshold 0.7) on the uint8
  RGB image; masks ordered by predicted IoU, best first: ``fn(img) -> [(M_i, H, W)]``;
  the adapter keeps the first ``k`` (16), as the scaffold keeps the top 16 by IoU.
* ``daclip`` (DA-CLIP's open_clip, Algolzw/daclip-uir): the model's own preprocessing
  from ``open_clip.create_model_from_pretrained`` (resize the short side to 224,
  centre crop, CLIP mean/std) on each image, then
  ``encode_image(x, control=True, normalize=True)``: ``fn(img) -> (content (B, 512),
  degradation (B, 512))``, unit-norm. Other widths are reduced to 512 by a fixed
  seeded projection.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Callable

import torch
import torch.nn.functional as F

from irblocks.registry import register

from .priors_common import (
    CONTENT_DIM,
    DEGRADATION_DIM,
    GuidancePrior,
    PriorOutputError,
    seeded_projection,
)

__all__ = [
    "DeQAQualityPrior",
    "SAM2RegionPrior",
    "DACLIPDegradationPrior",
    "LOADERS",
    "REQUIRES",
    "MissingBackendError",
    "deqa_backend",
    "image_token_ids",
    "IMAGE_TOKEN_INDEX",
    "DEQA_PROMPT",
]


class MissingBackendError(ImportError):
    """A prior adapter's package or weights are missing (one-line message)."""


REQUIRES: dict[str, tuple[str, ...]] = {
    "deqa": ("transformers",),
    "sam2": ("sam2",),
    "daclip": ("open_clip",),
}

INSTALL_HINT = {
    "deqa": (
        "pip install transformers accelerate (DeQA-Score: github.com/zhiyuanyou/DeQA-Score)",
        "the DeQA-Score checkpoint folder (e.g. DeQA-Score-Mix3)",
    ),
    "sam2": (
        "pip install 'git+https://github.com/facebookresearch/sam2'",
        "the SAM 2 checkpoint file (e.g. sam2.1_hiera_tiny.pt; pass its model config as config=)",
    ),
    "daclip": (
        "install DA-CLIP's open_clip (github.com/Algolzw/daclip-uir, da-clip/src)",
        "the DA-CLIP checkpoint file (e.g. daclip_ViT-B-32.pt)",
    ),
}


def _check(name: str, prior: str, path: str) -> None:
    missing = [p for p in REQUIRES.get(name, ()) if importlib.util.find_spec(p) is None]
    install, weights = INSTALL_HINT[name]
    if missing:
        raise MissingBackendError(
            f"prior {prior!r} needs the package(s) {', '.join(missing)}: {install}; "
            f"then pass path= pointing to {weights} on local disk (nothing is downloaded)"
        )
    if not path or not os.path.exists(path):
        raise MissingBackendError(
            f"prior {prior!r}: path={path!r} does not exist; pass path= pointing to "
            f"{weights} on local disk (nothing is downloaded)"
        )


# --------------------------------------------------------------------------- real loaders
IMAGE_TOKEN_INDEX = -200  # mPLUG-Owl2 / DeQA-Score: where the image features go
IMAGE_PLACEHOLDER = "<|image|>"
DEQA_PROMPT = (
    "USER: How would you rate the quality of this image?\n<|image|>\n"
    "ASSISTANT: The quality of the image is"
)


def _pil(img: torch.Tensor):
    """(3, H, W) float in [0, 1] -> PIL RGB image (uint8, rounded)."""
    from PIL import Image

    arr = (
        (img.detach().float().clamp(0, 1).permute(1, 2, 0) * 255)
        .round()
        .to(torch.uint8)
        .cpu()
        .numpy()
    )
    return Image.fromarray(arr, "RGB")


def _square(im, colour: tuple[int, int, int]):
    """Pad a PIL image to a square, centred, with ``colour`` (DeQA-Score's expand2square)."""
    from PIL import Image

    w, h = im.size
    if w == h:
        return im
    side = max(w, h)
    out = Image.new(im.mode, (side, side), colour)
    out.paste(im, ((side - w) // 2, (side - h) // 2))
    return out


def image_token_ids(prompt: str, tokenizer, image_token: int = IMAGE_TOKEN_INDEX) -> torch.Tensor:
    """Token ids of ``prompt`` with every ``<|image|>`` replaced by ``image_token``: each text
    chunk is tokenized on its own, the tokenizer's BOS is kept once at the start. (1, L) long."""
    chunks = [tokenizer(c).input_ids if c else [] for c in prompt.split(IMAGE_PLACEHOLDER)]
    bos = getattr(tokenizer, "bos_token_id", None)
    ids: list[int] = []
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        ids.append(bos)
    for i, chunk in enumerate(chunks):
        if i:
            ids.append(image_token)
        ids.extend(chunk[1:] if chunk and bos is not None and chunk[0] == bos else chunk)
    return torch.tensor(ids, dtype=torch.long)[None]


def deqa_backend(
    model, tokenizer, processor, device: str = "cpu", prompt: str = DEQA_PROMPT
) -> Callable:
    """``fn(img (B, 3, H, W) in [0, 1]) -> (B, D)``: DeQA-Score fed as its scorer feeds it (see
    the module docstring), returning the last hidden state at the prompt's final token."""
    ids = image_token_ids(prompt, tokenizer).to(device)
    fill = tuple(int(m * 255) for m in processor.image_mean)
    dtype = getattr(model, "dtype", torch.float32)

    @torch.no_grad()
    def fn(img: torch.Tensor) -> torch.Tensor:
        pil = [_square(_pil(im), fill) for im in img]
        pix = processor.preprocess(pil, return_tensors="pt")["pixel_values"].to(
            device=device, dtype=dtype
        )
        out = model(input_ids=ids.expand(img.shape[0], -1), images=pix, output_hidden_states=True)
        return out.hidden_states[-1][:, -1].float()

    return fn


def _load_deqa(path: str, device: str = "cpu") -> Callable:
    """DeQA-Score through transformers (its own remote code, local files only)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPImageProcessor

    model = AutoModelForCausalLM.from_pretrained(
        path,
        trust_remote_code=True,
        local_files_only=True,
        torch_dtype=torch.float16 if device != "cpu" else torch.float32,
    )
    model.to(device).eval()
    tok = AutoTokenizer.from_pretrained(
        path, local_files_only=True, trust_remote_code=True, use_fast=False
    )
    processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
    return deqa_backend(model, tok, processor, device)


def _load_sam2(
    path: str,
    device: str = "cpu",
    config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
    points_per_side: int = 4,
    points_per_batch: int = 16,
    pred_iou_thresh: float = 0.7,
) -> Callable:
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    gen = SAM2AutomaticMaskGenerator(
        build_sam2(config, path, device=device),
        points_per_side=points_per_side,
        points_per_batch=points_per_batch,
        pred_iou_thresh=pred_iou_thresh,
    )

    @torch.no_grad()
    def fn(img: torch.Tensor):
        outs = []
        for im in img:
            arr = (im.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().cpu().numpy()
            anns = sorted(gen.generate(arr), key=lambda a: -float(a["predicted_iou"]))
            outs.append(
                torch.stack([torch.as_tensor(a["segmentation"]) for a in anns])
                if anns
                else torch.zeros(0, *im.shape[-2:], dtype=torch.bool)
            )
        return outs

    return fn


def _load_daclip(path: str, device: str = "cpu", model_name: str = "daclip_ViT-B-32") -> Callable:
    import open_clip

    model, preprocess = open_clip.create_model_from_pretrained(model_name, pretrained=path)
    model = model.to(device).eval()

    @torch.no_grad()
    def fn(img: torch.Tensor):
        x = torch.stack([preprocess(_pil(im)) for im in img]).to(device)
        content, degradation = model.encode_image(x, control=True, normalize=True)
        return content.float(), degradation.float()

    return fn


LOADERS: dict[str, Callable[..., Callable]] = {
    "deqa": _load_deqa,
    "sam2": _load_sam2,
    "daclip": _load_daclip,
}


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
        """The backend callable; on the ``meta`` device (a skeleton for shapes and counts, as
        ``irblocks.load`` builds first) the backend is checked for but not loaded."""
        _check(self.backend_name, self.name, path)
        if torch.empty(0).device.type == "meta":
            return self._not_loaded
        return LOADERS[self.backend_name](path, **options)

    def _not_loaded(self, img: torch.Tensor):
        raise RuntimeError(f"prior {self.name!r} was built on the meta device: its backend is not "
                           "loaded there; build the model on a real device to run it")


@register("prior", "deqa_quality", aliases=("deqa",))
class DeQAQualityPrior(_Adapter):
    """Quality state from DeQA-Score (the paper's MLLM quality model): the last hidden
    state at the token before the quality level (see the module docstring), raw.

    The network reduces it with the scaffold's trainable Linear 4096 -> 256: build the
    model with ``shared.quality_adapter.state_dim: 4096`` (+1,048,832 parameters, in the
    state_dict). The prior itself stays frozen and outside the state_dict.

    Args:
        path: local DeQA-Score checkpoint folder. device: where the MLLM runs.
        hidden_dim: width of the hidden state (4096 for DeQA-Score's LLaMA-2 7B).

    Shapes: (B, 3, H, W) -> {"quality": (B, hidden_dim)}. Needs ``transformers`` (and
    Pillow).
    """

    name = "deqa_quality"
    backend_name = "deqa"

    def __init__(self, path: str = "", device: str = "cpu", hidden_dim: int = 4096):
        super().__init__()
        if hidden_dim < 1:
            raise ValueError(f"deqa_quality: hidden_dim must be >= 1, got {hidden_dim}")
        self.hidden_dim = hidden_dim
        self.OUTPUTS = {"quality": (hidden_dim,)}
        self.backend = self._load(path, device=device)

    def compute(self, img):
        state = self.backend(img)
        if not isinstance(state, torch.Tensor) or tuple(state.shape) != (
            img.shape[0],
            self.hidden_dim,
        ):
            got = (
                "x".join(map(str, state.shape))
                if isinstance(state, torch.Tensor)
                else type(state).__name__
            )
            raise PriorOutputError(
                f"prior {self.name!r}: backend hidden state must be {img.shape[0]} x "
                f"{self.hidden_dim} (B x hidden_dim), got {got}"
            )
        return {"quality": state.to(img.dtype)}


@register("prior", "sam2_regions", aliases=("sam2",))
class SAM2RegionPrior(_Adapter):
    """Region masks from SAM 2's automatic mask generator (the paper's SGU) with the
    scaffold's settings: the top ``k`` masks by predicted IoU, nearest-resized to the
    input size; fewer masks are padded with empty ones (their pixels stay uncovered).

    Args:
        path: local SAM 2 checkpoint. config: SAM 2 model config name. k: masks kept (16).
        device: where SAM 2 runs. points_per_side, points_per_batch, pred_iou_thresh: the
            generator's settings (the scaffold's: 4, 16, 0.7).

    Shapes: (B, 3, H, W) -> {"masks": (B, k, H, W)} in {0, 1}. Needs ``sam2``.
    """

    OUTPUTS = {"masks": None}
    name = "sam2_regions"
    backend_name = "sam2"

    def __init__(
        self,
        path: str = "",
        config: str = "configs/sam2.1/sam2.1_hiera_t.yaml",
        k: int = 16,
        device: str = "cpu",
        points_per_side: int = 4,
        points_per_batch: int = 16,
        pred_iou_thresh: float = 0.7,
    ):
        super().__init__()
        if k < 0:
            raise ValueError(f"sam2_regions: k must be >= 0, got {k}")
        if points_per_side < 1 or points_per_batch < 1 or not 0 <= pred_iou_thresh <= 1:
            raise ValueError(
                f"sam2_regions: points_per_side and points_per_batch must be >= 1 and "
                f"pred_iou_thresh in [0, 1], got {points_per_side}, {points_per_batch}, "
                f"{pred_iou_thresh}"
            )
        self.k = k
        self.backend = self._load(
            path,
            device=device,
            config=config,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
        )

    def compute(self, img):
        b, _, h, w = img.shape
        per = self.backend(img)
        if len(per) != b:
            raise PriorOutputError(
                f"prior {self.name!r}: backend returned masks for {len(per)} images, expected {b}"
            )
        out = img.new_zeros(b, self.k, h, w)
        for i, m in enumerate(per):
            m = torch.as_tensor(m)
            if m.dim() != 3:
                raise PriorOutputError(
                    f"prior {self.name!r}: backend masks of image {i} must be M x H x W, "
                    f"got {'x'.join(map(str, m.shape))}"
                )
            m = m[: self.k].to(img.device, torch.float32)
            if m.shape[0] and tuple(m.shape[-2:]) != (h, w):
                m = F.interpolate(m[None], size=(h, w), mode="nearest")[0]
            out[i, : m.shape[0]] = (m > 0.5).to(img.dtype)
        return {"masks": out}


@register("prior", "daclip_degradation", aliases=("daclip",))
class DACLIPDegradationPrior(_Adapter):
    """Degradation and content embeddings from DA-CLIP (the paper's task identifier):
    the model's own preprocessing and ``encode_image(control=True, normalize=True)``,
    512-d each for ViT-B-32 (other widths are reduced by a fixed seeded projection).

    Args:
        path: local DA-CLIP checkpoint. model_name: open_clip model name. device.
        seed: seed of the fixed reductions.

    Shapes: (B, 3, H, W) -> {"degradation": (B, 512), "content": (B, 512)}. Needs DA-CLIP's
    open_clip.
    """

    OUTPUTS = {"degradation": (DEGRADATION_DIM,), "content": (CONTENT_DIM,)}
    name = "daclip_degradation"
    backend_name = "daclip"

    def __init__(
        self,
        path: str = "",
        model_name: str = "daclip_ViT-B-32",
        device: str = "cpu",
        seed: int = 2029,
    ):
        super().__init__()
        self.seed = seed
        self.backend = self._load(path, device=device, model_name=model_name)

    def compute(self, img):
        content, degradation = self.backend(img)
        return {
            "degradation": _fit(
                degradation, DEGRADATION_DIM, self.seed, self.name, "degradation"
            ).to(img.dtype),
            "content": _fit(content, CONTENT_DIM, self.seed + 1, self.name, "content").to(
                img.dtype
            ),
        }
