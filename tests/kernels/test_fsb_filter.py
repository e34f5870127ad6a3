"""FSB dynamic k x k filter with reflect borders: Triton (interpreter) vs the shift-and-add
reference vs an unfold oracle, forward and both gradients, every layout.

Tolerances: float32 atol=rtol=1e-5 on the output and input gradient (k*k products summed in
a different order); the weight gradient sums over C/G x H x W products per tap with atomic
adds of per-program partial sums, so it gets atol=rtol=1e-4. float16: 2e-3 output, 1e-2 grads.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from irblocks.clusir import FrequencySelfMining
from irblocks.kernels.fsb_filter import fsb_filter, fsb_filter_reference, reflect_index
from tests.kernels.kutil import assert_close, both_paths, cases, grads, make

C, G = 2, 1   # one group of two channels: grouping is exercised, programs stay few
F32 = {"atol": 1e-5, "rtol": 1e-5}


def unfold_oracle(x, weight, k):
    b, c, h, w = x.shape
    p = k // 2
    xp = x.index_select(2, reflect_index(h, p)).index_select(3, reflect_index(w, p))
    cols = F.unfold(xp, k).view(b, c, k * k, h, w)
    wc = weight.repeat_interleave(c // weight.shape[1], dim=1)
    return (cols * wc[..., None, None]).sum(2)


def weights(b, g, k, layout="contiguous"):
    w = torch.softmax(torch.randn(b, g, k * k), dim=-1)
    if layout == "strided":
        w = torch.softmax(torch.randn(b, g, 2 * k * k), dim=-1)[..., ::2]
    return w.requires_grad_()


def test_reflect_index_matches_torch_pad():
    for n, p in ((5, 1), (5, 2), (2, 1), (3, 2)):
        x = torch.arange(float(n)).view(1, 1, 1, n)
        torch.testing.assert_close(F.pad(x, (p, p, 0, 0), mode="reflect").flatten().long(),
                                   reflect_index(n, p))
    assert reflect_index(1, 2).tolist() == [0] * 5
    assert reflect_index(2, 3).tolist() == [1, 0, 1, 0, 1, 0, 1, 0]


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 1, 9), (1, 6, 1), (2, 2, 2)])
def test_reference_matches_unfold_oracle(shape, k):
    b, h, w = shape
    x = torch.randn(b, C, h, w, dtype=torch.float64)
    wt = weights(b, G, k).detach().double()
    torch.testing.assert_close(fsb_filter_reference(x, wt, k), unfold_oracle(x, wt, k))


@pytest.mark.parametrize("shape,layout,k",
                         [pytest.param(*c.values, 3, id=f"{c.id}-k3") for c in cases()] +
                         [pytest.param((1, 5, 7), "channels_last", 5, id="1x5x7-channels_last-k5"),
                          pytest.param((1, 2, 1), "nchw", 5, id="1x2x1-nchw-k5")])
def test_triton_matches_reference(triton_interp, shape, layout, k):
    b, h, w = shape
    x = make(b, C, h, w, layout, requires_grad=True)
    wt = weights(b, G, k, "strided" if layout == "strided" else "contiguous")
    out_t, g_t = grads(lambda x, wt: fsb_filter(x, wt, k, impl="triton"), [x, wt])
    out_r, g_r = grads(lambda x, wt: fsb_filter(x, wt, k, impl="reference"), [x, wt])
    assert_close(out_t, out_r, msg="forward", **F32)
    assert_close(g_t[0], g_r[0], msg="grad x", **F32)
    assert_close(g_t[1], g_r[1], msg="grad weight", atol=1e-4, rtol=1e-4)


def test_per_channel_groups(triton_interp):
    x = make(2, 6, 7, 5, "channels_last", requires_grad=True)
    wt = weights(2, 6, 3)          # one filter per channel
    out_t, g_t = grads(lambda x, wt: fsb_filter(x, wt, 3, impl="triton"), [x, wt])
    out_r, g_r = grads(fsb_filter_reference, [x, wt, 3])
    assert_close(out_t, out_r, **F32)
    assert_close(g_t, g_r, atol=1e-4, rtol=1e-4)


def test_float16(triton_interp):
    x = make(3, C, 5, 6, "channels_last", dtype=torch.float16, requires_grad=True)
    wt = weights(3, G, 3).detach().half().requires_grad_()
    out_t, g_t = grads(lambda x, wt: fsb_filter(x, wt, 3, impl="triton"), [x, wt])
    out_r, g_r = grads(lambda x, wt: fsb_filter_reference(x, wt, 3),
                       [x.detach().float().requires_grad_(), wt.detach().float().requires_grad_()])
    assert out_t.dtype == torch.float16
    assert_close(out_t, out_r.half(), torch.float16)
    assert_close([g.float() for g in g_t], g_r, torch.float16, grad=True)


def test_gradcheck_reference_float64():
    x = torch.randn(2, 4, 3, 5,
                    dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    wt = torch.softmax(torch.randn(2, 2, 9, dtype=torch.float64), -1).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: fsb_filter_reference(x, w, 3), (x, wt))
    x1 = torch.randn(1, 2, 1, 2, dtype=torch.float64, requires_grad=True)   # reflection bounces
    w1 = torch.rand(1, 1, 25, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: fsb_filter_reference(x, w, 5), (x1, w1))


def test_block_same_through_both_paths(triton_interp, monkeypatch):
    blk = FrequencySelfMining(8, kernel_size=3, groups=4)
    x = make(2, 8, 5, 3, "channels_last", requires_grad=True)
    res = both_paths(lambda x: blk.decompose(x)[1], [x], monkeypatch, module=blk)
    assert_close(res["triton"], res["reference"], atol=1e-4, rtol=1e-4)


def test_custom_op_registration(triton_interp):
    x = make(1, 4, 3, 2, "channels_last", requires_grad=True)
    wt = weights(1, 2, 3)
    torch.library.opcheck(torch.ops.irblocks.fsb_filter.default, (x, wt, 3),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flops_zero_meta_errors_and_specs(triton_interp):
    with FlopCounterMode(display=False) as fc:
        fsb_filter(make(1, 4, 3, 3), weights(1, 2, 3).detach(), 3, impl="triton")
    assert fc.get_total_flops() == 0
    m = torch.empty(1, 4, 3, 3, device="meta")
    assert fsb_filter(m, torch.empty(1, 2, 9, device="meta"), 3,
                      impl="triton").shape == (1, 4, 3, 3)
    with pytest.raises(ValueError, match="divide"):
        fsb_filter(torch.randn(1, 5, 3, 3), torch.rand(1, 2, 9), 3)
    with pytest.raises(ValueError, match="odd"):
        fsb_filter(torch.randn(1, 4, 3, 3), torch.rand(1, 2, 16), 4)
    with pytest.raises(ValueError, match="weight"):
        fsb_filter(torch.randn(1, 4, 3, 3), torch.rand(1, 2, 8), 3)
