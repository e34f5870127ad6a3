"""Every registered block and every small recipe: forward, backward, gradients reach every
parameter, any input size, memory formats, compile, and one-line errors for bad input."""

import pytest
import torch
from torch import nn

import irblocks
from irblocks import registry
from irblocks.errors import InputError
from irblocks.testing import dense_routing
from tests import _toy_blocks  # noqa: F401  (registers the toy blocks: the same cases in any session)

CTX = dict(dim=16, heads=2, level=0, stage="encoder", index=0, width=16, out_dim=16)

# Blocks that cannot run on a bare (B, 16, H, W) feature map; each is covered by the
# named test file (the test below checks that the file exists and names the block).
SPECIAL: dict[str, str] = {
    "quality_adapter": "clearair/test_blocks.py",   # one head per width: a forward uses one of them
}


def small_recipes():
    out = []
    for n in irblocks.list_models():
        try:
            with torch.device("meta"):
                if sum(p.numel() for p in irblocks.create_model(n).parameters()) <= 3_000_000:
                    out.append(n)
        except Exception:          # a broken recipe fails in the test itself, not at collection
            out.append(n)
    return out


def _tensors(out) -> list:
    """Every floating tensor in a block's output (tensor, tuple, dict or dataclass)."""
    import dataclasses
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    if dataclasses.is_dataclass(out):
        return [t for f in dataclasses.fields(out) for t in _tensors(getattr(out, f.name))]
    return []


def _block_names():
    return registry.list("block")


def _build(name):
    return registry.build(name, "block", shared=nn.ModuleDict(), **CTX)


@pytest.mark.parametrize("name", _block_names())
def test_block_forward_backward_all_params_get_gradients(name):
    if name in SPECIAL:
        from pathlib import Path
        f = Path(__file__).parent / SPECIAL[name]
        assert f.is_file() and name in f.read_text(), \
            f"{name}: its test file {SPECIAL[name]} must exercise it"
        pytest.skip(f"{name} needs special inputs; covered by {SPECIAL[name]}")
    if getattr(registry.lookup("block", name).obj, "guided", False):
        pytest.skip(f"{name} reads guidance; covered through its model recipe")
    block = _build(name).train()
    if hasattr(block, "example_inputs"):       # blocks whose forward is not f(B x dim x H x W)
        inputs = tuple(block.example_inputs(batch=2, height=8, width=12))
    else:
        inputs = (torch.randn(2, 16, 8, 12),)
    inputs = tuple(t.requires_grad_()
                   if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                   for t in inputs)
    with dense_routing():
        out = _tensors(block(*inputs))
    assert out and all(torch.isfinite(t).all() for t in out)
    sum(t.float().square().mean() for t in out).backward()
    assert any(t.grad is not None for t in inputs if isinstance(t, torch.Tensor)
               and t.is_floating_point())
    for k, p in block.named_parameters():
        assert (p.grad is not None and torch.isfinite(p.grad).all()
                and p.grad.abs().sum() > 0), f"{name}.{k}"


@pytest.mark.parametrize("name",
                         ["layernorm", "mdta", "gdfn", "transformer_block", "prompt_interaction"])
def test_core_block_compiles_aot_eager(name):
    block = _build(name).eval()
    x = torch.randn(1, 16, 8, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = block(x)
        out = torch.compile(block, backend="aot_eager", fullgraph=False)(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", small_recipes())
def test_small_recipe_trains_every_parameter_and_keeps_any_size(name):
    torch.manual_seed(0)
    m = irblocks.create_model(name).train()
    with dense_routing():
        y = m(torch.rand(2, 3, 32, 32))
        y.float().square().mean().backward()
    dead = [k for k, p in m.named_parameters() if p.requires_grad and (
        p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0)]
    assert not dead, f"{name}: parameters without gradient: {dead[:5]}"
    m.eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 37, 53)).shape == (1, 3, 37, 53)
        assert m(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)


