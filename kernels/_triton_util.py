"""Triton helpers shared by several kernels (defined only when Triton is importable)."""
from __future__ import annotations

from ._dispatch import triton_available

__all__ = ["pixel_offset", "tile_offset", "tile_offset_channels_first"]

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def pixel_offset(
        pixel,  # in-image pixel indices, row-major over H x W (a block of int32)
        width,  # W, image width
        stride_height,  # tensor stride along H
        stride_width,  # tensor stride along W
        FLAT_PIXELS: tl.constexpr,  # H and W merge into one axis (stride_h == W * stride_w)
    ):
        """Memory offset of in-image pixel index ``pixel`` (row-major over H x W) for strides
        ``stride_height``, ``stride_width``. ``FLAT_PIXELS`` (H and W merge into one axis)
        keeps it provably contiguous, so GPU loads coalesce for NCHW and channels_last alike."""
        if FLAT_PIXELS:
            return pixel * stride_width
        return (pixel // width) * stride_height + (pixel % width) * stride_width

    @triton.jit
    def tile_offset(
        batch,  # batch index (a scalar)
        pixel,  # in-image pixel indices, row-major over H x W (a block of int32)
        channel,  # channel indices (a block of int32)
        width,  # W, image width
        stride_batch,  # tensor stride along B
        stride_channel,  # tensor stride along C
        stride_height,  # tensor stride along H
        stride_width,  # tensor stride along W
        FLAT_PIXELS: tl.constexpr,  # H and W merge into one axis (see pixel_offset)
    ):
        """Memory offsets of a (pixels, channels) block of a (B, C, H, W) tensor with any
        strides."""
        return (batch * stride_batch
                + pixel_offset(pixel, width, stride_height, stride_width, FLAT_PIXELS)[:, None]
                + (channel * stride_channel)[None, :])

    @triton.jit
    def tile_offset_channels_first(
        batch,  # batch index (a scalar)
        pixel,  # in-image pixel indices, row-major over H x W (a block of int32)
        channel,  # channel indices (a block of int32)
        width,  # W, image width
        stride_batch,  # tensor stride along B
        stride_channel,  # tensor stride along C
        stride_height,  # tensor stride along H
        stride_width,  # tensor stride along W
        FLAT_PIXELS: tl.constexpr,  # H and W merge into one axis (see pixel_offset)
    ):
        """Memory offsets of a (channels, pixels) block: :func:`tile_offset` transposed."""
        return (batch * stride_batch + (channel * stride_channel)[:, None]
                + pixel_offset(pixel, width, stride_height, stride_width, FLAT_PIXELS)[None, :])
