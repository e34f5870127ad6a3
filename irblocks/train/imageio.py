"""Image files <-> float tensors, with one-line errors and atomic writes."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, List

import numpy as np
import torch

__all__ = ["IMAGE_EXTS", "read_image", "write_image", "list_images", "image_size", "atomic_path"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
    """An image that cannot be read or written (one-line message)."""


def list_images(folder: str | os.PathLike, recursive: bool = False) -> List[Path]:
    """Sorted image files of a folder; a clear error if it has none."""
    p = Path(folder)
    if not p.exists():
        raise ImageError(f"no such folder: {p}")
    if not p.is_dir():
        raise ImageError(f"expected a folder of images, got a file: {p}")
    it = p.rglob("*") if recursive else p.iterdir()
    files = sorted(f for f in it if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise ImageError(f"no images found in {p} (looked for {', '.join(IMAGE_EXTS)})")
    return files


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the header only."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as e:  # noqa: BLE001
        raise ImageError(f"cannot read image {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return h, w


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a 3 x H x W float32 tensor in [0, 1] (grey/alpha converted to RGB)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode.startswith("I;16") else 255.0)
                arr = np.repeat(arr[..., None], 3, axis=2)
            else:
                arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ImageError(f"no such image file: {path}") from None
    except Exception as e:  # noqa: BLE001
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot read image {path}: {msg}") from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


class atomic_path:
    """Context manager yielding a temporary path next to ``path``; renamed onto it on success,
    removed on failure (so no partial output file is ever left behind)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp" + self.path.suffix,
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)
            os.replace(self.tmp, self.path)
        else:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
        return False


def to_uint8(img: torch.Tensor) -> np.ndarray:
    x = img.detach().float().cpu()
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ImageError(f"write_image: expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def write_image(img: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a (1 x) 3 x H x W tensor in [0, 1] as an 8-bit image (format from the suffix), atomically."""
    from PIL import Image
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot write {path}: unknown image suffix {path.suffix!r} (use one of {', '.join(IMAGE_EXTS)})")
    arr = to_uint8(img)
    with atomic_path(path) as tmp:
        kw = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(tmp, format=fmt, **kw)
    return path


def hstack(images: Iterable[torch.Tensor], gap: int = 4) -> torch.Tensor:
    """Images side by side (same height) with a white gap."""
    ims = [i[0] if i.dim() == 4 else i for i in images]
    h = ims[0].shape[1]
    parts = []
    for k, im in enumerate(ims):
        if k:
            parts.append(torch.ones(3, h, gap))
        parts.append(im.detach().float().cpu().clamp(0, 1))
    return torch.cat(parts, dim=2)
