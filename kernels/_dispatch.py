"""Kernel dispatch: CUDA tensor + Triton importable -> Triton, otherwise the reference.

Every functional kernel entry point takes ``impl: str | None = None``:
``"auto"`` (default), ``"triton"`` or ``"reference"``. ``None`` reads the
environment variable ``IRBLOCKS_KERNELS`` (same three values, default auto).
Forcing ``"triton"`` on CPU tensors works only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before the kernel modules are imported).
"""
from __future__ import annotations

import functools
import os

import torch

__all__ = ["ENV", "IMPLS", "triton_available", "interpreting", "select", "block_size", "empty",
           "out_format", "OUTPUT_FILL"]

ENV = "IRBLOCKS_KERNELS"
IMPLS = ("auto", "triton", "reference")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select(impl: str | None, *tensors: torch.Tensor) -> str:
    """Return ``"triton"`` or ``"reference"`` for these tensors."""
    choice = impl if impl is not None else os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in IMPLS:
        src = "impl argument" if impl is not None else f"${ENV}"
        raise ValueError(f"{src} must be one of {IMPLS}, got {choice!r}")
    if choice == "reference":
        return "reference"
    on_cuda = all(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    if choice == "auto":
        return "triton" if (on_cuda and triton_available()) else "reference"
    # forced triton
    if not triton_available():
        raise RuntimeError("impl='triton' was forced but Triton is not importable "
                           "(pip install triton; Linux only)")
    if not on_cuda and not interpreting():
        raise RuntimeError("impl='triton' on CPU tensors needs the Triton interpreter: set "
                           "TRITON_INTERPRET=1 before irblocks.kernels is imported")
    if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in tensors):
        return "reference"
    return "triton"


def block_size(gpu: int, interpreter: int) -> int:
    """Interpreter-friendly blocks are small; GPU blocks are sized for registers."""
    return interpreter if interpreting() else gpu


# Tests set this to float("nan") so a Triton kernel that skips writing an element fails.
OUTPUT_FILL: list = [None]


def empty(*shape, like: torch.Tensor, dtype: torch.dtype | None = None,
          memory_format=torch.contiguous_format):
    """Output allocation for Triton kernels (``torch.empty``; NaN-filled under tests)."""
    out = torch.empty(*shape, device=like.device, dtype=dtype or like.dtype,
                      memory_format=memory_format)
    if OUTPUT_FILL[0] is not None:
        out.fill_(OUTPUT_FILL[0])
    return out


def out_format(x: torch.Tensor) -> torch.memory_format:
    """Kernel outputs follow the input: channels_last when channels are the fastest axis
    (channels_last tensors and their channel slices), contiguous otherwise."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last) or (x.stride(1) == 1 and x.shape[1] > 1):
        return torch.channels_last
    return torch.contiguous_format
