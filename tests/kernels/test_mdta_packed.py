"""channel_attention_packed: the channels_last training path (_PackedAttention: matmuls on
strided views of the pixel rows, one input-gradient tensor) against channel_attention on the
chunks.

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


@pytest.mark.parametrize("shape,heads", [((2, 5, 7, 9), 1), ((1, 1, 3, 3), 1), ((3, 16, 8, 8), 1),
                                         ((2, 12, 32, 33), 3), ((1, 8, 32, 32), 8),
                                         ((2, 70, 5, 6), 1)])  # one head: full gram up to 64
def test_packed_equals_chunked_channel_attention(shape, heads, monkeypatch):
    monkeypatch.setattr(mdta, "PACKED_MIN_PIXELS", 0)      # several heads on small maps too
    torch.manual_seed(0)
    qkv = _qkv(*shape)
    ref_in = qkv.detach().clone().requires_grad_()
    t = torch.linspace(0.5, 1.7, heads).requires_grad_()
    t_ref = t.detach().clone().requires_grad_()
    calls = _count_packed(monkeypatch)
    out = channel_attention_packed(qkv, t, heads=heads)
    assert calls == [1]
    ref = channel_attention(*ref_in.chunk(3, dim=1), t_ref, heads=heads)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=2e-6)
    for a, r in ((qkv.grad, ref_in.grad), (t.grad, t_ref.grad)):
        assert rel_error(a, r) < 1e-5
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert qkv.grad.is_contiguous(memory_format=torch.channels_last)


def _count_packed(monkeypatch) -> list:
    calls = []
    real = mdta._packed_rows
    monkeypatch.setattr(mdta, "_packed_rows", lambda *a: calls.append(1) or real(*a))
    return calls


def test_packed_path_is_taken_only_where_it_applies(monkeypatch):
    calls = _count_packed(monkeypatch)
    t = torch.ones(1)
    channel_attention_packed(_qkv(1, 4, 5, 5), t, heads=1)             # training, channels_last
    assert calls == [1]
    with torch.no_grad():                                              # inference: chunks
        channel_attention_packed(_qkv(1, 4, 5, 5), t, heads=1)
    channel_attention_packed(_qkv(1, 4, 5, 5).detach().contiguous().requires_grad_(), t, 1)
    channel_attention_packed(_qkv(1, 4, 5, 5), torch.ones(2), heads=2)   # small map, 2 heads
    channel_attention_packed(_qkv(1, 4, 5, 5).to(torch.bfloat16), t.bfloat16(), heads=1)
    with torch.autocast("cpu"):
        channel_attention_packed(_qkv(1, 4, 5, 5), t, heads=1)
    assert calls == [1]
    channel_attention_packed(_qkv(1, 4, 16, 16), torch.ones(2), heads=2)  # PACKED_MIN_PIXELS
    assert calls == [1, 1]


@pytest.mark.parametrize("heads,full_gram", [(1, True), (1, False), (2, False)])
def test_packed_gradcheck_float64(heads, full_gram, monkeypatch):
    monkeypatch.setattr(mdta, "PACKED_MIN_PIXELS", 0)
    monkeypatch.setattr(mdta, "FULL_GRAM_MAX_CHANNELS", 64 if full_gram else 0)
    torch.manual_seed(0)
    qkv = _qkv(2, 4, 4, 5, torch.float64)
    t = torch.tensor([0.8, 1.3][:heads], dtype=torch.float64, requires_grad=True)
    calls = _count_packed(monkeypatch)
    assert torch.autograd.gradcheck(lambda x, tt: channel_attention_packed(x, tt, heads),
                                    (qkv, t))
    assert torch.autograd.gradgradcheck(lambda x, tt: channel_attention_packed(x, tt, heads),
                                        (qkv, t))
    assert calls


def test_packed_gradient_of_qkv_only_or_temperature_only():
    torch.manual_seed(0)
    qkv, t = _qkv(1, 4, 5, 5), torch.tensor([1.2], requires_grad=True)
    ref_in = qkv.detach().clone().requires_grad_()
    (dq,) = torch.autograd.grad(channel_attention_packed(qkv, t.detach(), 1).sum(), qkv)
    (dq_ref,) = torch.autograd.grad(channel_attention(*ref_in.chunk(3, 1), t, 1).sum(), ref_in)
    assert rel_error(dq, dq_ref) < 1e-5
    (dt,) = torch.autograd.grad(channel_attention_packed(qkv, t, 1).sum(), t)
    (dt_ref,) = torch.autograd.grad(channel_attention(*ref_in.chunk(3, 1), t, 1).sum(), t)
    assert rel_error(dt, dt_ref) < 1e-5


def test_packed_rejects_a_channel_count_not_divisible_by_three():
    with pytest.raises(ValueError, match=r"\(B, 3C, H, W\), got \(1, 4, 2, 2\)"):
        channel_attention_packed(torch.randn(1, 4, 2, 2), torch.ones(1), heads=1)


def _projection(c, bias, dtype=torch.float32):
    weight = (torch.randn(c, c, 1, 1, dtype=dtype) / c ** 0.5).requires_grad_()
    return weight, ((torch.randn(c, dtype=dtype) * 0.5).requires_grad_() if bias else None)


@pytest.mark.parametrize("shape,heads", [((2, 5, 7, 9), 1), ((3, 16, 8, 8), 1),
                                         ((2, 12, 32, 33), 3), ((1, 8, 32, 32), 8),
                                         ((2, 70, 5, 6), 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_projection_equals_attention_then_conv(shape, heads, bias, monkeypatch):
    """project_weight folded into the attention (y = v (W blockdiag(A))^T + b) against the
    chunked attention followed by F.conv2d: output and the gradients of qkv, temperature,
    weight and bias."""
    monkeypatch.setattr(mdta, "PACKED_MIN_PIXELS", 0)
    torch.manual_seed(0)
    qkv = _qkv(*shape)
    t = torch.linspace(0.5, 1.7, heads).requires_grad_()
    weight, b = _projection(shape[1], bias)
    leaves = [x for x in (qkv, t, weight, b) if x is not None]
    copies = [x.detach().clone().requires_grad_() for x in leaves]
    calls = _count_packed(monkeypatch)
    out = channel_attention_packed(qkv, t, heads, project_weight=weight, project_bias=b)
    assert calls == [1] and out.is_contiguous(memory_format=torch.channels_last)
    ref_qkv, ref_t, ref_w, *ref_b = copies
    ref = torch.nn.functional.conv2d(channel_attention(*ref_qkv.chunk(3, dim=1), ref_t, heads),
                                     ref_w, ref_b[0] if bias else None)
    grad = torch.randn_like(ref)
    got = [out.detach(), *torch.autograd.grad(out, leaves, grad)]
    want = [ref.detach(), *torch.autograd.grad(ref, copies, grad)]
    assert rel_error(got[0], want[0]) < 2e-6
    for name, a, r in zip(["qkv", "temperature", "weight", "bias"], got[1:], want[1:]):
        assert rel_error(a, r) < 1e-5, name


@pytest.mark.parametrize("heads,full_gram,bias", [(1, True, True), (1, False, False),
                                                  (2, False, True)])
def test_packed_projection_gradcheck_float64(heads, full_gram, bias, monkeypatch):
    monkeypatch.setattr(mdta, "PACKED_MIN_PIXELS", 0)
    monkeypatch.setattr(mdta, "FULL_GRAM_MAX_CHANNELS", 64 if full_gram else 0)
    torch.manual_seed(0)
    qkv = _qkv(2, 4, 4, 5, torch.float64)
    t = torch.tensor([0.8, 1.3][:heads], dtype=torch.float64, requires_grad=True)
    weight, b = _projection(4, bias, torch.float64)
    inputs = (qkv, t, weight) + ((b,) if bias else ())
    calls = _count_packed(monkeypatch)

    def f(x, tt, w, *bb):
        return channel_attention_packed(x, tt, heads, project_weight=w,
                                        project_bias=bb[0] if bb else None)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)
    assert calls


def test_packed_projection_gradient_of_the_weight_alone():
    torch.manual_seed(0)
    qkv, t = _qkv(1, 4, 5, 5), torch.tensor([1.2])
    weight, _ = _projection(4, False)
    out = channel_attention_packed(qkv, t, 1, project_weight=weight)
    (dw,) = torch.autograd.grad(out.sum(), weight)
    ref = torch.nn.functional.conv2d(channel_attention(*qkv.detach().chunk(3, 1), t, 1),
                                     weight)
    (dw_ref,) = torch.autograd.grad(ref.sum(), weight)
    assert rel_error(dw, dw_ref) < 1e-5


def test_packed_projection_off_the_packed_path_and_shape_errors():
    torch.manual_seed(0)
    qkv = _qkv(1, 4, 5, 5)
    weight, b = _projection(4, True)
    with torch.no_grad():                                      # inference: chunks, then conv
        out = channel_attention_packed(qkv, torch.ones(1), 1, project_weight=weight,
                                       project_bias=b)
        ref = torch.nn.functional.conv2d(channel_attention(*qkv.chunk(3, 1), torch.ones(1), 1),
                                         weight, b)
    assert rel_error(out, ref) < 2e-6
    with pytest.raises(ValueError, match=r"project_weight must be \(4, 4, 1, 1\) for qkv of 12 "
                                         r"channels, got \(4, 4\)"):
        channel_attention_packed(qkv, torch.ones(1), 1, project_weight=weight.flatten(1))


@pytest.mark.parametrize("c,heads,project", [(70, 1, True), (12, 3, False), (8, 2, True)])
def test_packed_with_sums_of_squares_from_the_depthwise_conv(c, heads, project, monkeypatch):
    """MDTA's chain with q and k's sums of squares from the depthwise 3x3
    (depthwise3x3_sumsq -> channel_attention_packed(..., sumsq=)): output and the gradients
    of the input, the depthwise weight and bias, the temperature and the projection equal the
    chain that lets the attention sum them itself; a wrong sumsq changes the output (it is
    used)."""
    from irblocks.conv import depthwise3x3_sumsq, depthwise_conv2d
    monkeypatch.setattr(mdta, "PACKED_MIN_PIXELS", 0)
    torch.manual_seed(0)
    x = _qkv(2, c, 9, 11)
    dw_w = (torch.randn(3 * c, 1, 3, 3) / 3).requires_grad_()
    dw_b = (torch.randn(3 * c) * 0.1).requires_grad_()
    t = torch.linspace(0.5, 1.7, heads).requires_grad_()
    weight = _projection(c, True)[0] if project else None
    leaves = [v for v in (x, dw_w, dw_b, t, weight) if v is not None]
    assert mdta.packs_with_sumsq(x, t, heads)

    def chain(given: bool, scale: float = 1.0):
        if given:
            qkv, sumsq = depthwise3x3_sumsq(x, dw_w, dw_b, 2 * c)
            assert sumsq is not None        # the C kernel ran and summed
            sumsq = sumsq * scale
        else:
            qkv, sumsq = depthwise_conv2d(x, dw_w, dw_b), None
        return channel_attention_packed(qkv, t, heads, project_weight=weight, sumsq=sumsq)

    out, want = chain(True), chain(False)
    grad = torch.randn_like(out)
    got_g = torch.autograd.grad(out, leaves, grad)
    want_g = torch.autograd.grad(want, leaves, grad)
    assert rel_error(out, want) < 2e-6
    for a, r in zip(got_g, want_g):
        assert rel_error(a, r) < 1e-5
    assert rel_error(chain(True, 4.0), want) > 1e-3
    with pytest.raises(ValueError, match=rf"sumsq must be \(2, {2 * c}\) \(q and k's sums of "
                                         rf"squares per image\), got \(2, {c}\)"):
        channel_attention_packed(x, t, heads, sumsq=torch.ones(2, c))


def test_mdta_takes_the_sums_of_squares_from_its_depthwise_conv(monkeypatch):
    """MDTA (fast, training, channels_last CPU) asks the depthwise 3x3 for q and k's sums of
    squares where the packed attention uses them (several heads, or one head above
    FULL_GRAM_MAX_CHANNELS channels) and not where it forms one gram of [q | k]; its output and
    every parameter's gradient equal the official execution's."""
    import copy

    import irblocks.mdta as mdta_block
    from irblocks import set_execution
    calls = []
    real = mdta_block.depthwise3x3_sumsq
    monkeypatch.setattr(mdta_block, "depthwise3x3_sumsq",
                        lambda *a: calls.append(a[-1]) or real(*a))
    monkeypatch.setattr(mdta, "PACKED_MIN_PIXELS", 0)
    for dim, heads, asked in ((8, 2, [16]), (8, 1, []), (72, 1, [144])):
        calls.clear()
        torch.manual_seed(0)
        block = mdta_block.MDTA(dim, heads, bias=True)
        official = set_execution(copy.deepcopy(block), "official")
        x = torch.randn(2, dim, 6, 7).contiguous(memory_format=torch.channels_last)
        out, ref = block(x), official(x)
        assert calls == asked
        assert rel_error(out, ref) < 2e-6
        grad = torch.randn_like(ref)
        for a, r in zip(torch.autograd.grad(out, list(block.parameters()), grad),
                        torch.autograd.grad(ref, list(official.parameters()), grad)):
            assert rel_error(a, r) < 1e-5
