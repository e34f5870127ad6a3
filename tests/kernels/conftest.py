"""Kernel-test fixtures (shared by every tests/kernels/test_<kernel>.py).

- Every test here runs with ``irblocks.kernels._dispatch.OUTPUT_FILL[0] = nan``: Triton
  outputs come NaN-prefilled, so an element a kernel forgets to write fails.
- ``triton_interp``: skip unless Triton imports and TRITON_INTERPRET=1 (set by tests/conftest.py
  before any kernel module is imported).
- ``force_triton``: also sets IRBLOCKS_KERNELS=triton (monkeypatch) so blocks take the Triton path.
Helpers (shapes, layouts, tolerances): ``from tests.kernels.kutil import ...`` (see its docstring).

GPU configurations compiled for sm_90 live in ``compile_specs.py`` here (see its docstring).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import kutil` from test files

import pytest  # noqa: E402

from irblocks.kernels import _dispatch  # noqa: E402


@pytest.fixture(autouse=True)
def _nan_outputs():
    old = _dispatch.OUTPUT_FILL[0]
    _dispatch.OUTPUT_FILL[0] = float("nan")
    yield
    _dispatch.OUTPUT_FILL[0] = old


@pytest.fixture
def triton_interp():
    if not _dispatch.triton_available():
        pytest.skip("Triton is not importable")
    if not _dispatch.interpreting():
        pytest.skip("TRITON_INTERPRET=1 is not set (CPU tensors need the Triton interpreter)")
    yield


@pytest.fixture
def force_triton(triton_interp, monkeypatch):
    monkeypatch.setenv(_dispatch.ENV, "triton")
    yield
