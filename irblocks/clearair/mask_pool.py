"""Mask average pooling (MAP) and the per-level preparation of region masks."""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt
from torch import nn

from irblocks.errors import InputError
from irblocks.guidance import Guidance
from irblocks.registry import register

__all__ = ["MaskAveragePool", "mask_average_pool", "prepare_masks", "binarize_masks",
           "dropout_masks"]


def binarize_masks(masks: torch.Tensor, where: str = "masks") -> torch.Tensor:
    """(B, K, H, W) -> bool, thresholded at 0.5 (non-binary masks are accepted and
    thresholded: soft SAM logits/probabilities become hard masks)."""
    if not isinstance(masks, torch.Tensor) or masks.dim() != 4:
        shape = ("x".join(map(str, masks.shape)) if isinstance(masks, torch.Tensor)
                 else type(masks).__name__)
        raise InputError(f"{where}: expected region masks of shape B x K x H x W, got {shape}")
    return masks if masks.dtype == torch.bool else masks > 0.5


def dropout_masks(masks: torch.Tensor, p: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Remove each (image, mask) pair with probability p: its pixels become uncovered
    unless another mask covers them. (B, K, H, W) bool -> same."""
    if p <= 0 or masks.shape[1] == 0:
        return masks
    keep = torch.rand(masks.shape[0], masks.shape[1], 1, 1, device=masks.device,
                      generator=generator) >= p
    return masks & keep


def prepare_masks(masks: torch.Tensor, size: tuple[int, int], where: str = "masks") -> torch.Tensor:
    """Threshold at 0.5, then nearest-resize to ``size`` (masks of any spatial size are
    accepted: the prior runs on the padded input, features live at 1/2^l of it).
    Returns (B, K, h, w) bool."""
    m = binarize_masks(masks, where)
    if tuple(m.shape[-2:]) != tuple(size) and m.shape[1] > 0:
        m = F.interpolate(m.to(torch.uint8), size=size, mode="nearest").bool()
    elif m.shape[1] == 0:
        m = m.new_zeros(m.shape[0], 0, *size)
    return m


def level_masks(guidance: Guidance, key: str, size: tuple[int, int], p_drop: float, training: bool,
                where: str) -> torch.Tensor:
    """Masks for one feature size, with one mask-dropout draw shared by every level of a
    forward (the draw is cached in the guidance object under ``<key>#dropout``)."""
    masks = guidance.get(key)
    full = binarize_masks(masks, where)
    if training and p_drop > 0 and full.shape[1] > 0:
        cache = f"{key}#dropout"
        if cache in guidance:
            full = guidance.get(cache)
        else:
            full = dropout_masks(full, p_drop)
            guidance.put(cache, full)
    return prepare_masks(full, size, where)


def mask_average_pool(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Dense MAP: for each mask its mean feature, broadcast back over the mask; overlapping
    masks add their means; uncovered pixels get 0. x (B, C, H, W), masks (B, K, H, W)
    binary at x's size -> (B, C, H, W). Memory O(K * H * W)."""
    b, c, h, w = x.shape
    m = masks.to(x.dtype).reshape(b, masks.shape[1], h * w)                  # (B, K, N)
    flat = x.permute(0, 2, 3, 1).reshape(b, h * w, c)                         # (B, N, C)
    area = m.sum(-1, keepdim=True).clamp_min(1)
    means = (m @ flat) / area                                                 # (B, K, C)
    out = m.transpose(1, 2) @ means                                           # (B, N, C)
    return out.reshape(b, h, w, c).permute(0, 3, 1, 2)


@register("block", "mask_average_pool", aliases=("map", "mask_pool"))
class MaskAveragePool(nn.Module):
    """Mask average pooling (ClearAIR Eq. 6-7).

    ``forward(x, masks)``: masks (B, K, H', W') of any size and any values are
    thresholded at 0.5 and nearest-resized to x's H x W; for each mask the mean feature
    inside it is broadcast back over it (overlaps add, uncovered pixels get 0). In
    training, each mask is dropped with probability ``mask_dropout`` (its pixels become
    uncovered).

    Args:
        mask_dropout: probability of removing a mask in training (ClearAIR: 0.2).

    Shapes: x (B, C, H, W), masks (B, K, H', W') -> (B, C, H, W).
    """

    def __init__(self, mask_dropout: Annotated[float, Ge(0), Lt(1)] = 0.0):
        super().__init__()
        self.mask_dropout = mask_dropout

    def example_inputs(self, batch: int = 1, height: int = 8,
                       width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """A feature map and three overlapping binary masks (for generic tests)."""
        masks = torch.zeros(batch, 3, height, width)
        masks[:, 0, : height // 2] = 1
        masks[:, 1, :, : width // 2] = 1
        masks[:, 2, height // 4:, width // 4:] = 1
        return torch.randn(batch, 16, height, width), masks

    def forward(self, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        m = binarize_masks(masks, "mask_average_pool masks")
        if m.shape[0] != x.shape[0]:
            raise InputError(f"mask_average_pool: masks have batch {m.shape[0]}, the feature has "
                             f"{x.shape[0]}")
        if self.training:
            m = dropout_masks(m, self.mask_dropout)
        return mask_average_pool(x, prepare_masks(m, tuple(x.shape[-2:])))
