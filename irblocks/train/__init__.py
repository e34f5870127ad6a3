"""Training, evaluation and restoration tools: degradations, datasets, metrics, the trainer,
``irblocks train / eval / restore / demo``.

Light to import (names below load on first use, PEP 562); the degradations
(registry kind ``"degradation"``) register with the other built-in entries on
the first registry lookup.
"""
from __future__ import annotations

import importlib

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["Degradation", "GaussianNoise", "Haze", "Rain", "Snow", "MotionBlur",
                     "LowLight", "JPEG", "Compose", "CDD11", "build_degradation"],
                    "irblocks.train.degradations"),
    **dict.fromkeys(["PairedFolder", "SyntheticDataset", "AllInOne", "find_paired",
                     "EpochBatchSampler", "make_loader"], "irblocks.train.datasets"),
    **dict.fromkeys(["psnr", "ssim", "batch_psnr", "batch_ssim"], "irblocks.train.metrics"),
    "tiled_forward": "irblocks.train.tiling",
    **dict.fromkeys(["Trainer", "TrainError", "load_model"], "irblocks.train.trainer"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'irblocks.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
