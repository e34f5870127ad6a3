"""Test setup.

TRITON_INTERPRET=1 must be set before any kernel module is imported, so the
Triton kernels can run on CPU tensors through the interpreter. Blocks still use
the reference path on CPU unless a test forces ``impl="triton"``.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("IRBLOCKS_NO_PLUGINS", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
