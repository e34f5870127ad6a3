"""Image files <-> float tensors, with one-line errors and atomic writes.

Reading applies the EXIF / TIFF orientation tag (phone photos are stored sideways with a
tag saying how to turn them), so tensors, restored outputs (written without the tag) and
their sizes are upright. 16-bit TIFFs (grey or RGB) are read with tifffile at full
precision (Pillow would cut RGB to 8 bits); other files through Pillow (16-bit grey PNG at
full precision; a 16-bit colour PNG is read at 8 bits, with a warning saying so).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable, List

import numpy as np
import torch

from irblocks.atomic import atomic_path

__all__ = ["IMAGE_EXTS", "read_image", "write_image", "list_images", "image_size", "orient"]

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


ORIENTATION_TAG = 0x0112          # EXIF / TIFF Orientation


def _orientation(im) -> int:
    """The EXIF/TIFF orientation (1..8; 1 = upright) of an opened Pillow image."""
    try:
        o = int(im.getexif().get(ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001  (a broken EXIF block: treat the image as upright)
        return 1
    return o if 1 <= o <= 8 else 1


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an H x W (x C) array stored with EXIF ``orientation`` upright (the transforms of
    ``PIL.ImageOps.exif_transpose``: 2 mirror, 3 rotate 180, 4 flip, 5 transpose,
    6 rotate 90 clockwise, 7 transverse, 8 rotate 90 counter-clockwise)."""
    if orientation == 2:
        return arr[:, ::-1]
    if orientation == 3:
        return arr[::-1, ::-1]
    if orientation == 4:
        return arr[::-1]
    if orientation == 5:
        return arr.swapaxes(0, 1)
    if orientation == 6:
        return np.rot90(arr, -1)
    if orientation == 7:
        return np.rot90(arr, 2).swapaxes(0, 1)
    if orientation == 8:
        return np.rot90(arr, 1)
    return arr


def _png_bit_depth(path) -> int:
    """Bit depth from a PNG's IHDR (byte 24 of the file; 0 when unreadable)."""
    with open(path, "rb") as f:
        head = f.read(26)
    return head[24] if len(head) >= 26 and head[12:16] == b"IHDR" else 0


def _fail(path, e: Exception) -> ImageError:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ImageError(f"cannot read image {path}: {msg}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) of the upright image, from the header only."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            w, h = im.size
            o = _orientation(im)
    except FileNotFoundError:
        raise ImageError(f"no such image file: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise _fail(path, e) from None
    return (w, h) if o >= 5 else (h, w)


def _to_unit(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixels -> float32 in [0, 1] at the file's precision."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {arr.dtype}")


def _tiff_pixels(path) -> np.ndarray:
    """H x W (x C) pixels of a TIFF's first image at full precision (tifffile)."""
    import tifffile
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        arr = page.asarray()
        planar = page.planarconfig == tifffile.PLANARCONFIG.SEPARATE
    if planar and arr.ndim == 3:
        arr = np.moveaxis(arr, 0, -1)
    return arr


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as an upright 3 x H x W float32 tensor in [0, 1] (grey/alpha converted to
    RGB; 16-bit TIFF and grey PNG at full precision; EXIF orientation applied)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            o = _orientation(im)
            if im.format == "TIFF":
                arr = _tiff_pixels(path)
            else:
                im.load()
                if im.mode.startswith("I;16"):
                    arr = np.asarray(im).astype(np.uint16)
                elif im.mode == "I":
                    arr = np.asarray(im).astype(np.float32) / 255.0
                else:
                    if im.format == "PNG" and _png_bit_depth(path) == 16:
                        warnings.warn(f"{path}: a 16-bit colour PNG is read at 8 bits (Pillow "
                                      "cannot do better); save it as a 16-bit TIFF for full "
                                      "precision",
                                      stacklevel=2)
                    arr = np.asarray(im.convert("RGB"))
        arr = _to_unit(arr)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
            raise ValueError(f"unsupported layout {arr.shape} "
                             "(expected H x W, H x W x 3 or H x W x 4)")
        arr = arr[..., :1] if arr.shape[2] == 2 else arr[..., :3]       # drop alpha
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
        arr = orient(arr, o)
    except FileNotFoundError:
        raise ImageError(f"no such image file: {path}") from None
    except Exception as e:  # noqa: BLE001
        raise _fail(path, e) from None
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()

def to_uint8(img: torch.Tensor) -> np.ndarray:
    x = img.detach().float().cpu()
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ImageError(f"write_image: expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def write_image(img: torch.Tensor, path: str | os.PathLike) -> Path:
    """Write a (1 x) 3 x H x W tensor in [0, 1] as an 8-bit image (format from the suffix),
    atomically."""
    from PIL import Image
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"cannot write {path}: unknown image suffix {path.suffix!r} (use one of "
                         f"{', '.join(IMAGE_EXTS)})")
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
