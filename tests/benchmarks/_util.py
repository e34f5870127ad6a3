"""Helpers shared by the benchmark groups."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

PROC_MEMORY = r"""
def status(key):
    # bytes of a /proc/self/status field (VmRSS, VmHWM: Linux)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith(key + ":"))

def reset_peak():
    # VmHWM back to the current RSS, so what ran before does not count
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
"""
"""Source of ``status(key)`` and ``reset_peak()`` for the benchmark scripts that measure peak
memory in a fresh subprocess: prepend it to the script."""


def median(values: list) -> float:
    """The upper median (the middle element of the sorted values)."""
    return sorted(values)[len(values) // 2]


def compiled_or_skip(fn: Callable, *args, **kwargs) -> Callable:
    """``torch.compile(fn)``, warmed up on ``args``; skips the benchmark when compiling
    fails here (no C++ toolchain, unsupported backend...)."""
    try:
        compiled = torch.compile(fn)
        compiled(*args, **kwargs)
        return compiled
    except Exception as e:
        pytest.skip(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
