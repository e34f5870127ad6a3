"""One training step executed our way and the official way gives the same gradients.

``irblocks.set_execution(model, "official")`` runs the papers' formulation (NCHW, permute
LayerNorm, unfused gating, FFT fusion); ``"fast"`` (default) runs ours (channels_last,
custom backward passes for depthwise convs, skip-split and AnyIR's fusion). Same weights,
same batch, train mode (BatchNorm batch statistics), one L1 step: every parameter's
gradient agrees within 1e-4 relative (max |difference| / max |official gradient|). The
speed of the same step is benchmarked in tests/benchmarks/test_bench_models.py.
"""
import copy

import pytest
import torch

import irblocks
from tests._compare import rel_error

REL_TOL = 1e-4


@pytest.mark.parametrize("name", ["restormer-tiny", "promptir-tiny", "anyir-tiny"])
@pytest.mark.parametrize("hw", [(32, 40), (20, 28)])
def test_fast_and_official_training_step_give_the_same_gradients(name, hw):
    _compare(name, hw)


def test_same_gradients_with_streamed_input_gradients(monkeypatch):
    # the depthwise 3x3 backward kernels stream their input gradients from STREAM_MIN_BYTES;
    # forced here for every size. At 48 x 48, batch 2, the first level's GDFN runs its hidden
    # width padded to a multiple of 16 (2 x 32 channels) and MDTA's qkv has 48, 96 and 192
    # channels below the first level, so the streaming stores run there; the other widths
    # (24, 84, 170, 340) fall back to plain stores inside the kernel
    from irblocks.kernels import dwconv3x3

    monkeypatch.setattr(dwconv3x3, "STREAM_MIN_BYTES", 0)
    _compare("restormer-tiny", (48, 48))


def _compare(name: str, hw: tuple[int, int]) -> None:
    fast = irblocks.create_model(name).train()
    with torch.no_grad():                          # leave the init (ones/zeros) for real values
        for p in fast.parameters():
            p.add_(0.05 * torch.randn_like(p))
    official = irblocks.set_execution(copy.deepcopy(fast), "official")
    x, y = torch.rand(2, 3, *hw), torch.rand(2, 3, *hw)
    for m in (fast, official):
        (m(x) - y).abs().mean().backward()
    worst = []
    for (n, p), q in zip(fast.named_parameters(), official.parameters()):
        assert p.grad is not None and q.grad is not None, f"{name}: {n} got no gradient"
        worst.append((rel_error(p.grad, q.grad), n))
    rel, n = max(worst)
    assert rel <= REL_TOL, f"{name}: gradient of {n} differs by {rel:.2e} relative (max {REL_TOL})"
