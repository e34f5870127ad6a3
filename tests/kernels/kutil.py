"""Shared helpers for kernel tests (tests/kernels/test_<kernel>.py). Reuse them:

    from tests.kernels.kutil import (SHAPES, LAYOUTS, cases, make, make_like, grads,
                                     assert_close, tol)

(``tests`` is a package; a plain ``import kutil`` also works because
``tests/kernels/conftest.py`` puts this folder on ``sys.path``, but prefer the package path.)

What the conftest gives every test in tests/kernels automatically:
- ``_dispatch.OUTPUT_FILL[0] = nan`` during each test, so a Triton kernel that
  forgets to write an element produces NaN and fails the comparison;
- fixture ``triton_interp``: skips when Triton is missing or TRITON_INTERPRET is not
  ``1``; request it in tests that run ``impl="triton"`` on CPU;
- fixture ``force_triton``: ``triton_interp`` + ``IRBLOCKS_KERNELS=triton`` via
  monkeypatch (for block-level tests: the block then takes the Triton path).

Shapes: ``SHAPES`` covers odd H/W, 1-pixel-wide and 1-pixel-high maps, batch 1 and 3,
kept tiny because the interpreter is slow. ``LAYOUTS``: ``"nchw"`` (contiguous),
``"channels_last"``, ``"strided"`` (a non-contiguous view: every other column of a
wider tensor, so no stride is dense) and ``"sliced"`` (a channel slice of a bigger
channels_last tensor, like the output of ``chunk`` on a conv output); opt-in ``"cropped"``
(``EXTRA_LAYOUTS``/``ALL_LAYOUTS``: a W-crop, so H and W strides do not merge).

Tolerances (``tol(dtype)``): float32 atol=rtol=1e-4 by default (kernels whose
reductions reorder sums differ from torch at ~1e-6 relative); float16 2e-3/2e-3
(1e-2 for grads); float64 1e-10. Pass your own where the kernel needs it and say
why in the test.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

__all__ = ["SHAPES", "SMALL_SHAPES", "LAYOUTS", "EXTRA_LAYOUTS", "ALL_LAYOUTS", "TOL", "tol",
           "make", "make_like", "grads", "both_paths", "assert_close", "case_id", "cases",
           "c_kernel_or_skip", "StreamSpy"]

# (B, H, W): channel count is chosen by each test (kernels have constraints such as C % heads).
SHAPES: list[tuple[int, int, int]] = [
    (1, 5, 7),    # odd H and W
    (3, 1, 9),    # 1-pixel-high, batch 3
    (1, 6, 1),    # 1-pixel-wide
    (3, 4, 4),    # batch 3, even
    (1, 13, 11),  # more pixels than one interpreter block
]
SMALL_SHAPES = SHAPES[:3]

LAYOUTS = ("nchw", "channels_last", "strided", "sliced")
# "cropped": a W-crop of a wider channels_last tensor, so H and W do NOT merge into one pixel
# axis (kernels that flatten H*W must fall back to separate h/w strides). Opt-in.
EXTRA_LAYOUTS = ("cropped",)
ALL_LAYOUTS = LAYOUTS + EXTRA_LAYOUTS

TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def tol(dtype: torch.dtype, grad: bool = False) -> dict:
    atol, rtol = TOL[dtype]
    if grad and dtype in (torch.float16, torch.bfloat16):
        atol, rtol = atol * 5, rtol * 5
    return {"atol": atol, "rtol": rtol}


def make(b: int, c: int, h: int, w: int, layout: str = "nchw", dtype=torch.float32,
         requires_grad: bool = False, scale: float = 1.0, offset: float = 0.0,
         device="cpu") -> torch.Tensor:
    """A random (B, C, H, W) tensor in the given memory layout (a leaf if requires_grad)."""
    if layout == "nchw":
        t = torch.randn(b, c, h, w, dtype=torch.float32, device=device)
        t = (t * scale + offset).to(dtype)
    elif layout == "channels_last":
        t = torch.randn(b, c, h, w, dtype=torch.float32, device=device)
        t = (t * scale + offset).to(dtype).contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        big = torch.randn(b, c, h, 2 * w, dtype=torch.float32, device=device)
        t = (big * scale + offset).to(dtype)[..., ::2]
    elif layout == "cropped":
        big = torch.randn(b, c, h, w + 2, dtype=torch.float32, device=device)
        big = (big * scale + offset).to(dtype).contiguous(memory_format=torch.channels_last)
        t = big[..., 1:1 + w]
    elif layout == "sliced":
        big = torch.randn(b, c + 3, h, w, dtype=torch.float32, device=device)
        big = (big * scale + offset).to(dtype).contiguous(memory_format=torch.channels_last)
        t = big[:, 1:1 + c]
    else:
        raise ValueError(f"layout must be one of {LAYOUTS + EXTRA_LAYOUTS}, got {layout!r}")
    if layout in ("strided", "sliced") or (layout == "cropped" and h > 1):
        assert not t.is_contiguous() and not t.is_contiguous(memory_format=torch.channels_last)
    if requires_grad:
        t.requires_grad_(True)   # leaf: non-contiguous views are leaves when built without grad
    return t


def make_like(t: torch.Tensor, layout: str, requires_grad: bool = False) -> torch.Tensor:
    """Same values as ``t`` in another layout (for 'same input, different strides' checks)."""
    b, c, h, w = t.shape
    out = make(b, c, h, w, layout, dtype=t.dtype, device=t.device)
    with torch.no_grad():
        out.copy_(t)
    return out.requires_grad_(requires_grad)


def both_paths(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor], monkeypatch,
               module: torch.nn.Module | None = None) -> dict:
    """Run ``fn`` with ``IRBLOCKS_KERNELS=triton`` and ``=reference``; for each path return
    ``[out, *input grads, *parameter grads of module]`` (compare them with assert_close)."""
    res = {}
    for impl in ("triton", "reference"):
        monkeypatch.setenv("IRBLOCKS_KERNELS", impl)
        if module is not None:
            module.zero_grad()
        out, gs = grads(fn, inputs)
        res[impl] = ([out, *gs]
                     + ([p.grad.clone() for p in module.parameters()] if module is not None
                        else []))
    return res


def grads(fn: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
          grad_out: torch.Tensor | None = None, seed: int = 1):
    """Run ``fn(*inputs)`` and backprop a fixed random cotangent.

    Returns ``(out, [grad of each input that requires grad])``. Inputs are cloned
    as fresh leaves with their strides preserved, so the same inputs can be fed to
    two implementations.
    """
    leaves = []
    for t in inputs:
        if isinstance(t, torch.Tensor) and t.requires_grad:
            leaf = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
            with torch.no_grad():
                leaf.copy_(t)
            leaves.append(leaf.requires_grad_(True))
        else:
            leaves.append(t)
    out = fn(*leaves)
    if grad_out is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        grad_out = torch.randn(out.shape, generator=g,
                               dtype=torch.float32).to(out.dtype).to(out.device)
    out.backward(grad_out)
    gs = [t.grad for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]
    return out.detach(), gs


def assert_close(actual, expected, dtype: torch.dtype | None = None, grad: bool = False,
                 msg: str = "", **kw) -> None:
    """torch.testing.assert_close with the per-dtype tolerance from :data:`TOL`; NaN fails."""
    if isinstance(actual, (list, tuple)):
        assert len(actual) == len(expected), f"{msg}: {len(actual)} vs {len(expected)} tensors"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, dtype, grad, msg=f"{msg}[{i}]", **kw)
        return
    dtype = dtype or expected.dtype
    opts = tol(dtype, grad)
    opts.update(kw)
    assert not torch.isnan(actual).any(), f"{msg}: NaN in result (unwritten output element?)"
    torch.testing.assert_close(actual.float(), expected.float(), msg=lambda m: f"{msg}: {m}",
                               **opts)


def case_id(shape, layout) -> str:
    return f"{'x'.join(map(str, shape))}-{layout}"


def cases(shapes: Iterable = SHAPES, layouts: Iterable[str] = LAYOUTS) -> list:
    """pytest.mark.parametrize("shape,layout", cases()) with readable ids."""
    import pytest
    return [pytest.param(s, l, id=case_id(s, l)) for s in shapes for l in layouts]


def c_kernel_or_skip(library: str) -> None:
    """Skip (with the build's one-line reason) when kernels/csrc/<library>.c cannot be built
    here, e.g. no C compiler."""
    import pytest

    from irblocks.kernels import _cpu_build

    if _cpu_build.load(library) is None:
        pytest.skip(f"C kernel unavailable here: {_cpu_build.unavailable(library)}")


class StreamSpy:
    """Stands in for a compiled library (``kernels/csrc``) and records the ``stream`` argument
    (the one before the thread count) of each call to the entry point ``name``; every other
    attribute is the library's own. Install with ``monkeypatch.setattr(module, "library",
    spy)`` on the kernel module that calls ``library()``."""

    def __init__(self, library, name: str):
        self.library, self.name, self.streams = library, name, []

    def __call__(self):             # the kernel modules call library()
        return self

    def __getattr__(self, attr: str):
        entry = getattr(self.library, attr)
        if attr != self.name:
            return entry

        def call(*args):
            self.streams.append(args[-2])
            return entry(*args)

        return call
