"""Datasets for training and evaluation.

Items are dicts ``{"input": 3xHxW, "target": 3xHxW, "task": str, "name": str}``
with float32 images in [0, 1].

* :class:`PairedFolder`: degraded/clean folders. Pairs are matched by file stem,
  tolerating the benchmark naming schemes (``rain-12`` <-> ``norain-12`` of
  Rain100L/H, ``0001_0.8_0.2`` <-> ``0001`` of RESIDE/SOTS). Sizes are checked
  from the headers at construction (one clear error for a mismatch).
* :func:`find_paired` auto-detects the standard layouts below a root folder:
  any folder holding one of the subfolder pairs in :data:`PAIR_LAYOUTS`
  (``input/target``, ``degraded/clean``, ``lq/gt``, ``rainy/gt``, ``hazy/clear``,
  ``hazy/gt``, ``low/high``, ``blur/sharp``, ``noisy/clean``,
  ``synthetic/original``) becomes one task named by its relative path; a folder
  with a ``clear`` subfolder next to degradation-named ones (CDD-11: ``low``,
  ``haze``, ``low_haze_rain``, ... and ``clear``) gives one task per sibling.
* :class:`SyntheticDataset`: clean images (a folder or in-memory tensors) degraded
  on the fly by a registered degradation.
* :class:`AllInOne`: several datasets mixed, each repeated ``repeat`` times per
  epoch (PromptIR's de-rain x120, de-haze x1, de-noise x3 style).
* Random crop and flips (``patch_size``, ``augment``) for training.

Randomness: every item is drawn with a generator seeded by (seed, epoch, index),
so data are the same whatever the number of DataLoader workers or processes, and
a resumed run sees exactly the batches the uninterrupted run saw.
:class:`EpochBatchSampler` produces (epoch, index) pairs, shuffled per epoch,
sharded across distributed ranks, and can start in the middle of an epoch.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from irblocks.train.degradations import build_degradation
from irblocks.train.imageio import image_size, list_images, read_image

__all__ = [
    "PairedFolder", "SyntheticDataset", "AllInOne", "find_paired", "EpochBatchSampler",
    "make_loader", "item_generator", "random_crop_flip", "PAIR_LAYOUTS", "DataError",
]

PAIR_LAYOUTS = (("input", "target"), ("degraded", "clean"), ("lq", "gt"), ("rainy", "gt"),
                ("hazy", "clear"), ("hazy", "gt"), ("low", "high"), ("blur", "sharp"),
                ("noisy", "clean"), ("input", "gt"), ("synthetic", "original"))


class DataError(ValueError):
    """A data problem (one-line message)."""


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch, index) (stable across runs and platforms)."""
    h = hashlib.blake2b(f"{seed}/{epoch}/{index}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))


def _split_key(key) -> Tuple[int, int]:
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return 0, int(key)


def random_crop_flip(images: Sequence[torch.Tensor], patch: Optional[int], augment: bool,
                     g: torch.Generator) -> List[torch.Tensor]:
    """The same random patch x patch crop (reflect-padded if smaller) and random
    horizontal/vertical flips applied to every image of ``images``."""
    out = list(images)
    if patch:
        _, h, w = out[0].shape
        if h < patch or w < patch:
            ph, pw = max(0, patch - h), max(0, patch - w)
            mode = "reflect" if ph < h and pw < w else "replicate"
            out = [F.pad(x.unsqueeze(0), (0, pw, 0, ph), mode=mode)[0] for x in out]
            _, h, w = out[0].shape
        top = int(torch.randint(0, h - patch + 1, (), generator=g))
        left = int(torch.randint(0, w - patch + 1, (), generator=g))
        out = [x[:, top:top + patch, left:left + patch] for x in out]
    if augment:
        flips = torch.rand(2, generator=g)
        if flips[0] < 0.5:
            out = [x.flip(-1) for x in out]
        if flips[1] < 0.5:
            out = [x.flip(-2) for x in out]
    return [x.contiguous() for x in out]


def _match_keys(stem: str) -> List[str]:
    keys = [stem]
    low = stem.lower()
    for a, b in (("rain-", "norain-"), ("rain_", "norain_"), ("_rain", "_clean"),
                 ("rain", "norain")):
        if low.startswith(a):
            keys.append(b + stem[len(a):])
    if "_" in stem:
        keys.append(stem.split("_")[0])
    for suf in ("_noisy", "_lq", "_low", "_hazy", "_rain", "_blur"):
        if low.endswith(suf):
            keys.append(stem[: -len(suf)])
    return keys


class PairedFolder(Dataset):
    """Degraded / clean image pairs from two folders (matched by file stem, see module doc).

    Args:
        degraded, clean: folders.
        patch_size: random crop size (None: whole images).
        augment: random flips.
        task: name reported in items.
        seed: base seed of the crops/flips.
        check_sizes: verify every pair's sizes from the headers at construction.
    """

    def __init__(self, degraded: str | os.PathLike, clean: str | os.PathLike,
                 patch_size: Optional[int] = None, augment: bool = False, task: str = "",
                 seed: int = 0, check_sizes: bool = True):
        deg_files = list_images(degraded, recursive=True)     # RESIDE's synthetic/part1..4
        clean_files = list_images(clean, recursive=True)
        by_stem = {f.stem: f for f in clean_files}
        pairs: List[Tuple[Path, Path]] = []
        for f in deg_files:
            match = next((by_stem[k] for k in _match_keys(f.stem) if k in by_stem), None)
            if match is None:
                raise DataError(f"no clean image for {f} in {clean} (looked for stems "
                                f"{', '.join(dict.fromkeys(_match_keys(f.stem)))})")
            pairs.append((f, match))
        if check_sizes:
            for d, c in pairs:
                sd, sc = image_size(d), image_size(c)
                if sd != sc:
                    raise DataError(f"pair size mismatch: {d} is {sd[0]}x{sd[1]} but {c} is "
                                    f"{sc[0]}x{sc[1]} (H x W)")
        self.pairs = pairs
        self.patch_size, self.augment, self.seed = patch_size, augment, seed
        self.task = task or Path(degraded).parent.name

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key) -> Dict[str, Any]:
        epoch, i = _split_key(key)
        d, c = self.pairs[i]
        x, y = read_image(d), read_image(c)
        if x.shape != y.shape:
            raise DataError(f"pair size mismatch: {d} is {x.shape[1]}x{x.shape[2]} but {c} is "
                            f"{y.shape[1]}x{y.shape[2]}")
        g = item_generator(self.seed, epoch, i)
        x, y = random_crop_flip([x, y], self.patch_size, self.augment, g)
        return {"input": x, "target": y, "task": self.task, "name": d.name}


