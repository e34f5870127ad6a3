"""Evaluation: per-task PSNR / SSIM of a model on paired or synthesized test data.

Metrics follow :mod:`irblocks.train.metrics` (all-in-one convention by default:
RGB, [0, 1], no border crop, skimage SSIM), computed per image and averaged per
task; "average" is the mean over tasks (the papers' "Avg" column).

Protocol (recorded in the result's ``convention`` and printed under the table):

* whole image by default: the model sees each test image at once, as in the
  papers' test scripts. ``tile`` runs tiled inference instead (only when asked:
  tiled outputs differ, since pooled prompts and gates see only part of the
  image). An image that does not fit in memory whole fails with one line
  suggesting ``--tile``.
* ``crop_multiple``: centre-crop input and target to a multiple of this before
  the model (PromptIR's / AnyIR's test loaders: ``crop_img(base=16)``, remainder
  split top/bottom with the extra pixel at the bottom/right). 1 = no crop. A
  recipe's ``eval: {crop_multiple: N}`` section states its paper's protocol;
  ``irblocks eval`` uses it unless ``--crop-multiple`` is given.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from irblocks.atomic import atomic_path
from irblocks.progress import progress as progress_bar
from irblocks.train.datasets import DataError, SyntheticDataset, find_paired
from irblocks.train.metrics import batch_psnr, batch_ssim, finite_or_none
from irblocks.train.tiling import tiled_forward

__all__ = ["evaluate", "format_table", "build_eval_data", "parse_data_arg", "write_json",
           "crop_to_multiple", "protocol_text", "recipe_crop_multiple", "EvalError"]


class EvalError(ValueError):
    """Evaluation cannot proceed (one line naming the image and what to do)."""


def crop_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Centre-crop (..., H, W) to the largest multiple of ``multiple`` in each side, as the
    PromptIR / AnyIR test loaders' ``crop_img``: rows ``[r // 2, H - r + r // 2)`` with
    ``r = H % multiple`` (columns alike). ``multiple`` 1 returns ``x``."""
    if multiple < 1:
        raise ValueError(f"crop_multiple must be >= 1, got {multiple}")
    if multiple == 1:
        return x
    h, w = x.shape[-2:]
    if h < multiple or w < multiple:
        raise EvalError(f"a {h}x{w} image has no {multiple}x{multiple} crop "
                        f"(crop_multiple={multiple})")
    rh, rw = h % multiple, w % multiple
    return x[..., rh // 2: h - rh + rh // 2, rw // 2: w - rw + rw // 2]


def recipe_crop_multiple(model_or_recipe: Any) -> int:
    """The ``eval.crop_multiple`` of a model's recipe (or of a recipe dict); 1 when absent."""
    from irblocks.train.config import EvalConfig, validate_sections
    rec = model_or_recipe if isinstance(model_or_recipe, dict) else \
        getattr(model_or_recipe, "_irblocks_recipe", None)
    section = (rec or {}).get("eval")
    if section is None:
        return 1
    errors = validate_sections({"eval": section})
    if errors:
        raise EvalError(f"recipe {errors[0]}")
    return EvalConfig.model_validate(section).crop_multiple


def _is_oom(e: BaseException) -> bool:
    msg = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in msg \
        or "can't allocate memory" in msg


def protocol_text(convention: Dict[str, Any]) -> str:
    """One line naming the protocol of a result (printed under the table)."""
    tile = convention.get("tile")
    crop = convention.get("crop_multiple", 1)
    how = f"tiled {tile}x{tile} (overlap {convention.get('overlap')})" if tile else "whole image"
    crop_txt = f"centre-cropped to a multiple of {crop}" if crop > 1 else "no crop"
    return f"protocol: {how}, {crop_txt}; SSIM {convention.get('ssim')}" + \
        (", Y channel" if convention.get("y_channel") else ", RGB")


def parse_data_arg(text: str) -> tuple[Optional[str], str, Optional[str]]:
    """"[task=]path[@degradation]" -> (task or None, path, degradation spec or None)."""
    name, spec = None, None
    if "=" in text and not Path(text).exists():
        head, rest = text.split("=", 1)
        if "/" not in head and ":" not in head and "@" not in head:
            name, text = head.strip() or None, rest.strip()
    if "@" in text and not Path(text).exists():
        text, spec = text.split("@", 1)
        spec = spec.strip() or None
    return name, text, spec


def skimage_images(
        names: Sequence[str] = ("astronaut", "coffee", "chelsea", "rocket")) -> List[torch.Tensor]:
    """Natural RGB images that ship inside scikit-image (no download)."""
    import skimage.data
    out = []
    for n in names:
        a = getattr(skimage.data, n)()
        out.append(torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255.0)
    return out


def build_eval_data(data: Sequence[str], degrade: Optional[str] = None, seed: int = 0,
                    patch_size: Optional[int] = None, augment: bool = False) -> Dict[str, Any]:
    """task -> dataset from ``--data`` entries ``[task=]PATH[@DEGRADATION]``: PATH a paired layout,
    or clean images degraded on the fly by the entry's DEGRADATION (else ``degrade``);
    ``skimage`` names the images shipped with scikit-image."""
    if not data:
        raise DataError("no data given: pass --data PATH (a paired folder, or clean images with "
                        "--degrade SPEC)")
    out: Dict[str, Any] = {}
    for entry in data:
        name, path, own = parse_data_arg(entry)
        deg = own or degrade
        if path == "skimage":
            if not deg:
                raise DataError("--data skimage needs a degradation: "
                                "skimage@gaussian_noise:sigma=25 or --degrade SPEC")
            ds = SyntheticDataset(skimage_images(), deg, patch_size, augment, task=name or "",
                                  seed=seed)
            out[name or ds.task] = ds
            continue
        p = Path(path)
        if not p.exists():
            raise DataError(f"no such data folder: {p}")
        if deg:
            ds = SyntheticDataset(p, deg, patch_size, augment, task=name or "", seed=seed)
            out[name or f"{p.name}/{ds.task}"] = ds
            continue
        try:
            found = find_paired(p, patch_size=patch_size, augment=augment, seed=seed)
        except DataError as e:
            raise DataError(f"{e}; or pass --degrade SPEC to synthesize inputs from clean "
                            "images") from None
        for task, ds in found.items():
            key = f"{name}/{task}" if name and len(found) > 1 else (name or task)
            ds.task = key
            out[key] = ds
    return out


@torch.no_grad()
def evaluate(model: nn.Module, datasets: Dict[str, Any], tile: Optional[int] = None,
             overlap: int = 32, device: str | torch.device = "cpu", ssim_mode: str = "uniform",
             y_channel: bool = False, crop_border: int = 0, progress: bool = False,
             limit: Optional[int] = None, crop_multiple: int = 1) -> Dict[str, Any]:
    """{"tasks": {task: {"psnr", "ssim", "input_psnr", "input_ssim", "images"}}, "average": {...},
    "convention": {..., "tile", "crop_multiple"}} (protocol: see the module docstring)."""
    if crop_multiple < 1:
        raise ValueError(f"crop_multiple must be >= 1, got {crop_multiple}")
    model = model.to(device).eval()
    tasks: Dict[str, Any] = {}
    t0 = time.perf_counter()
    counts = {task: len(ds) if limit is None else min(len(ds), limit)
              for task, ds in datasets.items()}
    bar = progress_bar(total=sum(counts.values()), desc="eval", unit="img", enabled=progress)
    for task, ds in datasets.items():
        n = counts[task]
        bar.set_description(f"eval {task}")
        ps, ss, ips, iss = [], [], [], []
        for i in range(n):
            item = ds[i]
            x, y = item["input"].unsqueeze(0).to(device), item["target"].unsqueeze(0).to(device)
            if crop_multiple > 1:
                x, y = crop_to_multiple(x, crop_multiple), crop_to_multiple(y, crop_multiple)
            try:
                pred = tiled_forward(model, x, tile, overlap).float().clamp(0, 1)
            except (RuntimeError, MemoryError) as e:
                if tile or not _is_oom(e):
                    raise
                raise EvalError(f"task {task!r} image {i} ({x.shape[-2]}x{x.shape[-1]}) does not "
                                "fit in memory whole; pass --tile 512 to tile it (tiled scores "
                                "differ from the papers' whole-image protocol)") from None
            kw = dict(y_channel=y_channel, crop_border=crop_border)
            ps.append(float(batch_psnr(pred, y, **kw)[0]))
            ss.append(float(batch_ssim(pred, y, mode=ssim_mode, **kw)[0]))
            ips.append(float(batch_psnr(x, y, **kw)[0]))
            iss.append(float(batch_ssim(x, y, mode=ssim_mode, **kw)[0]))
            bar.update(1)
        mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
        tasks[task] = {"psnr": mean(ps), "ssim": mean(ss), "input_psnr": mean(ips),
                       "input_ssim": mean(iss), "images": n}
    bar.close()
    avg = {k: sum(t[k] for t in tasks.values()) / len(tasks)
           for k in ("psnr", "ssim", "input_psnr", "input_ssim")} \
        if tasks else {}
    return {"tasks": tasks, "average": avg, "seconds": time.perf_counter() - t0,
            "convention": {"ssim": ssim_mode, "y_channel": y_channel, "crop_border": crop_border,
                           "range": "[0,1] clamped", "tile": tile,
                           "overlap": overlap if tile else None,
                           "crop_multiple": crop_multiple}}


def format_table(result: Dict[str, Any]) -> str:
    rows = [("task", "images", "PSNR", "SSIM", "input PSNR", "input SSIM")]
    for task, r in result["tasks"].items():
        rows.append((task, str(r["images"]), f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
                     f"{r['input_psnr']:.2f}", f"{r['input_ssim']:.4f}"))
    if len(result["tasks"]) > 1:
        a = result["average"]
        rows.append(("average", "", f"{a['psnr']:.2f}", f"{a['ssim']:.4f}",
                     f"{a['input_psnr']:.2f}", f"{a['input_ssim']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    if "convention" in result:
        lines.append(protocol_text(result["convention"]))
    return "\n".join(lines)


def write_json(result: Dict[str, Any], path: str | Path) -> Path:
    def clean(v):
        if isinstance(v, float):
            return finite_or_none(v)
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(result), indent=1))
    return path
