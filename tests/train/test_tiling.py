"""Tiled inference: blending weights, coverage, equality with whole-image inference for local
models."""
import pytest
import torch
from torch import nn

from irblocks.train.tiling import tile_starts, tiled_forward


def test_tile_starts_cover():
    for size, tile, ov in [(100, 32, 8), (64, 32, 8), (33, 32, 4), (31, 32, 4), (1000, 256, 32)]:
        s = tile_starts(size, tile, ov)
        assert s[0] == 0 and s[-1] == max(0, size - tile)
        assert all(b - a <= tile - ov for a, b in zip(s, s[1:]))


@pytest.mark.parametrize("shape", [(1, 3, 70, 53), (2, 3, 97, 130), (1, 3, 20, 20)])
def test_pointwise_model_tiles_exactly(shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 1), nn.GELU(), nn.Conv2d(5, 3, 1))
    x = torch.rand(shape)
    with torch.no_grad():
        ref = model(x)
    out = tiled_forward(model, x, tile=32, overlap=8)
    assert out.shape == ref.shape
    assert torch.allclose(out, ref, atol=1e-5)


def test_unet_tiles_close_to_whole():
    import irblocks
    from tests.train._util import TINY_MODEL
    torch.manual_seed(0)
    m = irblocks.registry.build(TINY_MODEL, "model").eval()
    x = torch.rand(1, 3, 72, 90)
    with torch.no_grad():
        ref = m(x)
    out = tiled_forward(m, x, tile=48, overlap=16)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().mean() < 0.05
    assert torch.equal(tiled_forward(m, x, tile=None), ref)


def test_errors():
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(nn.Identity(), torch.rand(1, 3, 64, 64), tile=32, overlap=32)
    with pytest.raises(ValueError, match="B x C x H x W"):
        tiled_forward(nn.Identity(), torch.rand(3, 64, 64), tile=32)
