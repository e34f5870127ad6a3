"""All of the library's pictures, in one place.

* :func:`labelled_row` -- images side by side with a caption above each (Pillow only; the
  demo's before/after picture).
* :func:`plot_run` -- loss / PSNR / learning-rate curves of a run's ``train_log.jsonl``
  (``irblocks plot``).
* :func:`render_diagnosis` -- the PNGs and the JSON of :func:`irblocks.diagnose.diagnose`
  (``irblocks diagnose``).

The last two need matplotlib (``pip install 'irblocks[plot]'``; one-line error when it is
missing). PNGs are written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = ["labelled_row", "plot_run", "render_diagnosis", "require_matplotlib"]

GAP = 4


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or a one-line error naming the extra."""
    from irblocks.train.runlog import require_extra

    mpl = require_extra("matplotlib", "plot", "plotting")
    mpl.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def labelled_row(images: Sequence[torch.Tensor], labels: Sequence[str]) -> torch.Tensor:
    """(3, H, W) images of one height side by side (:func:`~irblocks.train.imageio.hstack`)
    with a caption above each: (3, H + band, W')."""
    from PIL import Image, ImageDraw

    from irblocks.train.imageio import hstack

    ims = [i[0] if i.dim() == 4 else i for i in images]
    strip = hstack(ims, GAP)
    h = strip.shape[1]
    size = max(11, min(18, h // 16))
    band = size + 8
    canvas = Image.new("RGB", (strip.shape[2], h + band), "white")
    arr = (strip * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    canvas.paste(Image.fromarray(arr), (0, band))
    draw, font, x = ImageDraw.Draw(canvas), _font(size), 0
    for im, text in zip(ims, labels):
        draw.text((x + 3, 3), text, fill="black", font=font)
        x += im.shape[2] + GAP
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def _save(fig, path: Path, dpi: int = 72) -> Path:
    """The figure as a 256-colour PNG (small files: figures are flat colours and colour maps)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    from irblocks.atomic import atomic_path

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    buf.seek(0)
    with Image.open(buf) as im:
        pal = im.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    with atomic_path(path) as tmp:
        pal.save(tmp, format="PNG", optimize=True)
    return path


# ----------------------------------------------------------------------------- training curves
def plot_run(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss terms, PSNR (training batches; evaluation per task) and learning rate against the
    step, as one PNG with three panels. Returns the path."""
    plt = require_matplotlib()
    train = [r for r in records if r.get("kind", "train") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    if not train and not evals:
        raise ValueError("plot: the log holds no records yet")
    skip = {"kind", "step", "epoch", "lr", "psnr", "images_per_s", "steps_per_s", "seconds"}
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    steps = [r["step"] for r in train]
    terms = [k for k in dict.fromkeys(k for r in train for k in r) if k not in skip]
    for k in terms:
        ys = [r.get(k) for r in train]
        pts = [(s, y) for s, y in zip(steps, ys) if isinstance(y, (int, float)) and y > 0]
        if pts:
            axes[0].plot(*zip(*pts), label=k, lw=1.5 if k == "loss" else 1)
    axes[0].set_yscale("log")
    axes[0].set_title("loss terms")
    pts = [(r["step"], r["psnr"]) for r in train if isinstance(r.get("psnr"), (int, float))]
    if pts:
        axes[1].plot(*zip(*pts), label="train batches", color="0.6")
    keys = [k for k in dict.fromkeys(k for r in evals for k in r) if k.startswith("psnr")]
    if sum("/" in k for k in keys) == 1:
        keys = [k for k in keys if "/" in k]  # one task: its mean is the same curve
    for k in keys:
        pts = [(r["step"], r[k]) for r in evals if isinstance(r.get(k), (int, float))]
        if pts:
            axes[1].plot(
                *zip(*pts),
                marker="o",
                ms=3,
                label="eval " + (k.split("/", 1)[1] if "/" in k else "mean"),
            )
    axes[1].set_title("PSNR (dB)")
    pts = [(r["step"], r["lr"]) for r in train if isinstance(r.get("lr"), (int, float))]
    if pts:
        axes[2].plot(*zip(*pts), color="tab:green")
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------- diagnostics
def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return int(math.ceil(n / cols)), cols


def _adjust(fig) -> None:
    """Fixed margins (a layout engine costs seconds per figure): the title gets 0.45 inch."""
    h = fig.get_figheight()
    fig.subplots_adjust(
        left=0.05, right=0.95, bottom=0.25 / h, top=1 - 0.45 / h, wspace=0.45, hspace=0.5
    )


def _map_figure(plt, panels: dict[str, torch.Tensor], title: str, path: Path) -> Path:
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, m) in zip(axes.flat, panels.items()):
        im = ax.imshow(m.numpy(), cmap="viridis", interpolation="nearest")
        ax.set_title(name, fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=9)
    _adjust(fig)
    return _save(fig, path)


def _vector_figure(plt, panels: dict, title: str, path: Path) -> Path:
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, (values, labels)) in zip(axes.flat, panels.items()):
        ax.axis("on")
        v = values.detach().float().cpu().numpy()
        if len(v) > 48:  # long vectors: a line is as readable and faster
            ax.plot(np.arange(len(v)), v, lw=0.8, color="tab:blue")
        else:
            ax.bar(np.arange(len(v)), v, width=0.8, color="tab:blue")
        if labels:
            ax.set_xticks(np.arange(len(v)), labels, fontsize=6)
        ax.tick_params(labelsize=6)
        ax.set_title(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    _adjust(fig)
    return _save(fig, path)


def _images_figure(plt, images: dict[str, torch.Tensor], path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
    diff = images["difference"].mean(0)
    for ax, (name, im) in zip(axes, (("input", images["input"]), ("output", images["output"]))):
        ax.imshow(im.permute(1, 2, 0).numpy())
        ax.set_title(name, fontsize=8)
    h = axes[2].imshow(diff.numpy(), cmap="magma")
    axes[2].set_title(f"|output - input| (mean {float(diff.mean()):.3f})", fontsize=8)
    fig.colorbar(h, ax=axes[2], fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
    for ax in axes:
        ax.axis("off")
    fig.subplots_adjust(left=0.01, right=0.95, bottom=0.02, top=0.9, wspace=0.1)
    return _save(fig, path)


def render_diagnosis(d, out_dir: str | os.PathLike, title: str = "") -> dict[str, Any]:
    """Write ``images.png`` (input, output, |output - input|), one PNG per map and vector
    figure of ``d`` (an :class:`irblocks.diagnose.Diagnosis`) and ``diagnosis.json`` (its
    numbers plus the list of files). Returns the JSON dict."""
    from irblocks.atomic import atomic_path
    plt = require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [_images_figure(plt, d.images, out / "images.png").name]
    for name, panels in d.maps.items():
        if panels:
            files.append(
                _map_figure(plt, panels, f"{title} {name}".strip(), out / f"{name}.png").name
            )
    for name, panels in d.vectors.items():
        if panels:
            files.append(
                _vector_figure(plt, panels, f"{title} {name}".strip(), out / f"{name}.png").name
            )
    result = {"model": title, **d.numbers, "files": files}
    with atomic_path(out / "diagnosis.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result
