"""Kernel dispatch: CUDA tensor + Triton importable -> Triton; CPU tensor + a compiled C
kernel for this op that builds -> C; otherwise the PyTorch reference.

Every functional kernel entry point takes ``impl: str | None = None``:
``"auto"`` (default), ``"triton"``, ``"cpu"`` or ``"reference"``. ``None`` reads the
environment variable ``IRBLOCKS_KERNELS`` (same four values, default auto).
Forcing ``"triton"`` on CPU tensors works only under the Triton interpreter
(``TRITON_INTERPRET=1`` set before the kernel modules are imported). ``"cpu"`` picks the
compiled C kernel of an op that has one (kernels/csrc/, built at first use by
``_cpu_build``; forcing it raises when it cannot be built) and the reference for every other
op; ``"auto"`` on CPU tensors uses the C kernel when it builds and warns once when it does not.
"""
from __future__ import annotations

import functools
import os
import warnings

import torch

__all__ = ["ENV", "IMPLS", "triton_available", "interpreting", "select", "cpu_kernel_available",
           "block_size", "empty", "out_format", "reference_grads", "OUTPUT_FILL"]

ENV = "IRBLOCKS_KERNELS"
IMPLS = ("auto", "triton", "cpu", "reference")


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


def select(impl: str | None, *tensors: torch.Tensor, cpu_kernel: str | None = None) -> str:
    """Return ``"triton"``, ``"cpu"`` or ``"reference"`` for these tensors. ``cpu_kernel``:
    the name of the op's C source in kernels/csrc/ when it has one (``None``: no C kernel)."""
    choice = impl if impl is not None else os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in IMPLS:
        src = "impl argument" if impl is not None else f"${ENV}"
        raise ValueError(f"{src} must be one of {IMPLS}, got {choice!r}")
    if choice == "reference":
        return "reference"
    on_cuda = all(t.is_cuda for t in tensors if isinstance(t, torch.Tensor))
    on_cpu = all(t.device.type == "cpu" for t in tensors if isinstance(t, torch.Tensor))
    if choice == "cpu" or (choice == "auto" and on_cpu and cpu_kernel is not None):
        if cpu_kernel is None or not on_cpu or torch.compiler.is_compiling():
            return "reference"           # C kernels are opaque to torch.compile / export
        return "cpu" if cpu_kernel_available(cpu_kernel, forced=choice == "cpu") else "reference"
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


_WARNED: set[str] = set()


def cpu_kernel_available(name: str, forced: bool = False) -> bool:
    """Build (first call) and load kernels/csrc/<name>.c. Unavailable: raises when ``forced``,
    else warns once per kernel and returns False (the caller runs the reference)."""
    from . import _cpu_build

    if _cpu_build.load(name) is not None:
        return True
    reason = _cpu_build.unavailable(name)
    if forced:
        raise RuntimeError(f"impl='cpu' was forced but the C kernel {name!r} is unavailable: "
                           f"{reason}")
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"irblocks: C kernel {name!r} unavailable ({reason}); running the PyTorch "
                      f"reference instead (slower on CPU). {ENV}=reference silences this.",
                      RuntimeWarning, stacklevel=3)
    return False


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


def reference_grads(reference, inputs, needs_input_grad, grad_output: torch.Tensor) -> list:
    """The backward of a custom ``autograd.Function`` run under ``create_graph=True`` (grad of
    grad): the gradients of ``reference(*inputs)`` (plain, differentiable torch ops) for
    ``grad_output``, with a graph. One entry per input, ``None`` where ``needs_input_grad``
    (zipped with ``inputs``) is False."""
    needs = [bool(need) for need, _ in zip(needs_input_grad, inputs)]
    wanted = [t for t, need in zip(inputs, needs) if need]   # autograd asks for at least one
    with torch.enable_grad():
        found = iter(torch.autograd.grad(reference(*inputs), wanted, grad_output,
                                         create_graph=True))
    return [next(found) if need else None for need in needs]
