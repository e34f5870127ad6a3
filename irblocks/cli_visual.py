"""``irblocks plot`` and ``irblocks diagnose``: training curves and pictures of what a network does.

    irblocks plot RUN [-o FILE]                    loss / PSNR / lr curves of RUN/train_log.jsonl
    irblocks diagnose MODEL_OR_RUN IMAGE -o DIR    labelled PNGs + diagnosis.json

Both need matplotlib (``pip install 'irblocks[plot]'``). Nothing heavy is imported at
module level (the CLI's ``--help`` stays fast).
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = [
    "setup_plot",
    "setup_diagnose",
    "cmd_plot",
    "cmd_diagnose",
    "load_for_diagnosis",
    "read_diagnose_image",
]


def _non_negative(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def setup_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a training folder (with train_log.jsonl) or the log file itself")
    p.add_argument("-o", "--out", default=None, help="PNG to write (default RUN/train_curves.png)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args) -> int:
    from irblocks.train.runlog import LOG_NAME, read_log
    from irblocks.visualize import plot_run, require_matplotlib

    require_matplotlib()  # the missing extra is reported before any work
    run = Path(args.run)
    records = read_log(run)
    folder = run if run.is_dir() else run.parent
    out = Path(args.out) if args.out else folder / "train_curves.png"
    plot_run(records, out, title=f"{folder.name} ({LOG_NAME}, {len(records)} records)")
    print(f"wrote {out}")
    return 0


def setup_diagnose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model",
        metavar="MODEL_OR_RUN",
        help="a recipe name or YAML (built with random weights, seeded by --seed), "
        "a .safetensors checkpoint or a training folder",
    )
    p.add_argument(
        "image",
        help="an image file, or skimage:NAME for an image shipped with scikit-image "
        "(e.g. skimage:chelsea)",
    )
    p.add_argument(
        "-o", "--out", required=True, help="output folder for the PNGs and diagnosis.json"
    )
    p.add_argument(
        "--max-size",
        type=_non_negative,
        default=256,
        metavar="PIXELS",
        help="downscale the image so its longer side is at most this (0: keep; default 256)",
    )
    p.add_argument(
        "--crop",
        type=int,
        nargs=4,
        default=None,
        metavar=("TOP", "LEFT", "H", "W"),
        help="diagnose this crop of the image (before --max-size)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights of a recipe (default 0)"
    )
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_diagnose)


def read_diagnose_image(spec: str):
    """(3, H, W) in [0, 1] from a file or ``skimage:NAME``."""
    if spec.startswith("skimage:"):
        from irblocks.train.evaluate import skimage_images

        name = spec.split(":", 1)[1]
        import skimage.data

        if not callable(getattr(skimage.data, name, None)):
            raise ValueError(
                f"skimage:{name}: scikit-image ships no image of that name "
                "(e.g. skimage:chelsea, skimage:astronaut, skimage:coffee)"
            )
        return skimage_images((name,))[0]
    from irblocks.train.imageio import read_image

    return read_image(spec)


def load_for_diagnosis(spec: str, seed: int = 0, device: str = "cpu"):
    """(model, label): a checkpoint or run folder, else a recipe with seeded random weights."""
    import irblocks

    p = Path(spec)
    run = p.is_dir() and (p / "last.safetensors").is_file()
    if run or p.suffix == ".safetensors" or (p.is_dir() and spec not in irblocks.list_models()):
        from irblocks.train.trainer import load_model

        return load_model(p, device=device), f"{p.name} (trained)"
    import torch

    torch.manual_seed(seed)
    model = irblocks.create_model(spec).to(device)
    return model, f"{Path(spec).stem} (random weights, seed {seed})"


def cmd_diagnose(args) -> int:
    import torch.nn.functional as F

    from irblocks.diagnose import diagnose
    from irblocks.progress import progress
    from irblocks.visualize import render_diagnosis, require_matplotlib

    require_matplotlib()
    with progress(total=4, desc="diagnose", unit="step") as bar:
        bar.set_postfix_str("reading the image")
        img = read_diagnose_image(args.image)
        if args.crop:
            t, left, h, w = args.crop
            if (
                h < 1
                or w < 1
                or t < 0
                or left < 0
                or t + h > img.shape[1]
                or left + w > img.shape[2]
            ):
                raise ValueError(
                    f"--crop {t} {left} {h} {w} does not fit the "
                    f"{img.shape[1]} x {img.shape[2]} image"
                )
            img = img[:, t : t + h, left : left + w]
        side = max(img.shape[-2:])
        if args.max_size and side > args.max_size:
            s = args.max_size / side
            size = (max(8, round(img.shape[1] * s)), max(8, round(img.shape[2] * s)))
            img = F.interpolate(
                img[None], size=size, mode="bilinear", antialias=True, align_corners=False
            )[0]
        bar.update(1)
        bar.set_postfix_str("loading the model")
        model, label = load_for_diagnosis(args.model, args.seed, args.device)
        bar.update(1)
        bar.set_postfix_str("running the model")
        d = diagnose(model, img.clamp(0, 1))
        bar.update(1)
        bar.set_postfix_str("drawing")
        res = render_diagnosis(d, args.out, title=label)
        bar.update(1)
    nets = (
        ", ".join(d.networks) or "no network-specific diagnostics (input, output, difference only)"
    )
    print(
        f"{label}: {nets}; wrote {len(res['files'])} PNG(s) and diagnosis.json "
        f"into {Path(args.out)}"
    )
    return 0
