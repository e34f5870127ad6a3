"""Tiled inference for images too large to run at once.

``tiled_forward(model, x, tile=256, overlap=32)`` runs ``model`` on overlapping
tile x tile windows (the last window of a row/column is aligned to the border,
so every tile has full size unless the image is smaller than a tile) and blends
the outputs with weights that ramp linearly across the overlaps, so seams are
invisible. Images no larger than one tile go through the model directly.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

__all__ = ["tiled_forward", "tile_starts", "restore_image"]


def tile_starts(size: int, tile: int, overlap: int) -> List[int]:
    """Start offsets covering [0, size) with windows of ``tile`` overlapping by >= ``overlap``."""
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return sorted(set(starts))


def _ramp(n: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    w = torch.ones(n)
    r = min(overlap, n // 2)
    if r > 0:
        ramp = torch.arange(1, r + 1, dtype=torch.float32) / (r + 1)
        if not first:
            w[:r] = ramp
        if not last:
            w[n - r:] = ramp.flip(0)
    return w


@torch.no_grad()
def tiled_forward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                  tile: Optional[int] = 256, overlap: int = 32,
                  out_channels: Optional[int] = None) -> torch.Tensor:
    """Run ``model`` on (B, C, H, W) ``x`` tile by tile (see the module docstring)."""
    if x.dim() != 4:
        raise ValueError("tiled_forward: expected a B x C x H x W tensor, got shape "
                         f"{tuple(x.shape)}")
    b, c, h, w = x.shape
    if not tile or (h <= tile and w <= tile):
        return _out(model(x))
    if tile < 8:
        raise ValueError(f"tiled_forward: tile must be >= 8, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tiled_forward: overlap must be in [0, tile), got {overlap} for tile "
                         f"{tile}")
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = None
    norm = torch.zeros(1, 1, h, w, device=x.device)
    for i, y0 in enumerate(ys):
        th = min(tile, h)
        wy = _ramp(th, overlap, i == 0, i == len(ys) - 1).to(x.device)
        for j, x0 in enumerate(xs):
            tw = min(tile, w)
            wx = _ramp(tw, overlap, j == 0, j == len(xs) - 1).to(x.device)
            y = _out(model(x[:, :, y0:y0 + th, x0:x0 + tw]))
            if out is None:
                out = torch.zeros(b, y.shape[1], h, w, device=x.device, dtype=torch.float32)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, y0:y0 + th, x0:x0 + tw] += y.float() * wt
            norm[:, :, y0:y0 + th, x0:x0 + tw] += wt
    return (out / norm).to(x.dtype)


def _out(y):
    from irblocks.train.trainer import model_output
    return model_output(y)


@torch.no_grad()
def restore_image(model, img: torch.Tensor, tile: Optional[int] = None, overlap: int = 32,
                  device: str | torch.device = "cpu") -> torch.Tensor:
    """Restore one 3 x H x W (or 1 x 3 x H x W) image in [0, 1]; returns 3 x H x W on the CPU,
    clamped."""
    x = img.unsqueeze(0) if img.dim() == 3 else img
    y = tiled_forward(model, x.to(device), tile, overlap)
    return y[0].float().clamp(0, 1).cpu()
