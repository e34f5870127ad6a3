"""Triton helpers shared by several kernels (defined only when Triton is importable)."""
from __future__ import annotations

from ._dispatch import triton_available

__all__ = ["pixel_offset"]

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def pixel_offset(hw, Wd, sh, sw, FLAT: tl.constexpr):
        """Memory offset of in-image pixel index ``hw`` (row-major over H x W) for strides
        ``sh``, ``sw``. ``FLAT`` (H and W merge into one axis) keeps it provably contiguous,
        so GPU loads coalesce for NCHW and channels_last alike."""
        if FLAT:
            return hw * sw
        return (hw // Wd) * sh + (hw % Wd) * sw
