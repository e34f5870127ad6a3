"""``irblocks demo``: train a tiny AnyIR on noisy crops for ~2 minutes, restore a held-out image.

Training images: astronaut, coffee and rocket from ``skimage.data`` (they ship
with scikit-image: nothing is downloaded); held out: chelsea. Noise: Gaussian,
sigma 25 on the 0-255 scale, uint8 convention (AirNet/PromptIR). The model is the
``anyir-tiny`` recipe (width 16, one block per level) trained with its recipe's
loss (L1 + 0.1 FFT) and AdamW, with a learning rate suited to a short run and a
cosine decay over the time budget. Output: a before/after PNG (noisy | restored |
clean, each panel captioned with its PSNR / SSIM against the clean image) and the PSNR
gain over the noisy input.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from irblocks.atomic import atomic_path
from irblocks.train.datasets import SyntheticDataset
from irblocks.train.degradations import GaussianNoise
from irblocks.train.evaluate import skimage_images
from irblocks.train.imageio import write_image
from irblocks.train.metrics import psnr, ssim
from irblocks.train.tiling import restore_image
from irblocks.train.trainer import Trainer
from irblocks.visualize import labelled_row

__all__ = ["run_demo", "DEMO_RECIPE"]

TRAIN_IMAGES = ("astronaut", "coffee", "rocket")
HELD_OUT = "chelsea"


def auto_threads() -> int:
    """Intra-op threads for a small model: all cores on an idle machine, fewer when other
    processes already keep cores busy (oversubscribed OpenMP threads slow a step down 10x)."""
    import os
    n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, min(n, int(round(n - load))))


def _demo_recipe(base: str, lr: float) -> Dict[str, Any]:
    import irblocks
    r = irblocks.resolve_recipe(base).data
    r = dict(r)
    r.pop("extends", None)
    r["optimizer"] = {**(r.get("optimizer") or {}), "type": "adamw", "lr": lr}
    r["schedule"] = {"type": "warmup_cosine", "warmup_epochs": 0.02, "epochs": 1}
    return r


DEMO_RECIPE = "anyir-tiny"


def run_demo(out_dir: str | Path = "irblocks-demo", seconds: float = 120.0,
             steps: Optional[int] = None, sigma: float = 25.0, recipe: str = DEMO_RECIPE,
             batch_size: int = 8, patch_size: int = 48, lr: float = 2e-3, seed: int = 0,
             progress: bool = True, threads: Optional[int] = None,
             quiet: bool = False) -> Dict[str, Any]:
    """Run the demo; returns {"psnr_noisy", "psnr_restored", "gain", "seconds", "steps",
    "image"}."""
    t_start = time.perf_counter()
    torch.set_num_threads(int(threads) if threads else auto_threads())
    out = Path(out_dir)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    train_imgs = skimage_images(TRAIN_IMAGES)
    clean = skimage_images((HELD_OUT,))[0]
    noise = GaussianNoise(sigma=sigma, convention="uint8")
    noisy = noise(clean, seed=seed + 12345)
    ds = SyntheticDataset(train_imgs, noise, patch_size=patch_size, augment=True, task="denoise",
                          seed=seed)
    # a step budget large enough that the time budget ends the run; the schedule spans it
    budget_steps = steps if steps is not None else 10 ** 6
    rec = _demo_recipe(recipe, lr)
    say(f"irblocks demo ({torch.get_num_threads()} thread(s)): training {recipe} on "
        f"{', '.join(TRAIN_IMAGES)} (sigma {sigma:g} noise, "
        f"{patch_size}x{patch_size} crops, batch {batch_size}) for "
        + (f"{steps} steps" if steps is not None else f"about {seconds:.0f} s"))
    trainer = Trainer(rec, ds, out_dir=out / "run", steps=budget_steps, batch_size=batch_size,
                      seed=seed, progress=progress and not quiet, log_every=25, device="cpu",
                      time_budget=None if steps is not None else seconds,
                      schedule_by_time=steps is None)
    summary = trainer.fit()
    model = trainer.eval_model().eval()
    restored = restore_image(model, noisy, tile=None)
    p_noisy, p_rest = psnr(noisy, clean), psnr(restored, clean)
    s_noisy, s_rest = ssim(noisy, clean), ssim(restored, clean)
    png = write_image(labelled_row([noisy, restored, clean], [
        f"noisy {p_noisy:.2f} dB / SSIM {s_noisy:.3f}",
        f"restored {p_rest:.2f} dB / SSIM {s_rest:.3f}",
        "clean (reference)"]), out / "before_after.png")
    result = {"psnr_noisy": p_noisy, "psnr_restored": p_rest, "gain": p_rest - p_noisy,
              "ssim_noisy": s_noisy, "ssim_restored": s_rest, "steps": summary["steps"],
              "train_seconds": summary["seconds"], "seconds": time.perf_counter() - t_start,
              "image": str(png), "checkpoint": str(out / "run" / "last.safetensors"),
              "sigma": sigma, "held_out": HELD_OUT, "recipe": recipe}
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    return result
