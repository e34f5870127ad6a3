"""GatedDA's folded CPU execution (BatchNorm, the beta rows and the tau gate folded into the
weights; ``GatedDegradationAdaptation._forward_folded``) against the released formulation.

Tolerance: 1e-5 relative (max |difference| / max |reference|) on the output, the input
gradient, every parameter's gradient and the running statistics, in float32 (measured
~1e-6: the folding only reorders sums).
"""
from __future__ import annotations

import copy

import pytest
import torch

import irblocks
from irblocks.anyir.gated_da import GatedDegradationAdaptation
from irblocks.kernels.gated_da_stats import sample_moments
from tests._compare import rel_error as _rel


def _perturbed(dim: int, bias: bool, momentum: float | None) -> GatedDegradationAdaptation:
    blk = GatedDegradationAdaptation(dim, bias=bias)
    blk.norm.momentum = momentum
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
        blk.norm.running_mean.normal_()
        blk.norm.running_var.uniform_(0.5, 2.0)
    return blk


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("bias,momentum", [(False, 0.1), (True, None)])
@pytest.mark.parametrize("dim,batch,hw", [(6, 3, (9, 7)), (14, 1, (5, 12))])
def test_folded_equals_released_formulation(train, bias, momentum, dim, batch, hw):
    torch.manual_seed(0)
    fast = _perturbed(dim, bias, momentum).train(train)
    ref = irblocks.set_execution(copy.deepcopy(fast), "official")
    x = torch.randn(batch, dim, *hw) * 2 + 0.5           # off-centre input: BN has work to do
    x_fast = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    x_ref = x.clone().requires_grad_()
    grad = torch.randn(batch, dim, *hw)
    for _ in range(2):                                   # the running statistics move twice
        out_fast, out_ref = fast(x_fast), ref(x_ref)
    out_fast.backward(grad)
    out_ref.backward(grad)
    assert _rel(out_fast, out_ref) < 1e-5
    assert _rel(x_fast.grad, x_ref.grad) < 1e-5
    for (name, p), q in zip(fast.named_parameters(), ref.parameters()):
        assert _rel(p.grad, q.grad) < 1e-5, name
    assert _rel(fast.norm.running_mean, ref.norm.running_mean) < 1e-5
    assert _rel(fast.norm.running_var, ref.norm.running_var) < 1e-5
    assert int(fast.norm.num_batches_tracked) == int(ref.norm.num_batches_tracked)


def test_folded_path_is_taken_only_where_it_applies(monkeypatch):
    """channels_last CPU input with BatchNorm: the BatchNorm module is never called (its
    affine map is folded); NCHW input, ``norm='layer'`` and the official execution call it."""
    calls = []
    blk = GatedDegradationAdaptation(6).train()
    monkeypatch.setattr(blk.norm, "forward", lambda x: calls.append(1) or x)
    x = torch.randn(2, 6, 8, 8)
    blk(x.contiguous(memory_format=torch.channels_last))
    assert calls == []
    blk(x)
    assert calls == [1]
    irblocks.set_execution(blk, "official")
    blk(x.contiguous(memory_format=torch.channels_last))
    assert calls == [1, 1]


def test_sample_moments_values_and_gradcheck():
    x = torch.randn(2, 13, 3, dtype=torch.float64) * 3 + 1
    mean, var = sample_moments(x, dim=1)
    torch.testing.assert_close(mean, x.mean(1))
    torch.testing.assert_close(var, x.var(1, unbiased=False))
    assert torch.autograd.gradcheck(lambda t: sample_moments(t, 1), (x.requires_grad_(),))
    assert torch.autograd.gradcheck(lambda t: sample_moments(t, 2), (x,))
    # one output unused: its gradient arrives as None
    assert torch.autograd.gradcheck(lambda t: sample_moments(t, 1)[1], (x,))


def test_folded_block_compiles():
    torch.manual_seed(0)
    blk = GatedDegradationAdaptation(6).eval()
    x = torch.randn(1, 6, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(torch.compile(blk, backend="aot_eager")(x), blk(x))
