"""Training, evaluation and restoration tools: degradations, datasets, metrics, the trainer,
``irblocks train / eval / restore / demo``.

Importing this package registers the degradations (registry kind ``"degradation"``).
"""
from irblocks.train.degradations import (  # noqa: F401
    CDD11, JPEG, Compose, Degradation, GaussianNoise, Haze, LowLight, MotionBlur, Rain, Snow,
    build_degradation,
)
from irblocks.train.datasets import (  # noqa: F401
    AllInOne, EpochBatchSampler, PairedFolder, SyntheticDataset, find_paired, make_loader,
)
from irblocks.train.metrics import batch_psnr, batch_ssim, psnr, ssim  # noqa: F401
from irblocks.train.tiling import tiled_forward  # noqa: F401
from irblocks.train.trainer import Trainer, TrainError, load_model  # noqa: F401

__all__ = [
    "Degradation", "GaussianNoise", "Haze", "Rain", "Snow", "MotionBlur", "LowLight", "JPEG", "Compose",
    "CDD11", "build_degradation", "PairedFolder", "SyntheticDataset", "AllInOne", "find_paired",
    "EpochBatchSampler", "make_loader", "psnr", "ssim", "batch_psnr", "batch_ssim", "tiled_forward",
    "Trainer", "TrainError", "load_model",
]
