"""GDFN depthwise 3x3 + GELU gate: the compiled C kernel (CPU) vs the PyTorch reference; and
the build of the C library (cache, missing or failing compiler).

Tolerances: float32, relative to the largest magnitude, 1e-5 against the float64 reference
and against the float32 reference (observed ~3e-7: both differ from float64 by float
rounding; the kernel's erf is ATen's own vectorised form). The weight gradient sums over
every pixel, so it is compared the same way. Outputs of the C kernel are NaN-prefilled here
(tests/kernels/conftest.py), so an element it fails to write fails the comparison.
"""
import warnings

import pytest
import torch

import irblocks
from irblocks.kernels import _cpu_build, _dispatch
from irblocks.kernels import dwconv3x3 as dwconv3x3_module
from irblocks.kernels import dwconv_gelu_gate as gate_module
from irblocks.kernels.dwconv3x3 import LIBRARY
from irblocks.kernels.dwconv_gelu_gate import dwconv_gelu_gate, dwconv_gelu_gate_reference
from tests._compare import assert_rel_close, graph_node_names, rel_error
from tests.kernels.kutil import LAYOUTS, StreamSpy, grads, make

RTOL = 1e-5

pytestmark = pytest.mark.skipif(
    _cpu_build.load(LIBRARY) is None,
    reason=f"C kernel unavailable here: {_cpu_build.unavailable(LIBRARY)}")


def _inputs(b, c2, h, w, layout="channels_last", bias=True, scale=1.5, seed=0):
    torch.manual_seed(seed)
    p = make(b, c2, h, w, layout, requires_grad=True, scale=scale)
    weight = (torch.randn(c2, 1, 3, 3) * 0.4).requires_grad_()
    b_ = (torch.randn(c2) * 0.3).requires_grad_() if bias else None
    return [t for t in (p, weight, b_) if t is not None]


def _run(impl, inputs, dtype=torch.float32):
    cast = [t.detach().to(dtype).requires_grad_() for t in inputs]
    if len(cast) == 3:
        return grads(lambda p, w, b: dwconv_gelu_gate(p, w, b, impl=impl), cast)
    return grads(lambda p, w: dwconv_gelu_gate(p, w, impl=impl), cast)


def _check(inputs):
    out_c, g_c = _run("cpu", inputs)
    out_r, g_r = _run("reference", inputs)
    out_64, g_64 = _run("reference", inputs, torch.float64)
    if _dispatch.out_format(inputs[0]) == torch.channels_last:        # the C kernel ran
        assert out_c.is_contiguous(memory_format=torch.channels_last)
    names = ["out", "dp", "dweight", "dbias"][:1 + len(g_c)]
    assert_rel_close(names, [out_c, *g_c], [out_64, *g_64], RTOL)         # vs float64
    assert_rel_close(names, [out_c, *g_c], [out_r, *g_r], RTOL)           # vs float32 reference


@pytest.mark.parametrize("shape", [(1, 5, 7), (3, 1, 9), (1, 6, 1), (2, 4, 4), (1, 13, 70)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("c2", [2, 10, 34, 130])
def test_matches_reference(shape, c2):
    # 34 and 130: channel counts that are not a multiple of 16 (vector tails); W = 70: three
    # column tiles of the backward; 1-pixel-high and -wide maps: every tap at the border
    b, h, w = shape
    _check(_inputs(b, c2, h, w))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_layout_and_no_bias(layout):
    _check(_inputs(2, 12, 5, 6, layout=layout, bias=False))


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
def test_thread_counts_split_rows_inside_images(threads):
    # B * H = 7 rows over 3 or 5 threads: bands start inside an image and recompute the rows
    # beside them; weight sums are added across bands
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(_inputs(1, 18, 7, 5))
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("c2, streamed", [(64, 1), (34, 1), (64, 0)])
@pytest.mark.parametrize("threads", [1, 3])
def test_streamed_input_gradient_is_the_plain_one(monkeypatch, c2, streamed, threads):
    # from STREAM_MIN_BYTES on, dp goes out with non-temporal stores (2C a multiple of 16;
    # 34 keeps plain stores inside the kernel): bitwise the same values, every element
    # written (NaN-prefilled outputs), the flag reaches the kernel
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    inputs = _inputs(2, c2, 9, 70)
    out_plain, g_plain = _run("cpu", inputs)
    spy = StreamSpy(gate_module.library(), "dwconv_gelu_gate_backward")
    monkeypatch.setattr(gate_module, "library", spy)
    monkeypatch.setattr(dwconv3x3_module, "STREAM_MIN_BYTES", 0 if streamed else 1 << 40)
    out, g = _run("cpu", inputs)
    assert spy.streams == [streamed]
    for a, b in zip([out, *g], [out_plain, *g_plain]):
        assert torch.equal(a, b)


def test_saturated_and_tiny_inputs():
    # |z| up to ~60: erf saturates and exp underflows (the kernel clamps at exp(-87))
    _check(_inputs(2, 8, 4, 5, scale=40.0))
    _check(_inputs(2, 8, 4, 5, scale=1e-3))


def test_empty_maps():
    p = torch.zeros(0, 4, 3, 3, requires_grad=True)
    weight = torch.randn(4, 1, 3, 3, requires_grad=True)
    out = dwconv_gelu_gate(p, weight, impl="cpu")
    assert out.shape == (0, 2, 3, 3)
    out.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))


