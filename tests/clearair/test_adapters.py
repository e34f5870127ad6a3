"""Adapters for DeQA / SAM 2 / DA-CLIP: a clear one-line message when missing, and the real
loaders run against fake backends that reproduce the backends' public interfaces:

* a fake ``transformers`` with an mPLUG-Owl2-like causal model whose hidden states depend on
  the pixels only where the image token id -200 sits in ``input_ids`` (as the real model
  splices vision features only there), a word-level tokenizer with BOS, and a
  CLIPImageProcessor-like ``preprocess`` (short side -> 448, centre crop, CLIP mean/std);
* a fake ``sam2`` whose ``SAM2AutomaticMaskGenerator`` honours points_per_side /
  points_per_batch / pred_iou_thresh and returns annotations with ``segmentation``,
  ``area`` and ``predicted_iou`` (area and IoU orders differ);
* a fake ``open_clip`` whose ``create_model_from_pretrained`` returns the model and its
  own preprocessing (short side -> 224, centre crop, CLIP mean/std) and whose
  ``encode_image(x, control, normalize)`` normalises only when asked.

The expected values are computed here from the backends' documented usage (DeQA-Score's
scorer, SAM 2's generator, DA-CLIP's README), independently of the adapters' code.
"""

import importlib.machinery
import re
import sys
import types
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import irblocks
from irblocks.clearair import adapters
from irblocks.clearair.adapters import MissingBackendError
from irblocks.registry import build

