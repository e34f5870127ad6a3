"""Helpers shared by the benchmark groups."""
from __future__ import annotations

from typing import Callable

import pytest
import torch


def compiled_or_skip(fn: Callable, *args, **kwargs) -> Callable:
    """``torch.compile(fn)``, warmed up on ``args``; skips the benchmark when compiling
    fails here (no C++ toolchain, unsupported backend...)."""
    try:
        compiled = torch.compile(fn)
        compiled(*args, **kwargs)
        return compiled
    except Exception as e:
        pytest.skip(f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
