"""Channel LayerNorm: Triton (interpreter) vs reference, forward and every grad.

Tolerances: float32 atol=rtol=1e-4 (the kernel sums channels in a different order than
torch; observed differences ~1e-6); float16 inputs atol=rtol=2e-3 on the output
(compared with the float32 reference cast to float16; the kernel computes in float32),
1e-2 on grads.
"""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import irblocks
from irblocks.kernels._dispatch import out_format
from irblocks.kernels.layernorm import channel_layer_norm, channel_layer_norm_reference
from tests._compare import assert_rel_close
from tests.kernels.kutil import ALL_LAYOUTS, assert_close, c_kernel_or_skip, cases, grads, make

C = 6  # not a power of two: exercises the channel mask


def _params(c, bias, dtype=torch.float32):
    w = (torch.rand(c) + 0.5).to(dtype).requires_grad_()
    b = torch.randn(c).to(dtype).requires_grad_() if bias else None
    return w, b


@pytest.mark.parametrize("variant", ["with_bias", "bias_free"])
@pytest.mark.parametrize("shape,layout", cases(layouts=ALL_LAYOUTS))
def test_triton_matches_reference(triton_interp, shape, layout, variant):
    b, h, w = shape
    x = make(b, C, h, w, layout, requires_grad=True, scale=2.0, offset=0.5)
    wt, bs = _params(C, variant == "with_bias")
    inputs = [x, wt] + ([bs] if bs is not None else [])

    def run(impl):
        return lambda x, wt, *bs: channel_layer_norm(x, wt, bs[0] if bs else None, 1e-5, impl=impl)

    out_t, g_t = grads(run("triton"), inputs)
    out_r, g_r = grads(run("reference"), inputs)
    assert_close(out_t, out_r, msg="forward")
    assert_close(g_t, g_r, grad=True, msg="grads (x, w[, b])")
    assert len(g_t) == len(inputs)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_output_follows_input_layout(triton_interp, layout):
    x = make(1, 48, 3, 5, layout)
    y = channel_layer_norm(x, torch.ones(48), torch.zeros(48), impl="triton")
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                           else torch.contiguous_format)
    assert_close(y, channel_layer_norm_reference(x, torch.ones(48), torch.zeros(48)))


@pytest.mark.parametrize("variant", ["with_bias", "bias_free"])
def test_float16(triton_interp, variant):
    x = make(3, 5, 3, 4, "channels_last", dtype=torch.float16, requires_grad=True)
    wt, bs = _params(5, variant == "with_bias", torch.float16)
    inputs = [x, wt] + ([bs] if bs is not None else [])
    out_t, g_t = grads(
        lambda x, w, *b: channel_layer_norm(x, w, b[0] if b else None, impl="triton"), inputs)
    x32 = [t.detach().float().requires_grad_() for t in inputs]
    gen = torch.Generator().manual_seed(1)
    out_r, g_r = grads(lambda x, w, *b: channel_layer_norm_reference(x, w, b[0] if b else None),
                       x32, grad_out=torch.randn(out_t.shape, generator=gen).half().float())
    assert out_t.dtype == torch.float16
    assert_close(out_t, out_r.half(), torch.float16, msg="forward fp16")
    assert_close([g.float() for g in g_t], g_r, torch.float16, grad=True, msg="grads fp16")


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_reference_float64(bias):
    x = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True) if bias else None
    args = (x, w, b) if bias else (x, w)
    assert torch.autograd.gradcheck(
        lambda x, w, *b: channel_layer_norm_reference(x, w, b[0] if b else None), args)


def test_bias_free_is_restormer_formula():
    x = torch.randn(2, 5, 3, 3) + 1.0
    w = torch.rand(5)
    var = x.var(1, keepdim=True, unbiased=False)
    expect = x / torch.sqrt(var + 1e-5) * w.view(1, -1, 1, 1)
    assert_close(channel_layer_norm(x, w, None, impl="reference"), expect)


@pytest.mark.parametrize("variant", ["with_bias", "bias_free"])
def test_block_same_through_both_paths(triton_interp, monkeypatch, variant):
    norm = irblocks.ChannelLayerNorm(8, variant=variant)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        if norm.bias is not None:
            norm.bias.normal_()
    x = make(3, 8, 5, 3, "channels_last", requires_grad=True)
    results = {}
    for impl in ("triton", "reference"):
        monkeypatch.setenv("IRBLOCKS_KERNELS", impl)
        norm.zero_grad()
        out, (gx,) = grads(norm, [x])
        results[impl] = (out, gx, [p.grad.clone() for p in norm.parameters()])
    (ot, gt, pt), (or_, gr, pr) = results["triton"], results["reference"]
    assert_close(ot, or_, msg="block forward")
    assert_close([gt] + pt, [gr] + pr, grad=True, msg="block grads")