def test_gradcheck_reference_float64():
    p, weight, bias = [t.detach().double().requires_grad_() for t in _inputs(1, 4, 3, 4)]
    assert torch.autograd.gradcheck(dwconv_gelu_gate_reference, (p, weight, bias))


def test_dispatcher_picks_the_c_kernel(monkeypatch):
    monkeypatch.delenv(_dispatch.ENV, raising=False)
    x = torch.randn(1, 4, 3, 3)
    assert _dispatch.select(None, x, cpu_kernel=LIBRARY) == "cpu"
    assert _dispatch.select(None, x) == "reference"               # ops without a C kernel
    assert _dispatch.select("cpu", x) == "reference"
    assert _dispatch.select("reference", x, cpu_kernel=LIBRARY) == "reference"
    p, weight, bias = _inputs(1, 6, 4, 4)
    assert type(dwconv_gelu_gate(p, weight, bias).grad_fn).__name__.startswith("_DwconvGelu")
    block = irblocks.set_execution(irblocks.GDFN(4, expansion=2.0), "fast")
    y = block(torch.randn(1, 4, 5, 5).contiguous(memory_format=torch.channels_last))
    assert any(name.startswith("_DwconvGelu") for name in graph_node_names(y))


def test_reference_where_the_c_kernel_does_not_apply():
    p, weight, bias = _inputs(1, 6, 4, 4)
    # float64, vmap (ClusIR's experts run GDFNs under torch.func.vmap): reference, same values
    out64 = dwconv_gelu_gate(p.double(), weight.double(), bias.double())
    assert out64.dtype == torch.float64 and out64.grad_fn is not None
    ps = torch.stack([p.detach(), p.detach() * 2])
    vm = torch.func.vmap(lambda q: dwconv_gelu_gate(q, weight.detach(), bias.detach()))(ps)
    ref = dwconv_gelu_gate_reference(ps.flatten(0, 1), weight.detach(), bias.detach())
    assert rel_error(vm.flatten(0, 1), ref) < RTOL


def test_grad_of_grad_matches_reference():
    # create_graph=True (gradient penalties): the C kernel's backward hands over to the
    # reference's differentiable formulation
    def second_order(impl):
        p, weight, bias = [t.detach().requires_grad_() for t in _inputs(1, 6, 4, 3)]
        out = dwconv_gelu_gate(p, weight, bias, impl=impl)
        (g,) = torch.autograd.grad(out.square().sum(), p, create_graph=True)
        g.square().sum().backward()
        return [g, p.grad, weight.grad, bias.grad]

    for a, r in zip(second_order("cpu"), second_order("reference")):
        assert rel_error(a, r) < RTOL


