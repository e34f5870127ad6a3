"""Channel LayerNorm, "centered" variant ((x - mean) / sqrt(var + eps) * w, no bias; ClearAIR's
scaffold): Triton (interpreter) vs reference, forward and every grad, and the block.

Tolerances as tests/kernels/test_layernorm.py: float32 atol=rtol=1e-4 (kutil.assert_close).
"""

import pytest
import torch

import irblocks
from irblocks.kernels.layernorm import channel_layer_norm, channel_layer_norm_reference
from tests.kernels.kutil import LAYOUTS, SMALL_SHAPES, assert_close, both_paths, cases, grads, make

C = 6  # not a power of two: exercises the channel mask


def _expected(x, w, eps):
    mean = x.mean(1, keepdim=True)
    var = x.var(1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps) * w.view(1, -1, 1, 1)


def test_centered_formula_and_differs_from_bias_free():
    x = torch.randn(2, 5, 3, 3) + 1.0
    w = torch.rand(5) + 0.5
    y = channel_layer_norm(x, w, None, 1e-6, impl="reference", center=True)
    assert_close(y, _expected(x, w, 1e-6))
    assert (y - channel_layer_norm(x, w, None, 1e-6, impl="reference")).abs().max() > 0.1


@pytest.mark.parametrize("shape,layout", cases(SMALL_SHAPES, LAYOUTS))
def test_triton_matches_reference(triton_interp, shape, layout):
    b, h, w = shape
    x = make(b, C, h, w, layout, requires_grad=True, scale=2.0, offset=0.5)
    wt = (torch.rand(C) + 0.5).requires_grad_()

    def run(impl):
        return lambda x, wt: channel_layer_norm(x, wt, None, 1e-6, impl=impl, center=True)

    out_t, g_t = grads(run("triton"), [x, wt])
    out_r, g_r = grads(run("reference"), [x, wt])
    assert_close(out_t, out_r, msg="forward")
    assert_close(g_t, g_r, grad=True, msg="grads (x, w)")
    assert_close(out_r, _expected(x.detach(), wt.detach(), 1e-6), msg="reference formula")


def test_gradcheck_reference_float64():
    x = (
        torch.randn(2, 3, 2, 3, dtype=torch.float64)
        .to(memory_format=torch.channels_last)
        .requires_grad_()
    )
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w: channel_layer_norm_reference(x, w, None, 1e-6, True), (x, w)
    )


def test_center_false_with_bias_is_refused():
    with pytest.raises(ValueError, match="center=False"):
        channel_layer_norm(torch.randn(1, 2, 2, 2), torch.ones(2), torch.zeros(2), center=False)


def test_block_centered_variant_through_both_paths_and_official(triton_interp, monkeypatch):
    norm = irblocks.ChannelLayerNorm(8, variant="centered", eps=1e-6)
    assert norm.bias is None and [n for n, _ in norm.named_parameters()] == ["weight"]
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = make(3, 8, 5, 3, "channels_last", requires_grad=True)
    res = both_paths(norm, [x], monkeypatch, module=norm)
    assert_close(res["triton"], res["reference"], grad=True, msg="triton vs reference")
    assert_close(res["reference"][0], _expected(x.detach(), norm.weight.detach(), 1e-6))
    norm.execution = "official"
    assert_close(norm(x), res["reference"][0], msg="official execution")


def test_centered_variant_from_a_recipe_spec():
    from irblocks.registry import build

    norm = build({"type": "layernorm", "variant": "centered", "eps": 1.0e-6}, "block", dim=4)
    assert norm.variant == "centered" and norm.bias is None and norm.eps == 1e-6