class SyntheticDataset(Dataset):
    """Clean images degraded on the fly.

    Args:
        clean: a folder, a list of files, or a list of 3 x H x W tensors in [0, 1].
        degradation: a degradation spec (name, mapping, "name:k=v" string or instance).
        patch_size: random crop (taken before degrading; None: whole images).
        augment: random flips. task: reported name. seed: base seed.
        cache: keep decoded clean images in memory.
    """

    def __init__(self, clean: Union[str, os.PathLike, Sequence[Any]], degradation: Any,
                 patch_size: Optional[int] = None, augment: bool = False, task: str = "",
                 seed: int = 0, cache: bool = True):
        if isinstance(clean, (str, os.PathLike)):
            self.sources: List[Any] = list(list_images(clean))
        else:
            self.sources = list(clean)
            if not self.sources:
                raise DataError("SyntheticDataset: no clean images given")
        self.degradation = build_degradation(degradation)
        self.patch_size, self.augment, self.seed = patch_size, augment, seed
        self.task = task or getattr(self.degradation, "name", "synthetic")
        self.cache = cache
        self._cache: Dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.sources)

    def clean_image(self, i: int) -> torch.Tensor:
        if i in self._cache:
            return self._cache[i]
        src = self.sources[i]
        img = src.float() if isinstance(src, torch.Tensor) else read_image(src)
        if self.cache:
            self._cache[i] = img
        return img

    def __getitem__(self, key) -> Dict[str, Any]:
        epoch, i = _split_key(key)
        g = item_generator(self.seed, epoch, i)
        (y,) = random_crop_flip([self.clean_image(i)], self.patch_size, self.augment, g)
        x = self.degradation(y, generator=g)
        src = self.sources[i]
        name = Path(src).name if isinstance(src, (str, os.PathLike)) else f"image{i}"
        return {"input": x, "target": y, "task": self.task, "name": name}


