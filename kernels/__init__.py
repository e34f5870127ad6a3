"""irblocks.kernels: Triton kernels with PyTorch references, one file per kernel.

Each kernel file holds the Triton kernel(s), an efficient PyTorch reference,
custom ops declared with ``_op.kernel_op`` and one functional entry point (the one the blocks
call). Dispatch rules: see :mod:`irblocks.kernels._dispatch`.
"""
from ._dispatch import ENV, IMPLS, interpreting, select, triton_available  # noqa: F401
