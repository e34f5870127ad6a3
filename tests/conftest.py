"""Test setup.

TRITON_INTERPRET=1 must be set before any kernel module is imported, so the
Triton kernels can run on CPU tensors through the interpreter. Blocks still use
the reference path on CPU unless a test forces ``impl="triton"``.

One intra-op thread (``OMP_NUM_THREADS=1`` unless the caller sets it, here and in the
subprocesses tests start): the suite's tensors are tiny, and on a machine whose cores are
busy, OpenMP threads waiting for each other made whole training tests 10-30x slower (clearair
tiny's 30 steps: 73 s with 2 threads vs 6 s with one, same load). A test that changes the count
(``irblocks demo`` picks its own) gets it put back afterwards.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("IRBLOCKS_NO_PLUGINS", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"] or 1))
THREADS = torch.get_num_threads()
torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