class AllInOne(Dataset):
    """Concatenation of datasets, dataset k repeated ``repeats[k]`` times per epoch."""

    def __init__(self, datasets: Sequence[Dataset], repeats: Optional[Sequence[int]] = None):
        if not datasets:
            raise DataError("AllInOne: no datasets given")
        repeats = list(repeats or [1] * len(datasets))
        if len(repeats) != len(datasets) or any(int(r) < 1 for r in repeats):
            raise DataError(f"AllInOne: need one repeat factor >= 1 per dataset, got {repeats} for "
                            f"{len(datasets)} datasets")
        self.datasets, self.repeats = list(datasets), [int(r) for r in repeats]
        self.index: List[Tuple[int, int, int]] = []   # (dataset, item, repeat copy)
        for k, (d, r) in enumerate(zip(self.datasets, self.repeats)):
            for c in range(r):
                self.index += [(k, j, c) for j in range(len(d))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key) -> Dict[str, Any]:
        epoch, i = _split_key(key)
        k, j, c = self.index[i]
        # each repeat copy gets its own random draw: fold the copy into the epoch key
        return self.datasets[k][(epoch * max(self.repeats) + c, j)]


def find_paired(root: str | os.PathLike, **kwargs) -> Dict[str, PairedFolder]:
    """Every paired layout below ``root`` (root itself included), as task -> PairedFolder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"no such folder: {root}")
    if not root.is_dir():
        raise DataError(f"expected a data folder, got a file: {root}")
    found: Dict[str, PairedFolder] = {}
    for dirpath, dirnames, _ in sorted(os.walk(root)):
        names = {n.lower(): n for n in dirnames}
        for a, b in PAIR_LAYOUTS:
            if a in names and b in names:
                d = Path(dirpath)
                task = str(d.relative_to(root)) if d != root else root.name
                found[task] = PairedFolder(d / names[a], d / names[b], task=task, **kwargs)
                dirnames[:] = [n for n in dirnames if n not in (names[a], names[b])]
                break
        else:
            if "clear" in names and len(names) > 1:            # CDD-11: <type>/ + clear/
                d = Path(dirpath)
                for n in sorted(dirnames):
                    if n.lower() == "clear":
                        continue
                    task = str((d / n).relative_to(root))
                    found[task] = PairedFolder(d / n, d / names["clear"], task=task, **kwargs)
                dirnames[:] = []
    if not found:
        layouts = ", ".join(f"{a}/{b}" for a, b in PAIR_LAYOUTS[:6])
        raise DataError(f"no paired data found in {root}: expected subfolders such as {layouts} "
                        "...")
    return found


class EpochBatchSampler(Sampler):
    """Batches of (epoch, index) keys: shuffled per epoch with (seed, epoch), sharded across
    ``world`` ranks (padded so every rank gets the same number of batches), drop_last, and
    startable at any global step (``start_step``) for exact resumption; runs forever
    (``steps`` limits it)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world: int = 1, start_step: int = 0, steps: Optional[int] = None):
        if n < 1:
            raise DataError("the training set is empty")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world, self.start_step, self.steps = rank, world, start_step, steps
        per_rank = -(-n // world)
        self.batches_per_epoch = max(1, per_rank // batch_size)

    def epoch_order(self, epoch: int) -> List[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = -(-self.n // self.world) * self.world
        while len(order) < total:
            order += order[: total - len(order)]
        mine = order[self.rank::self.world]
        while len(mine) < self.batch_size:            # tiny sets: cycle to fill one batch
            mine = mine + mine
        return mine

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        step = self.start_step
        end = None if self.steps is None else self.steps
        while end is None or step < end:
            epoch, b = divmod(step, self.batches_per_epoch)
            order = self.epoch_order(epoch)
            for j in range(b, self.batches_per_epoch):
                if end is not None and step >= end:
                    return
                yield [(epoch, i) for i in order[j * self.batch_size:(j + 1) * self.batch_size]]
                step += 1

    def __len__(self) -> int:
        if self.steps is None:
            return self.batches_per_epoch
        return max(0, self.steps - self.start_step)


def collate(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    shapes = {tuple(i["input"].shape) for i in items}
    if len(shapes) > 1:
        raise DataError(f"cannot batch images of different sizes {sorted(shapes)}: set a "
                        "patch_size")
    return {"input": torch.stack([i["input"] for i in items]),
            "target": torch.stack([i["target"] for i in items]),
            "task": [i["task"] for i in items], "name": [i["name"] for i in items]}


def make_loader(dataset: Dataset, batch_size: int, workers: int = 0, seed: int = 0,
                shuffle: bool = True, rank: int = 0, world: int = 1, start_step: int = 0,
                steps: Optional[int] = None) -> DataLoader:
    """A DataLoader over :class:`EpochBatchSampler` batches (see its doc)."""
    sampler = EpochBatchSampler(len(dataset), batch_size, seed, shuffle, rank, world, start_step,
                                steps)
    # a private generator: creating the iterator must not draw from torch's global RNG (that
    # would shift the random stream of the losses between a resumed and an uninterrupted run)
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      persistent_workers=False, pin_memory=torch.cuda.is_available(), generator=gen)
