"""Shared helpers of the training-tool tests: a tiny recipe, a synthetic data set and image
folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from irblocks.train.datasets import SyntheticDataset

TINY_MODEL = {"type": "unet_restorer", "width": 8, "blocks": [1, 1, 1, 1], "refinement": 0,
              "heads": [1, 1, 1, 1]}


def tiny_recipe(**sections) -> dict:
    r = {"recipe": 1, "model": dict(TINY_MODEL),
         "loss": [{"type": "l1", "weight": 1.0}, {"type": "fft", "weight": 0.1}],
         "optimizer": {"type": "adamw", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4},
         "schedule": {"type": "warmup_cosine", "warmup_epochs": 1, "epochs": 4},
         "train": {"batch_size": 2, "patch_size": 32}}
    r.update(sections)
    return r


def synthetic_data(n_images: int = 5) -> SyntheticDataset:
    """``n_images`` random 3 x 40 x 40 images (seeded), Gaussian noise sigma 25, augmented
    32 x 32 crops (seed 1): the training tests' data (a module-scoped fixture wraps it)."""
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 40, 40, generator=g) for _ in range(n_images)]
    return SyntheticDataset(imgs, "gaussian_noise:sigma=25", patch_size=32, augment=True, seed=1)


def write_png(path: Path, h: int = 40, w: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 5) % 256, (yy * 7) % 256, ((xx + yy) * 3) % 256], -1).astype(np.float64)
    arr = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def paired_folder(root: Path, n: int = 3, h: int = 40, w: int = 48,
                  layout=("input", "target")) -> Path:
    for i in range(n):
        write_png(root / layout[0] / f"img{i}.png", h, w, seed=100 + i)
        write_png(root / layout[1] / f"img{i}.png", h, w, seed=i)
    return root