def test_custom_op_registration(triton_interp):
    x = make(1, 4, 2, 3, "channels_last", requires_grad=True)
    w, b = torch.rand(4, requires_grad=True), torch.randn(4, requires_grad=True)
    torch.library.opcheck(torch.ops.irblocks.channel_layer_norm.default, (x, w, b, 1e-5),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
    torch.library.opcheck(torch.ops.irblocks.channel_layer_norm.default, (x, w, None, 1e-5),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flops_zero_and_meta(triton_interp):
    x = make(1, 4, 2, 3)
    with FlopCounterMode(display=False) as fc:
        channel_layer_norm(x, torch.ones(4), torch.zeros(4), impl="triton")
    assert fc.get_total_flops() == 0
    xm = torch.empty(1, 4, 2, 3, device="meta")
    assert channel_layer_norm(xm, torch.ones(4, device="meta"), None,
                              impl="triton").shape == xm.shape


def test_bad_impl_is_one_line_error():
    with pytest.raises(ValueError, match="impl argument"):
        channel_layer_norm(torch.randn(1, 2, 2, 2), torch.ones(2), impl="cuda")


# --- the compiled C kernel (CPU, float32): csrc/layernorm.c --------------------------------
# Tolerance vs the float64 reference, relative to the largest magnitude: 1e-5 (observed
# ~3e-7 for y, dx, dw, db; dw / db sum over every pixel in float per 64 pixels, double across).

def _c_vs_float64(x, weight, bias, center):
    inputs = [t for t in (x, weight, bias) if t is not None]

    def run(impl):
        def fn(*ts):
            return channel_layer_norm(ts[0], ts[1], ts[2] if len(ts) > 2 else None,
                                      impl=impl, center=center)
        return fn

    out_c, g_c = grads(run("cpu"), inputs)
    out_r, g_r = grads(run("reference"), [t.detach().double().requires_grad_() for t in inputs])
    if out_format(x) == torch.channels_last:                # the C kernel ran
        assert out_c.is_contiguous(memory_format=torch.channels_last)
    names = ["y", "dx", "dw", "db"][:1 + len(g_c)]
    assert_rel_close(names, [out_c, *g_c], [out_r, *g_r], 1e-5)


@pytest.mark.parametrize("variant", ["with_bias", "bias_free", "centered"])
# 1 or 2 channels: dx ~ 0 (degenerate). The C kernel keeps 16-128 channels in 1-8 vectors
# (16, 48, 128: whole vectors; 28, 56: an overlapping last vector) and loops otherwise
@pytest.mark.parametrize("channels", [3, 5, 16, 28, 48, 56, 97, 128, 130])
@pytest.mark.parametrize("shape,layout", cases(shapes=[(1, 5, 7), (3, 1, 9), (1, 13, 11)]))
def test_c_kernel_matches_reference(shape, layout, channels, variant):
    c_kernel_or_skip("layernorm")
    b, h, w = shape
    x = make(b, channels, h, w, layout, requires_grad=True, scale=3.0)
    with torch.no_grad():
        x.add_(1.5)                                   # a mean far from zero
    weight = torch.randn(channels, requires_grad=True)
    bias = torch.randn(channels, requires_grad=True) if variant == "with_bias" else None
    _c_vs_float64(x, weight, bias, True if variant == "centered" else None)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("channels", [12, 28])          # the loops, the register path
def test_c_kernel_thread_counts(threads, channels):
    c_kernel_or_skip("layernorm")
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # 2 x 19 x 23 = 874 pixels: several 64-pixel chunks per thread, a partial last one
        x = make(2, channels, 19, 23, "channels_last", requires_grad=True)
        _c_vs_float64(x, torch.randn(channels, requires_grad=True),
                      torch.randn(channels, requires_grad=True), None)
    finally:
        torch.set_num_threads(old)


def test_c_kernel_picked_and_grad_of_grad():
    c_kernel_or_skip("layernorm")
    x = make(1, 6, 3, 4, "channels_last", requires_grad=True)
    weight, bias = torch.randn(6, requires_grad=True), torch.randn(6, requires_grad=True)
    # auto: the C kernel for every variant (channels_last float32 CPU input)
    for b, center in ((None, None), (bias, None), (None, True)):
        y = channel_layer_norm(x, weight, b, center=center)
        assert type(y.grad_fn).__name__.startswith("_LayerNormCpu"), (b is None, center)
    nchw = x.detach().contiguous().requires_grad_()
    nchw_fn = type(channel_layer_norm(nchw, weight, bias).grad_fn).__name__
    assert not nchw_fn.startswith("_LayerNorm"), nchw_fn

    def second_order(impl):
        xx, ww, bb = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        (gx,) = torch.autograd.grad(channel_layer_norm(xx, ww, bb, impl=impl).square().sum(), xx,
                                    create_graph=True)
        gx.square().sum().backward()
        return [gx, xx.grad, ww.grad, bb.grad]

    for c, r in zip(second_order("cpu"), second_order("reference")):
        assert_close(c, r, grad=True)
