"""Restore image files and folders with a trained model (``irblocks restore``).

Inputs are files and/or folders (their images, not recursive). Every input is
checked (header read) before anything is written, so a bad input stops the run
with one line and no output. Outputs are written under a temporary name and
renamed, so an interrupted run leaves no partial file. Any image size: the model
pads internally; images larger than ``tile`` go through overlapping tiles.

``out``: a folder (created; outputs keep the input file names), or, for a single
input file, an image file name.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from irblocks.progress import progress as progress_bar
from irblocks.train.imageio import IMAGE_EXTS, ImageError, image_size, list_images, read_image, write_image
from irblocks.train.tiling import restore_image

__all__ = ["restore_files", "collect_inputs"]


def collect_inputs(inputs: Sequence[str]) -> List[Path]:
    """The image files named by ``inputs`` (files or folders), checked readable."""
    if not inputs:
        raise ImageError("no input given: name image files or folders")
    files: List[Path] = []
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise ImageError(f"no such file or folder: {p}")
    for f in files:
        image_size(f)            # raises "cannot read image ..." for unreadable files
    return files


def _outputs(files: List[Path], out: str, single_file: bool) -> List[Path]:
    o = Path(out)
    if single_file and o.suffix.lower() in IMAGE_EXTS and not o.is_dir():
        return [o]
    if o.exists() and not o.is_dir():
        raise ImageError(f"output {o} exists and is not a folder (several inputs need an output folder)")
    names = [f.name for f in files]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ImageError(f"two inputs share the file name {sorted(dup)[0]!r}; restore them into separate folders")
    return [o / f.name for f in files]


@torch.no_grad()
def restore_files(model: nn.Module, inputs: Sequence[str], out: str, tile: Optional[int] = 512,
                  overlap: int = 32, device: str | torch.device = "cpu", progress: bool = True,
                  overwrite: bool = True) -> List[Path]:
    """Restore every input image; returns the written paths."""
    files = collect_inputs(inputs)
    single = len(files) == 1 and Path(inputs[0]).is_file() and len(inputs) == 1
    targets = _outputs(files, out, single)
    for f, t in zip(files, targets):
        if t.resolve() == f.resolve():
            raise ImageError(f"output {t} would overwrite its input; choose another output folder")
    if not overwrite:
        clash = [t for t in targets if t.exists()]
        if clash:
            raise ImageError(f"output {clash[0]} already exists (pass --overwrite)")
    model = model.to(device).eval()
    written: List[Path] = []
    with progress_bar(total=len(files), desc="restore", unit="img", enabled=progress) as bar:
        for f, t in zip(files, targets):
            bar.set_postfix_str(f.name[:40], refresh=False)
            img = read_image(f)
            y = restore_image(model, img, tile, overlap, device)
            write_image(y, t)
            written.append(t)
            bar.update(1)
    return written
