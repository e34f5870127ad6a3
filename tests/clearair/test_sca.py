"""Pattern-token SCA == dense SCA (the scaffold's (HW)^2 attention), float64, 1e-5."""
import pytest
import torch

from irblocks.clearair.mask_pool import MaskAveragePool, mask_average_pool
from irblocks.clearair.sca import SemanticCrossAttention
from irblocks.guidance import Guidance
from irblocks.kernels.pattern_sca import pattern_tokens

B, C, H, W = 2, 8, 7, 9


def masks_case(kind: str, k: int = 5, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(hash(kind) % 1000)
    if kind == "tile":           # every pixel in exactly one mask
        lab = torch.randint(0, k, (B, h, w), generator=g)
        return torch.nn.functional.one_hot(lab, k).permute(0, 3, 1, 2).double()
    if kind == "overlap":        # overlapping masks covering everything
        m = (torch.rand(B, k, h, w, generator=g) < 0.5).double()
        m[:, 0] = 1.0
        return m
    if kind == "uncovered":      # overlaps and holes
        return (torch.rand(B, k, h, w, generator=g) < 0.3).double()
    if kind == "empty_masks":    # some masks cover nothing
        m = (torch.rand(B, k, h, w, generator=g) < 0.4).double()
        m[:, 1] = 0
        return m
    if kind == "k0":
        return torch.zeros(B, 0, h, w, dtype=torch.float64)
    if kind == "soft_bigger":    # non-binary values at another resolution (thresholded, resized)
        return torch.rand(B, k, 2 * h + 1, 2 * w - 1, generator=g, dtype=torch.float64)
    raise ValueError(kind)


KINDS = ["tile", "overlap", "uncovered", "empty_masks", "k0", "soft_bigger"]


def _pair(layout="nchw"):
    torch.manual_seed(0)
    pat = SemanticCrossAttention(C, num_heads=4, mode="pattern").double().eval()
    den = SemanticCrossAttention(C, num_heads=4, mode="dense").double().eval()
    den.load_state_dict(pat.state_dict())
    return pat, den


@pytest.mark.parametrize("kind", KINDS)
def test_pattern_equals_dense_forward_and_grads(kind):
    pat, den = _pair()
    masks = masks_case(kind)
    x = torch.randn(B, C, H, W, dtype=torch.float64) * 2
    outs, grads = [], []
    for blk in (pat, den):
        xi = x.clone().requires_grad_(True)
        blk.zero_grad()
        y = blk(xi, Guidance({"prior.masks": masks}))
        assert torch.isfinite(y).all()
        y.pow(2).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in blk.parameters()])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pattern_equals_dense_channels_last_and_src():
    pat, den = _pair()
    masks = masks_case("uncovered")
    x = torch.randn(B, C, H, W, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    src = torch.randn(B, C, H, W, dtype=torch.float64)
    a = pat(x, Guidance({"prior.masks": masks}), src=src)
    b = den(x, Guidance({"prior.masks": masks}), src=src)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_one_token_per_mask_is_wrong_with_overlaps_and_holes():
    """Why the empty pattern and the pattern tokens are needed (architectures.md section 4)."""
    pat, den = _pair()
    masks = masks_case("uncovered")
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    ref = den(x, Guidance({"prior.masks": masks}))
    # naive: one token per mask with its mean, log(mask area) bias
    q = pat._split(pat.q_proj(pat.norm(x)))
    m = masks.flatten(2)
    means = (m @ x.flatten(2).transpose(1, 2)) / m.sum(-1, keepdim=True).clamp_min(1)
    area = m.sum(-1)
    naive = pat._token_attention(q, pat._lin(pat.sem_proj, means),
                                 torch.where(area > 0, area.clamp_min(1).log(),
                                             torch.full_like(area, -1e9)))
    naive = x + pat.out_proj(pat._merge(naive, H, W))
    assert (naive - ref).abs().max() > 1e-3


def test_pattern_tokens_match_dense_map():
    masks = masks_case("overlap").bool()
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    tokens, bias, inv = pattern_tokens(masks, x)
    dense = mask_average_pool(x, masks).permute(0, 2, 3, 1).reshape(B, H * W, C)
    gathered = torch.gather(tokens, 1, inv.unsqueeze(-1).expand(-1, -1, C))
    torch.testing.assert_close(gathered, dense)
    counts = torch.stack([torch.bincount(inv[b], minlength=tokens.shape[1]) for b in range(B)])
    finite = torch.isfinite(bias)
    torch.testing.assert_close(bias[finite].exp(), counts[finite].double())
    assert (counts[~finite] == 0).all()


def test_mask_dropout_same_draw_on_every_level_and_no_nan():
    torch.manual_seed(3)
    blk = SemanticCrossAttention(C, num_heads=4, mask_dropout=0.9).train()
    g = Guidance({"prior.masks": masks_case("tile").float()})
    y1 = blk(torch.randn(B, C, H, W), g)
    dropped = g.get("prior.masks#dropout")
    blk(torch.randn(B, C, 3, 4), g)   # a coarser level reuses the draw
    assert g.get("prior.masks#dropout") is dropped
    assert torch.isfinite(y1).all()


def test_dropout_everything_and_k0_no_nan():
    blk = SemanticCrossAttention(C, num_heads=4, mask_dropout=0.999).train()
    for masks in (masks_case("tile").float(), masks_case("k0").float()):
        x = torch.randn(B, C, H, W, requires_grad=True)
        y = blk(x, Guidance({"prior.masks": masks}))
        y.sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_mask_average_pool_block_resizes_and_thresholds():
    x = torch.randn(1, 3, 4, 4)
    soft = torch.zeros(1, 1, 8, 8)
    soft[..., :4, :] = 0.7     # top half, soft value above threshold, at twice the size
    soft[..., 4:, :] = 0.3     # below threshold: uncovered
    y = MaskAveragePool().eval()(x, soft)
    torch.testing.assert_close(y[..., :2, :],
                               x[..., :2, :].mean((2, 3), keepdim=True).expand(-1, -1, 2, 4))
    assert (y[..., 2:, :] == 0).all()


def test_more_masks_than_code_bits_uses_row_unique():
    pat, den = _pair()
    masks = masks_case("uncovered", k=70)
    x = torch.randn(B, C, H, W, dtype=torch.float64)
    torch.testing.assert_close(pat(x, Guidance({"prior.masks": masks})),
                               den(x, Guidance({"prior.masks": masks})), atol=1e-5, rtol=1e-5)


def test_learned_tokens_ablation_has_no_prior():
    blk = SemanticCrossAttention(C, num_heads=4, source="learned", learned_tokens=3)
    assert blk.guidance_io() == (set(), set())
    x = torch.randn(B, C, H, W, requires_grad=True)
    blk(x, Guidance()).sum().backward()
    assert blk.tokens.grad is not None and torch.isfinite(blk.tokens.grad).all()
