"""Restore image files and folders with a trained model (``irblocks restore``).

Inputs are files and/or folders (their images, not recursive). No partial output:

1. every input is decoded completely (not only its header) before the first output
   is written, so a bad input (e.g. a truncated PNG with a valid header) stops the run
   with one line and writes nothing;
2. outputs are written into a hidden staging folder next to them
   (``.irblocks-restore-*``) and moved into place only when every image succeeded;
   a failure or interruption while restoring removes the staging folder and any
   output folder the run created, so no output file is left.

Any image size: the model pads internally; images larger than ``tile`` go through
overlapping tiles.

``out``: a folder (created; outputs keep the input file names), or, for a single
input file, an image file name.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from irblocks.progress import progress as progress_bar
from irblocks.train.imageio import (
    IMAGE_EXTS,
    ImageError,
    image_size,
    list_images,
    read_image,
    write_image,
)
from irblocks.train.tiling import restore_image

__all__ = ["restore_files", "collect_inputs"]


def collect_inputs(inputs: Sequence[str], decode: bool = True) -> List[Path]:
    """The image files named by ``inputs`` (files or folders), checked readable.

    ``decode=True`` decodes every image completely (a truncated file whose header is
    valid fails here); ``decode=False`` reads headers only.
    """
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
    if decode:
        for f in files:
            read_image(f)        # the whole file: the decode the restore will do
    return files


def _outputs(files: List[Path], out: str, single_file: bool) -> List[Path]:
    o = Path(out)
    if single_file and o.suffix.lower() in IMAGE_EXTS and not o.is_dir():
        return [o]
    if o.exists() and not o.is_dir():
        raise ImageError(f"output {o} exists and is not a folder (several inputs need an output "
                         "folder)")
    names = [f.name for f in files]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ImageError(f"two inputs share the file name {sorted(dup)[0]!r}; restore them into "
                         "separate folders")
    return [o / f.name for f in files]


def _missing_dirs(folder: Path) -> List[Path]:
    """``folder`` and its ancestors that do not exist yet (deepest first)."""
    out = []
    p = folder.absolute()
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


@torch.no_grad()
def restore_files(model: nn.Module, inputs: Sequence[str], out: str, tile: Optional[int] = 512,
                  overlap: int = 32, device: str | torch.device = "cpu", progress: bool = True,
                  overwrite: bool = True) -> List[Path]:
    """Restore every input image; returns the written paths (all or nothing, see the module doc)."""
    files = collect_inputs(inputs)
    single = len(files) == 1 and Path(inputs[0]).is_file() and len(inputs) == 1
    targets = _outputs(files, out, single)
    for f, t in zip(files, targets):
        if t.resolve() == f.resolve():
            raise ImageError(f"output {t} would overwrite its input; choose another output folder")
    if not overwrite:
        clash = [t for t in targets if t.exists()]
        if clash:
            raise ImageError(f"output {clash[0]} already exists (--no-overwrite was given: "
                             "remove it, or drop --no-overwrite to replace it)")
    model = model.to(device).eval()
    folder = targets[0].parent
    created = _missing_dirs(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".irblocks-restore-", dir=folder))
    done = False
    try:
        with progress_bar(total=len(files), desc="restore", unit="img", enabled=progress) as bar:
            for f, t in zip(files, targets):
                bar.set_postfix_str(f.name[:40], refresh=False)
                y = restore_image(model, read_image(f), tile, overlap, device)
                write_image(y, stage / t.name)
                bar.update(1)
        for t in targets:
            os.replace(stage / t.name, t)
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for d in created:            # deepest first; only folders this run made and left empty
                try:
                    d.rmdir()
                except OSError:
                    break
    return targets
