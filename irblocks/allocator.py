"""Keep freed memory in the process heap (glibc) instead of returning it to the system.

Why: glibc serves every allocation above its mmap threshold (128 KiB, adapting up to
32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. The feature maps of a full-size
network are far larger, so each one is mapped, zero-filled page by page on first touch
(a page fault per 4 KiB) and unmapped again, on every forward and backward. Measured on
this project's 2-core CPU, full-size Restormer, our default execution, a process that runs
nothing else (2026-12-01, 2 threads, medians; 3-5 runs each, the last ones
``tests/benchmarks/test_bench_allocator.py``):

==============================================  =================  ===============
``IRBLOCKS_MALLOC``                             ``system``         ``keep``
==============================================  =================  ===============
forward 1x3x256x256 (``no_grad``)               2.41-2.61 s        1.67-1.78 s
  page faults per forward                       742,000-999,000    3-2,053
  peak memory above the built model             570-600 MiB        593-669 MiB
training step 2x3x128x128 (AdamW)               2.69-3.33 s        2.53-2.63 s
  page faults per step                          153,000-854,000    8-13
  peak memory above the built model             3.94-4.24 GB       4.15-4.40 GB
``irblocks restore``, four 256x320 images       13.9-15.0 s        11.0 s
==============================================  =================  ===============

(Same outputs, bit for bit. AnyIR's smaller maps: 7,000-33,000 faults per step, step time
unchanged.) The memory stays flat from step to step; what it adds comes from glibc keeping
freed ``posix_memalign`` blocks (torch's allocation call) that it reuses only once several
of the same size are free (a 64 MiB tensor allocated again and again: ~8 kept). The
official execution gains too: the README's speed tables were measured without this, in
processes where both styles ran, whose heap had grown already.

What: ``mallopt(M_MMAP_THRESHOLD, 2**31 - 1)`` (allocations below 2 GiB come from the heap)
and ``mallopt(M_TRIM_THRESHOLD, 2**31 - 1)`` (freed heap memory is kept for the next
allocation), the same as ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=...:
glibc.malloc.trim_threshold=...`` set before the process starts. The cost: the process keeps
its peak memory until it exits. It is process-wide and cannot be undone (glibc stops
adapting its threshold once it is set), so a library never does it on import: the
``irblocks`` commands that run networks (``train``, ``eval``, ``restore``, ``demo``) call
:func:`keep_freed_memory` at start; in your own script, call it first.

Switch: ``IRBLOCKS_MALLOC`` = ``keep`` (default) or ``system`` (leave malloc alone). It is
also left alone when ``GLIBC_TUNABLES`` already sets a ``glibc.malloc.`` option (you chose)
and off glibc (macOS, Windows, musl), where :func:`keep_freed_memory` returns False.
README.md, "Execution switches".
"""
from __future__ import annotations

import os
import sys

__all__ = ["ENV", "POLICIES", "keep_freed_memory"]

ENV = "IRBLOCKS_MALLOC"
POLICIES = ("keep", "system")

M_TRIM_THRESHOLD = -1          # glibc malloc.h
M_MMAP_THRESHOLD = -3
LARGEST = 2**31 - 1            # mallopt takes an int

_applied: bool | None = None   # the first call's answer (the setting is process-wide)


def policy() -> str:
    """``$IRBLOCKS_MALLOC`` checked: ``"keep"`` (default) or ``"system"``."""
    value = os.environ.get(ENV, "keep").strip().lower() or "keep"
    if value not in POLICIES:
        import difflib
        hint = difflib.get_close_matches(value, POLICIES, n=1, cutoff=0.5)
        raise ValueError(f"${ENV} must be one of {POLICIES}, got {value!r}"
                         + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return value


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of mapping and unmapping large blocks
    (module docstring: why, what it costs, the measurements). Call it once at the start of a
    process that runs full-size networks; later calls return the first call's answer.

    Returns:
        True when the setting was applied; False when ``IRBLOCKS_MALLOC=system``, when
        ``GLIBC_TUNABLES`` already sets a malloc option, off glibc, or when glibc refused.

    Raises:
        ValueError: ``IRBLOCKS_MALLOC`` is neither ``keep`` nor ``system``.
    """
    global _applied
    wanted = policy() == "keep"
    if _applied is not None:
        return _applied
    if not wanted or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        _applied = False
        return False
    _applied = _mallopt_keep()
    return _applied


def _mallopt_keep() -> bool:
    import ctypes
    import platform
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, LARGEST)) and bool(mallopt(M_TRIM_THRESHOLD, LARGEST))