def test_shape_errors():
    with pytest.raises(ValueError, match=r"even channel count, got \(1, 3, 2, 2\)"):
        dwconv_gelu_gate(torch.randn(1, 3, 2, 2), torch.randn(3, 1, 3, 3))
    with pytest.raises(ValueError, match=r"\(4, 1, 3, 3\) for 4 channels, got \(4, 1, 5, 5\)"):
        dwconv_gelu_gate(torch.randn(1, 4, 2, 2), torch.randn(4, 1, 5, 5))
    with pytest.raises(ValueError, match=r"bias of shape \(4,\), got \(3,\)"):
        dwconv_gelu_gate(torch.randn(1, 4, 2, 2), torch.randn(4, 1, 3, 3), torch.randn(3))


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty build cache and a cleared loader (restored afterwards)."""
    monkeypatch.setenv(_cpu_build.CACHE_ENV, str(tmp_path))
    _cpu_build.load.cache_clear()
    _cpu_build._REASONS.clear()
    monkeypatch.setattr(_dispatch, "_WARNED", set())
    yield tmp_path
    _cpu_build.load.cache_clear()
    _cpu_build._REASONS.clear()


def test_build_is_cached_and_keyed_by_source(fresh_build):
    assert _cpu_build.load(LIBRARY) is not None
    built = list((fresh_build / "cpu_kernels").glob(f"{LIBRARY}-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    _cpu_build.load.cache_clear()
    assert _cpu_build.load(LIBRARY) is not None
    assert built[0].stat().st_mtime_ns == stamp                     # reused, not rebuilt
    assert not list((fresh_build / "cpu_kernels").glob(".*"))       # no temporary files left


def test_no_compiler_falls_back_with_one_warning(fresh_build, monkeypatch):
    monkeypatch.setattr(_cpu_build, "_compiler", lambda: None)
    monkeypatch.delenv(_dispatch.ENV, raising=False)
    p, weight, bias = _inputs(1, 6, 4, 4)
    with pytest.warns(RuntimeWarning, match="unavailable \\(no C compiler found"):
        out = dwconv_gelu_gate(p, weight, bias)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                               # warned once only
        dwconv_gelu_gate(p, weight, bias)
    assert rel_error(out, dwconv_gelu_gate_reference(p, weight, bias)) == 0
    with pytest.raises(RuntimeError, match="impl='cpu' was forced .* no C compiler found"):
        dwconv_gelu_gate(p, weight, bias, impl="cpu")


def test_compiler_error_is_one_line(fresh_build, monkeypatch, tmp_path):
    fake = tmp_path / "fakecc"
    fake.write_text("#!/bin/sh\necho 'fakecc: error: unsupported option' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert _cpu_build.load(LIBRARY) is None
    reason = _cpu_build.unavailable(LIBRARY)
    assert reason == f"fakecc failed on {LIBRARY}.c: fakecc: error: unsupported option"
    assert not list((fresh_build / "cpu_kernels").glob("*"))         # nothing half-written


@pytest.mark.parametrize("dim,expansion,bias", [(6, 2.66, True), (6, 2.66, False),
                                                (8, 2.0, True), (24, 1.0, False)])
@pytest.mark.parametrize("padded", [True, False])
def test_gdfn_padded_hidden_matches_the_official_form(dim, expansion, bias, padded,
                                                      monkeypatch):
    """GDFN's C path pads the hidden width h to a multiple of HIDDEN_MULTIPLE with zero
    channels from PAD_MIN_PIXELS pixels on (here forced to 0, or left at its default above the
    test's 234 pixels); output, input gradient and every parameter's gradient equal the
    official form's (chunk + F.gelu on the unpadded weights) to RTOL (float32, the C path)."""
    from irblocks import gdfn
    from irblocks.gdfn import GDFN, HIDDEN_MULTIPLE
    if padded:
        monkeypatch.setattr(gdfn, "PAD_MIN_PIXELS", 0)
    multiples = []
    real = GDFN.padded_weights
    monkeypatch.setattr(GDFN, "padded_weights",
                        lambda self, m=HIDDEN_MULTIPLE: multiples.append(m) or real(self, m))
    torch.manual_seed(0)
    block = GDFN(dim, expansion=expansion, bias=bias)
    for p in block.parameters():                      # biases too: a wrong pad would show
        torch.nn.init.normal_(p, std=0.5)
    in_w, in_b, dw_w, dw_b, out_w = block.padded_weights()
    hp = -(-block.hidden // HIDDEN_MULTIPLE) * HIDDEN_MULTIPLE
    assert in_w.shape[0] == dw_w.shape[0] == 2 * hp and out_w.shape[1] == hp
    assert (in_b is None) == (dw_b is None) == (not bias)
    x = torch.randn(2, dim, 9, 13).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn(2, dim, 9, 13)
    results = []
    for style in ("fast", "official"):
        irblocks.set_execution(block, style)
        block.zero_grad(set_to_none=True)
        x.grad = None
        y = block(x)
        if style == "fast":
            assert "_DwconvGeluGateCpuBackward" in graph_node_names(y)
        y.backward(g)
        results.append([y.detach(), x.grad] + [p.grad for p in block.parameters()])
    names = ["out", "x"] + [n for n, _ in block.named_parameters()]
    assert_rel_close(names, *results, RTOL)
    # the shape check above, then the fast forward: padded, or the weights themselves
    assert multiples == [HIDDEN_MULTIPLE, HIDDEN_MULTIPLE if padded else 1]
