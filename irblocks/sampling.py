"""Patch embedding and resolution changes of the Restormer U-Net."""
from __future__ import annotations

import torch
from torch import nn

from irblocks.registry import Context, register

__all__ = ["PatchEmbed", "Downsample", "Upsample"]


@register("block", "patch_embed", aliases=("overlap_patch_embed",))
class PatchEmbed(nn.Module):
    """conv3x3 in_channels -> dim. Shapes: (B, in, H, W) -> (B, dim, H, W)."""

    def __init__(self, dim: Context[int], in_channels: int = 3, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, 3, padding=1, bias=bias)

    def example_inputs(self, batch: int = 1, height: int = 8,
                       width: int = 8) -> tuple[torch.Tensor]:
        return (torch.randn(batch, self.proj.in_channels, height, width),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@register("block", "downsample", aliases=("pixel_unshuffle_down",))
class Downsample(nn.Module):
    """conv3x3 C -> C/2, PixelUnshuffle(2). Shapes: (B, C, H, W) -> (B, 2C, H/2, W/2)."""

    def __init__(self, dim: Context[int], bias: bool = False):
        super().__init__()
        if dim % 2:
            raise ValueError(f"downsample: dim must be even, got {dim}")
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=bias),
                                  nn.PixelUnshuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register("block", "upsample", aliases=("pixel_shuffle_up",))
class Upsample(nn.Module):
    """conv3x3 C -> 2C, PixelShuffle(2). Shapes: (B, C, H, W) -> (B, C/2, 2H, 2W)."""

    def __init__(self, dim: Context[int], bias: bool = False):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=bias),
                                  nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)
