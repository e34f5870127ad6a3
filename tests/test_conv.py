"""irblocks.conv.pointwise_conv2d: the CPU 1x1 convolution (F.linear for reducing or square
shapes, a product with a transposed copy of the weight for expanding ones over enough pixels)
equals F.conv2d in value, memory format and every gradient; float64, to 1e-12 relative."""
import pytest
import torch
import torch.nn.functional as F

import irblocks.conv
from irblocks.conv import pointwise_conv2d
from tests._compare import graph_node_names, rel_error


@pytest.mark.parametrize("cin,cout", [(5, 12), (12, 5), (7, 7), (1, 3)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("min_pixels", [1, None])
def test_matches_conv2d(cin, cout, bias, layout, min_pixels, monkeypatch):
    if min_pixels is not None:      # None: the library's threshold (70 pixels stay below it)
        monkeypatch.setattr(irblocks.conv, "TRANSPOSED_WEIGHT_MIN_PIXELS", min_pixels)
    torch.manual_seed(0)
    x = torch.randn(2, cin, 5, 7, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(cout, cin, 1, 1, dtype=torch.float64)
    b = torch.randn(cout, dtype=torch.float64) if bias else None
    leaves = [t.requires_grad_() for t in (x, weight, b) if t is not None]
    g = torch.randn(2, cout, 5, 7, dtype=torch.float64)
    results = []
    for f in (pointwise_conv2d, F.conv2d):
        y = f(x, weight, b)
        results.append([y.detach(), *torch.autograd.grad(y, leaves, g)])
        if f is pointwise_conv2d and layout == "channels_last" and cin > 1:
            assert y.is_contiguous(memory_format=torch.channels_last)
            # the transposed weight copy is the only clone on the path
            transposed = cout > cin and min_pixels == 1
            assert ("CloneBackward0" in graph_node_names(y)) == transposed
    for a, r in zip(*results):
        assert a.shape == r.shape and rel_error(a, r) <= 1e-12


def test_matches_conv2d_under_vmap(monkeypatch):
    """ClusIR's experts call it under torch.func.vmap (weights batched per expert)."""
    monkeypatch.setattr(irblocks.conv, "TRANSPOSED_WEIGHT_MIN_PIXELS", 1)
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    for cout in (9, 3):
        weights = torch.randn(3, cout, 4, 1, 1, dtype=torch.float64)
        out = torch.func.vmap(lambda w: pointwise_conv2d(x, w))(weights)
        ref = torch.stack([F.conv2d(x, w) for w in weights])
        assert rel_error(out, ref) <= 1e-12
