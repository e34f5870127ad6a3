"""Whole-network Triton parity: every tiny recipe, forward and backward, through the Triton
path (interpreter, ``IRBLOCKS_KERNELS=triton``) equals the reference path.

Each kernel is checked on its own in ``tests/kernels``; this checks them composed, as a GPU
user runs them: same weights, same input, every Triton kernel of the network active.
Tolerance: the kernels' float32 tolerance (``tests.kernels.kutil.tol``: atol = rtol = 1e-4)
on the output (values O(1)) and on every parameter gradient after dividing by the largest
gradient of the network (so values are at most 1: gradients the network makes numerically
zero, e.g. attention over a single token at the 1x1 latent, stay comparable).

Cost: the interpreter runs every program in Python (~0.1 s a launch), so the networks run
at 1 x 3 x 8 x 8 (three downsamplings to a 1 x 1 latent) in eval mode (BatchNorm statistics
need more than one value per channel in training). ~2 minutes for the five networks.
"""
from __future__ import annotations

import pytest
import torch

import irblocks
from irblocks.kernels import _dispatch
from tests.kernels.kutil import tol as tol_of

pytestmark = [pytest.mark.slow, pytest.mark.interpreter]

# The Triton kernels each network must launch (forward and backward); a dispatch change that
# silently sends a block to the reference path fails here.
LN = {"_ln_fwd_kernel", "_ln_bwd_kernel"}
GATE = {"_gate_fwd_kernel", "_gate_bwd_kernel"}
MDTA = {"_gram_kernel", "_apply_kernel", "_bwd_apply_kernel"}
EXPECTED = {
    "restormer-tiny": LN | GATE | MDTA,
    "promptir-tiny": LN | GATE | MDTA,
    "anyir-tiny": LN | GATE | MDTA | {"_fusion_fwd_kernel", "_fusion_bwd_kernel", "_gda_fwd_kernel",
                                      "_gda_bwd_kernel"},
    # ClusIR at the paper's cost has no Restormer (MDTA) block: WTBs, GDFN experts, DAFMM
    "clusir-tiny": LN | GATE | {"_fsb_fwd_kernel", "_fsb_bwd_kernel", "_haar_dwt_kernel",
                                "_haar_idwt_kernel"},
    "clearair-tiny": LN | GATE | MDTA | {"_codes_kernel", "_segment_sum_kernel", "_attn_fwd_kernel",
                                         "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"},
}


@pytest.fixture
def launches(monkeypatch):
    """Names of the Triton kernels launched (through the interpreter) while the test runs."""
    if not _dispatch.triton_available() or not _dispatch.interpreting():
        pytest.skip("needs Triton and TRITON_INTERPRET=1 (set by tests/conftest.py)")
    from triton.runtime.interpreter import InterpretedFunction
    names: set[str] = set()
    run = InterpretedFunction.run

    def recording_run(self, *args, **kwargs):
        names.add(self.fn.__name__)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording_run)
    return names


def _forward_backward(model, x, weight, impl, monkeypatch):
    monkeypatch.setenv(_dispatch.ENV, impl)
    model.zero_grad(set_to_none=True)
    y = model(x)
    (y * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return y.detach(), grads


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_network_triton_path_equals_reference(recipe, launches, monkeypatch):
    torch.manual_seed(0)
    model = irblocks.create_model(recipe).eval()
    x = torch.rand(1, 3, 8, 8)
    weight = torch.randn(1, 3, 8, 8)          # loss = <y, weight>: every output pixel matters
    y_ref, g_ref = _forward_backward(model, x, weight, "reference", monkeypatch)
    assert not launches, f"reference path launched Triton kernels: {sorted(launches)}"
    y_tri, g_tri = _forward_backward(model, x, weight, "triton", monkeypatch)

    missing = EXPECTED[recipe] - launches
    assert not missing, f"{recipe}: the Triton path did not launch {sorted(missing)}"
    tol = tol_of(torch.float32)
    torch.testing.assert_close(y_tri, y_ref, **tol, msg=lambda m: f"{recipe} output: {m}")
    assert g_tri.keys() == g_ref.keys() and g_ref, f"{recipe}: different parameters got gradients"
    scale = max(g.abs().max() for g in g_ref.values()).clamp_min(1e-30)
    for name, g in g_ref.items():
        torch.testing.assert_close(g_tri[name] / scale, g / scale, **tol,
                                   msg=lambda m, n=name: f"{recipe} grad of {n} (/ {scale:.3g}): "
                                                         f"{m}")