NAMES = {"deqa_quality": "deqa", "sam2_regions": "sam2", "daclip_degradation": "daclip"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HIDDEN = 4096  # the fake MLLM's width, DeQA-Score's


@pytest.mark.parametrize("name", sorted(NAMES))
def test_missing_package_message(name, monkeypatch, tmp_path):
    monkeypatch.setitem(adapters.REQUIRES, NAMES[name], ("irblocks_no_such_package_xyz",))
    with pytest.raises(MissingBackendError) as e:
        build({"type": name, "path": str(tmp_path)}, "prior")
    msg = str(e.value)
    assert (
        "\n" not in msg and "irblocks_no_such_package_xyz" in msg and "path=" in msg and name in msg
    )


@pytest.mark.parametrize("name", sorted(NAMES))
def test_missing_weights_message(name, monkeypatch):
    monkeypatch.setitem(adapters.REQUIRES, NAMES[name], ())
    with pytest.raises(MissingBackendError, match="does not exist; pass path="):
        build({"type": name, "path": "/nonexistent/weights"}, "prior")


# --------------------------------------------------------------------------- fake backends
def _module(monkeypatch, name, **attrs):
    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    for k, v in attrs.items():
        setattr(mod, k, v)
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def _short_side_centre_crop(im: Image.Image, size: int) -> torch.Tensor:
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


class FakeTokenizer:
    bos_token_id = 1

    @classmethod
    def from_pretrained(cls, path, **kw):
        return cls()

    def __call__(self, text, return_tensors=None):
        ids = [self.bos_token_id] + [
            3 + zlib.crc32(w.encode()) % 997 for w in re.findall(r"\w+|[^\w\s]", text)
        ]
        return SimpleNamespace(input_ids=torch.tensor([ids]) if return_tensors == "pt" else ids)


class FakeCLIPImageProcessor:
    image_mean, image_std = list(CLIP_MEAN), list(CLIP_STD)

    @classmethod
    def from_pretrained(cls, path, **kw):
        return cls()

    def preprocess(self, images, return_tensors=None):
        images = images if isinstance(images, (list, tuple)) else [images]
        if not all(isinstance(im, Image.Image) for im in images):
            raise TypeError("fake processor: PIL images expected")
        return {
            "pixel_values": torch.stack(
                [_short_side_centre_crop(im.convert("RGB"), 448) for im in images]
            )
        }


class FakeOwl2(torch.nn.Module):
    """Causal toy LM: token embeddings, the image token (-200) replaced by a feature of the
    pixels (448 x 448 normalised input required), hidden state = running mean (causal)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(1000, HIDDEN, generator=g))
        self.vision = torch.nn.Parameter(torch.randn(48, HIDDEN, generator=g) / 7)

    @classmethod
    def from_pretrained(cls, path, **kw):
        return cls()

    @property
    def dtype(self):
        return self.embed.dtype

    def forward(self, input_ids, images=None, output_hidden_states=False, **kw):
        ids = torch.as_tensor(input_ids)
        img_pos = ids == -200
        emb = self.embed[ids.clamp_min(0) % 1000]
        if img_pos.any():
            if images is None or tuple(images.shape[1:]) != (3, 448, 448):
                raise ValueError(
                    "fake mPLUG-Owl2: the image token needs images of shape B x 3 x 448 x 448"
                )
            feat = torch.tanh(F.avg_pool2d(images, 112).flatten(1) @ self.vision)  # (B, HIDDEN)
            emb = torch.where(img_pos[..., None], feat[:, None, :].expand_as(emb), emb)
        steps = torch.arange(1, ids.shape[1] + 1).view(1, -1, 1)
        hidden = torch.tanh(emb.cumsum(1) / steps + 0.1 * emb)
        return SimpleNamespace(hidden_states=(emb, hidden), logits=hidden @ self.embed.T)


class FakeMaskGenerator:
    def __init__(self, model, points_per_side=32, points_per_batch=64, pred_iou_thresh=0.8, **kw):
        self.model, self.pps, self.ppb, self.thresh = (
            model,
            points_per_side,
            points_per_batch,
            pred_iou_thresh,
        )

    def generate(self, image):
        if not (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
        ):
            raise TypeError("fake SAM 2: an H x W x 3 uint8 array expected")
        h, w = image.shape[:2]
        anns = []
        for i in range(self.pps * self.pps):
            r, c = divmod(i, self.pps)
            seg = np.zeros((h, w), dtype=bool)
            y0, x0 = r * h // self.pps, c * w // self.pps
            seg[y0 : y0 + 1 + (i * 7) % max(1, h - y0), x0 : x0 + 1 + (i * 3) % max(1, w - x0)] = (
                True
            )
            iou = 0.5 + 0.5 * ((i * 0.618034) % 1.0)
            if iou >= self.thresh:
                anns.append(
                    {
                        "segmentation": seg,
                        "area": int(seg.sum()),
                        "predicted_iou": iou,
                        "stability_score": 0.96,
                    }
                )
        return anns


class FakeDACLIP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.wc = torch.nn.Parameter(torch.randn(147, 512, generator=g))
        self.wd = torch.nn.Parameter(torch.randn(147, 512, generator=g))

    def encode_image(self, image, control=False, normalize=False):
        if tuple(image.shape[1:]) != (3, 224, 224):
            raise ValueError("fake DA-CLIP: B x 3 x 224 x 224 expected")
        f = F.avg_pool2d(image, 32).flatten(1)
        content, degradation = f @ self.wc, torch.tanh(f) @ self.wd
        if normalize:
            content, degradation = F.normalize(content, dim=-1), F.normalize(degradation, dim=-1)
        return (content, degradation) if control else content


def _daclip_preprocess(im):
    return _short_side_centre_crop(im.convert("RGB"), 224)


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    for k in NAMES.values():
        monkeypatch.setitem(adapters.REQUIRES, k, ())
    _module(
        monkeypatch,
        "transformers",
        AutoModelForCausalLM=FakeOwl2,
        AutoTokenizer=FakeTokenizer,
        CLIPImageProcessor=FakeCLIPImageProcessor,
    )
    built = {}

    def build_sam2(config, ckpt, device="cpu"):
        built["sam2"] = (config, ckpt, device)
        return SimpleNamespace()

    _module(monkeypatch, "sam2")
    _module(monkeypatch, "sam2.build_sam", build_sam2=build_sam2)
    _module(
        monkeypatch, "sam2.automatic_mask_generator", SAM2AutomaticMaskGenerator=FakeMaskGenerator
    )
    _module(
        monkeypatch,
        "open_clip",
        create_model_from_pretrained=lambda name, pretrained=None, **kw: (
            FakeDACLIP(),
            _daclip_preprocess,
        ),
        create_model=lambda name, pretrained=None, **kw: FakeDACLIP(),
    )
    return str(tmp_path), built


def _pil(x):
    return Image.fromarray(
        (x.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(), "RGB"
    )


def _images(h=40, w=64):
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 3, h, w, generator=g)
    return torch.cat([a, (a * 0.5 + 0.4 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)])


# --------------------------------------------------------------------------- DeQA
def _deqa_reference(img):
    """DeQA-Score's scorer: tokenizer_image_token(prompt) (chunks around <|image|>, -200 between,
    BOS once), expand2square with the processor's mean colour, preprocess, hidden state at -1."""
    tok, proc, model = FakeTokenizer(), FakeCLIPImageProcessor(), FakeOwl2()
    head = tok("USER: How would you rate the quality of this image?\n").input_ids
    tail = tok("\nASSISTANT: The quality of the image is").input_ids[1:]
    ids = torch.tensor([head + [-200] + tail]).expand(img.shape[0], -1)
    fill = tuple(int(m * 255) for m in proc.image_mean)
    pils = []
    for im in img:
        p = _pil(im)
        side = max(p.size)
        sq = Image.new("RGB", (side, side), fill)
        sq.paste(p, ((side - p.size[0]) // 2, (side - p.size[1]) // 2))
        pils.append(sq)
    pix = proc.preprocess(pils, return_tensors="pt")["pixel_values"]
    return model(input_ids=ids, images=pix, output_hidden_states=True).hidden_states[-1][:, -1]


def test_deqa_feeds_the_image_token_and_processor_and_reads_the_scorers_position(fakes):
    path, _ = fakes
    prior = build({"type": "deqa_quality", "path": path}, "prior")
    x = _images()
    q = prior(x)["quality"]
    assert (q[0] - q[1]).abs().max() > 1e-3  # the pixels reach the MLLM (token -200)
    assert q.shape == (2, HIDDEN)  # raw: the reduction is the network's
    assert torch.allclose(q, _deqa_reference(x), atol=1e-5)  # prompt, padding, processor, position


def test_deqa_reduction_is_a_trainable_linear_of_the_model(fakes, tmp_path):
    path, _ = fakes
    base = irblocks.create_model("clearair-tiny")
    model = irblocks.create_model(
        "clearair-tiny",
        priors={"quality": {"type": "deqa_quality", "path": path}},
        shared={"quality_adapter": {"type": "quality_adapter", "in_dim": 256, "state_dim": HIDDEN}},
    )
    n0 = sum(p.numel() for p in base.parameters() if p.requires_grad)
    n1 = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n1 - n0 == HIDDEN * 256 + 256  # the scaffold's Linear(hidden, 256)
    sd = model.state_dict()
    assert "shared.quality_adapter.reduce.weight" in sd and not any("backend" in k for k in sd)
    x = torch.rand(2, 3, 24, 24)
    F.l1_loss(model.train()(x), x).backward()  # the task loss alone
    g = model.shared["quality_adapter"].reduce.weight.grad
    assert g is not None and g.abs().sum() > 0
    ck = irblocks.save(model, tmp_path / "m.safetensors")
    back = irblocks.load(ck)
    assert torch.equal(
        back.shared["quality_adapter"].reduce.weight, model.shared["quality_adapter"].reduce.weight
    )


def test_backends_are_not_loaded_on_meta(fakes, monkeypatch):
    path, _ = fakes
    loads = []
    for name, fn in list(adapters.LOADERS.items()):
        monkeypatch.setitem(adapters.LOADERS, name, lambda *a, _fn=fn, _n=name,
                            **k: loads.append(_n))
    with torch.device("meta"):
        model = irblocks.create_model(
            "clearair-tiny",
            priors={"quality": {"type": "deqa_quality", "path": path},
                    "regions": {"type": "sam2_regions", "path": path}},
            shared={"quality_adapter": {"type": "quality_adapter", "in_dim": 256,
                                        "state_dim": HIDDEN}},
        )
    assert loads == [] and model.shared["quality_adapter"].reduce.weight.is_meta


def test_deqa_state_without_state_dim_is_one_line(fakes):
    path, _ = fakes
    model = irblocks.create_model(
        "clearair-tiny", priors={"quality": {"type": "deqa_quality", "path": path}}
    )
    with pytest.raises(ValueError, match="shared.quality_adapter.state_dim"):
        model(torch.rand(1, 3, 16, 16))


# --------------------------------------------------------------------------- SAM 2
def test_sam2_uses_the_scaffolds_generator_settings_and_keeps_the_top_k_by_iou(fakes):
    path, built = fakes
    prior = build({"type": "sam2_regions", "path": path, "k": 5}, "prior")
    x = _images(24, 32)
    masks = prior(x)["masks"]
    assert built["sam2"][1] == path and masks.shape == (2, 5, 24, 32)
    gen = FakeMaskGenerator(None, points_per_side=4, points_per_batch=16, pred_iou_thresh=0.7)
    for i, im in enumerate(x):
        anns = gen.generate((im.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        best = sorted(anns, key=lambda a: -a["predicted_iou"])[:5]
        want = torch.stack([torch.from_numpy(a["segmentation"]) for a in best]).float()
        assert torch.equal(masks[i], want)
        largest = sorted(anns, key=lambda a: -a["area"])[:5]
        assert [a["area"] for a in best] != [
            a["area"] for a in largest
        ]  # the two rules differ here


# --------------------------------------------------------------------------- DA-CLIP
def test_daclip_uses_its_own_preprocessing_and_normalised_features(fakes):
    path, _ = fakes
    prior = build({"type": "daclip_degradation", "path": path}, "prior")
    x = _images(40, 64)  # not square: a stretch would differ
    out = prior(x)
    model = FakeDACLIP()
    ref_c, ref_d = model.encode_image(
        torch.stack([_daclip_preprocess(_pil(im)) for im in x]), control=True, normalize=True
    )
    assert torch.allclose(out["content"], ref_c, atol=1e-5) and torch.allclose(
        out["degradation"], ref_d, atol=1e-5
    )
    assert torch.allclose(out["degradation"].norm(dim=-1), torch.ones(2), atol=1e-5)


def test_model_runs_with_all_three_adapters(fakes):
    path, _ = fakes
    model = irblocks.create_model(
        "clearair-tiny",
        priors={
            "quality": {"type": "deqa_quality", "path": path},
            "regions": {"type": "sam2_regions", "path": path, "k": 4},
            "degradation": {"type": "daclip_degradation", "path": path},
        },
        shared={"quality_adapter": {"type": "quality_adapter", "in_dim": 256, "state_dim": HIDDEN}},
    )
    y = model.eval()(torch.rand(1, 3, 20, 20))
    assert y.shape == (1, 3, 20, 20) and torch.isfinite(y).all()
