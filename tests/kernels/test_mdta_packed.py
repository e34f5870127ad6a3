"""channel_attention_packed: the one-head, channels_last training path (one gram for q k^T
and both norms) against channel_attention on the chunks.

Tolerances: float64 1e-10 (gradcheck on the packed path itself); float32 2e-6 relative on
the output and 1e-5 relative on every gradient (sums are reordered, nothing else).
"""
from __future__ import annotations

import pytest
import torch

from irblocks.kernels import mdta
from irblocks.kernels.mdta import channel_attention, channel_attention_packed
from tests._compare import rel_error


def _qkv(b, c, h, w, dtype=torch.float32):
    x = torch.randn(b, 3 * c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 1, 3, 3), (3, 16, 8, 8)])
def test_packed_equals_chunked_channel_attention(shape):
    torch.manual_seed(0)
    qkv = _qkv(*shape)
    ref_in = qkv.detach().clone().requires_grad_()
    t = torch.tensor([1.7], requires_grad=True)
    t_ref = t.detach().clone().requires_grad_()
    out = channel_attention_packed(qkv, t, heads=1)
    ref = channel_attention(*ref_in.chunk(3, dim=1), t_ref, heads=1)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)
    for a, r in ((qkv.grad, ref_in.grad), (t.grad, t_ref.grad)):
        assert rel_error(a, r) < 1e-5
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_packed_path_is_taken_only_where_it_applies(monkeypatch):
    calls = []
    real = mdta._packed_single_head
    monkeypatch.setattr(mdta, "_packed_single_head", lambda *a: calls.append(1) or real(*a))
    t = torch.ones(1)
    channel_attention_packed(_qkv(1, 4, 5, 5), t, heads=1)             # training, channels_last
    assert calls == [1]
    with torch.no_grad():                                              # inference: two matmuls
        channel_attention_packed(_qkv(1, 4, 5, 5), t, heads=1)
    channel_attention_packed(_qkv(1, 4, 5, 5).detach().contiguous().requires_grad_(), t, 1)
    channel_attention_packed(_qkv(1, 4, 5, 5), torch.ones(2), heads=2)
    assert calls == [1]


def test_packed_gradcheck_float64():
    torch.manual_seed(0)
    qkv = _qkv(2, 3, 4, 5, torch.float64)
    t = torch.tensor([0.8], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, tt: mdta._packed_single_head(x, tt), (qkv, t))


def test_packed_rejects_a_channel_count_not_divisible_by_three():
    with pytest.raises(ValueError, match=r"\(B, 3C, H, W\), got \(1, 4, 2, 2\)"):
        channel_attention_packed(torch.randn(1, 4, 2, 2), torch.ones(1), heads=1)