@pytest.mark.parametrize("name", ["restormer-tiny", "promptir-tiny"])
def test_memory_formats_agree(name):
    m = irblocks.create_model(name).eval()
    x = torch.rand(2, 3, 20, 28)
    with torch.no_grad():
        a = m(x)
        b = m(x.contiguous(memory_format=torch.channels_last))
        m.channels_last = False
        c = m(x)
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_official_execution_style_gives_the_same_output():
    for name in ("restormer-tiny", "promptir-tiny"):
        m = irblocks.create_model(name).eval()
        x = torch.rand(1, 3, 24, 32)
        with torch.no_grad():
            fast = m(x)
            slow = irblocks.set_execution(m, "official")(x)
        irblocks.set_execution(m, "fast")
        assert (fast - slow).abs().max() <= 1e-5 * slow.abs().max()
    with pytest.raises(ValueError, match="execution style must be one of"):
        irblocks.set_execution(m, "turbo")


def test_layernorm_eps_and_bias_free_formula():
    ln = irblocks.ChannelLayerNorm(4, variant="bias_free")
    assert ln.eps == 1e-5 and ln.bias is None
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    ln = ln.double()
    var = x.var(1, keepdim=True, unbiased=False)
    torch.testing.assert_close(ln(x), x / torch.sqrt(var + 1e-5))        # mean NOT subtracted
    ln2 = irblocks.ChannelLayerNorm(4).double()
    mu = x.mean(1, keepdim=True)
    torch.testing.assert_close(ln2(x), (x - mu) / torch.sqrt(var + 1e-5))


def test_pad_falls_back_to_replicate_for_tiny_inputs():
    from irblocks.unet import pad_to_multiple
    x = torch.rand(1, 3, 3, 5)
    y, hw = pad_to_multiple(x, 8)
    assert y.shape[-2:] == (8, 8) and hw == (3, 5)
    torch.testing.assert_close(y[..., :3, :5], x)


@pytest.mark.parametrize("bad,msg", [
    (torch.rand(1, 4, 16, 16), r"expected 3 channels \(B x 3 x H x W\), got 4"),
    (torch.rand(3, 16, 16),
     r"expected a 4-D tensor B x 3 x H x W, got a 3-D tensor of shape 3x16x16"),
    (torch.rand(1, 1, 3, 16, 16), r"got a 5-D tensor"),
    (torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8),
     r"expected a floating-point tensor .* got torch.uint8"),
])
def test_bad_input_is_one_clear_line(bad, msg):
    m = irblocks.create_model("restormer-tiny")
    with pytest.raises(InputError, match=msg) as e:
        m(bad)
    assert "\n" not in str(e.value)


def test_nan_check_is_opt_in():
    x = torch.rand(1, 3, 16, 16)
    x[0, 0, 0, 0] = float("nan")
    m = irblocks.create_model("restormer-tiny", check_finite=True)
    with pytest.raises(InputError,
                       match=r"input contains 1 NaN/Inf values; expected finite values"):
        m(x)


def test_unet_constructor_errors():
    with pytest.raises(ValueError, match=r"blocks must list 4 non-negative counts"):
        irblocks.UNetRestorer(blocks=[1, 1, 1])
    with pytest.raises(ValueError, match=r"heads must list 4 positive counts"):
        irblocks.UNetRestorer(heads=[1, 2, 4])


@pytest.mark.slow
def test_inductor_compiles_a_tiny_model():
    m = irblocks.create_model("restormer-tiny", refinement=0).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        ref = m(x)
        out = torch.compile(m)(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_latent_end_factory_without_out_dim_keeps_the_latent_reduction():
    from functools import partial
    m = irblocks.UNetRestorer(width=8, blocks=[1, 1, 1, 1], refinement=0, latent_reduce=True,
                              latent_end=partial(irblocks.GDFN, expansion=1.0))
    assert m.latent_reduce is not None and m.latent_reduce.out_channels == 32
    assert m(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
