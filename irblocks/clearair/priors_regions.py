"""Built-in region prior: K binary masks from k-means on colour and position."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from irblocks.registry import register

from .priors_common import GuidancePrior

__all__ = ["KMeansRegionPrior", "kmeans_masks"]


def _grid_init(feats: torch.Tensor, h: int, w: int, k: int) -> torch.Tensor:
    """Deterministic initial centroids: pixels on a regular grid of about k cells."""
    rows = max(1, int(math.floor(math.sqrt(k * h / max(w, 1)))))
    rows = min(rows, k)
    cols = math.ceil(k / rows)
    idx = []
    for i in range(rows):
        for j in range(cols):
            y = min(h - 1, int((i + 0.5) * h / rows))
            x = min(w - 1, int((j + 0.5) * w / cols))
            idx.append(y * w + x)
    idx = torch.tensor(idx[:k], device=feats.device)
    return feats[:, idx]                                   # (B, k, F)


def kmeans_masks(img: torch.Tensor, k: int = 16, iters: int = 10, position_weight: float = 0.5,
                 work_size: int = 64) -> torch.Tensor:
    """(B, 3, H, W) -> (B, k, H, W) binary {0, 1} masks that partition the image.

    Features per pixel: RGB and (y, x) in [0, 1] scaled by ``position_weight``. Centroids
    are fitted on an area-downsampled copy (at most ``work_size`` pixels a side) from a
    deterministic grid initialisation (Lloyd iterations; an empty cluster keeps its
    centroid), then every full-resolution pixel is assigned to its nearest centroid.
    Clusters that end up empty give all-zero masks.
    """
    b, _, h, w = img.shape
    if k == 0 or img.device.type == "meta":   # meta: shapes only (size/FLOP counting)
        return img.new_zeros(b, k, h, w)

    def features(x):
        hh, ww = x.shape[-2:]
        ys = torch.linspace(0, 1, hh, device=x.device,
                            dtype=x.dtype).view(1, 1, hh, 1).expand(b, 1, hh, ww)
        xs = torch.linspace(0, 1, ww, device=x.device,
                            dtype=x.dtype).view(1, 1, 1, ww).expand(b, 1, hh, ww)
        f = torch.cat([x, ys * position_weight, xs * position_weight], 1)
        return f.flatten(2).transpose(1, 2)                # (B, N, 5)

    x = img.float()
    small = x
    if max(h, w) > work_size:
        scale = work_size / max(h, w)
        small = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))),
                              mode="area")
    fs = features(small)
    sh, sw = small.shape[-2:]
    cent = _grid_init(fs, sh, sw, min(k, sh * sw))
    for _ in range(iters):
        assign = torch.cdist(fs, cent).argmin(-1)           # (B, N)
        onehot = F.one_hot(assign, cent.shape[1]).to(fs.dtype)   # (B, N, k)
        count = onehot.sum(1)                               # (B, k)
        sums = onehot.transpose(1, 2) @ fs                  # (B, k, F)
        new = sums / count.clamp_min(1).unsqueeze(-1)
        cent = torch.where(count.unsqueeze(-1) > 0, new, cent)
    assign = torch.cdist(features(x), cent).argmin(-1)      # full resolution
    masks = F.one_hot(assign, k).transpose(1, 2).reshape(b, k, h, w)
    return masks.to(img.dtype)


@register("prior", "kmeans_regions", aliases=("regions_kmeans",))
class KMeansRegionPrior(GuidancePrior):
    """Parameter-free region masks: k-means on colour and position (deterministic).

    Stand-in for Segment Anything: the masks partition the image into ``k`` compact
    colour-coherent regions (mask dropout happens later, in the SCA block, during
    training).

    Args:
        k: number of masks (>= 0; 0 gives an empty B x 0 x H x W tensor).
        iters: Lloyd iterations. position_weight: weight of (y, x) against RGB.
        work_size: centroids are fitted on a copy at most this many pixels a side.

    Shapes: (B, 3, H, W) -> {"masks": (B, k, H, W)} with values in {0, 1}.
    """

    OUTPUTS = {"masks": None}
    name = "kmeans_regions"

    def __init__(self, k: int = 16, iters: int = 10, position_weight: float = 0.5,
                 work_size: int = 64):
        super().__init__()
        if k < 0 or iters < 0 or work_size < 1:
            raise ValueError(f"kmeans_regions: k and iters must be >= 0 and work_size >= 1, "
                             f"got k={k}, iters={iters}, work_size={work_size}")
        self.k, self.iters = k, iters
        self.position_weight, self.work_size = position_weight, work_size

    def compute(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"masks": kmeans_masks(img, self.k, self.iters, self.position_weight,
                                      self.work_size)}
