"""Kernel 8: pattern-token semantic cross-attention (irblocks.kernels.pattern_sca).

Triton (interpreter, float32) vs reference: membership codes (exact), per-pattern
feature sums (forward and grad, every layout), attention forward and ALL backward
grads (dq, dk, dv) on odd/1-pixel/batch-1-and-3 shapes, padded (-inf) tokens,
non-contiguous queries. float32 tolerance: atol = rtol = 1e-4 (online softmax and
split-N dk/dv partial sums reorder the reductions: observed ~1e-6). float64
gradcheck on the reference. The SCA block gives the same output and grads through
both paths. float16 is not tested in the interpreter (the kernels compute in float32).
Head dims 48 / 96 (BLOCK_SIZE_D 64 / 128, multi-chunk head-dim loops), the GPU launch
configs = the compile table (tests/kernels/compile_specs.py), and the documented reference
fallback for head dims > 128.
"""
import math

import kutil
import pytest
import torch

from irblocks.guidance import Guidance
from irblocks.kernels import pattern_sca as ps

TOL = dict(atol=1e-4, rtol=1e-4)

# (B, heads, N, P, d)
ATTN_SHAPES = [(1, 2, 35, 5, 12), (3, 1, 9, 1, 8), (1, 4, 1, 3, 6), (3, 2, 13, 17, 24),
               (1, 1, 70, 40, 16)]


def _attn_inputs(shape, q_layout="contiguous", seed=0):
    b, h, n, p, d = shape
    g = torch.Generator().manual_seed(seed)
    if q_layout == "contiguous":
        q = torch.randn(b, h, n, d, generator=g)
    else:   # the SCA block's view: (B, N, h, d) transposed -> non-contiguous
        q = torch.randn(b, n, h, d, generator=g).transpose(1, 2)
    k = torch.randn(b, h, p, d, generator=g)
    v = torch.randn(b, h, p, d, generator=g)
    bias = torch.rand(b, p, generator=g) * 4
    if p > 1:
        bias[0, -1] = -math.inf          # a padding slot
    return q, k, v, bias


@pytest.mark.parametrize("shape", ATTN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("q_layout", ["contiguous", "transposed"])
def test_attention_triton_matches_reference(shape, q_layout, triton_interp):
    q, k, v, bias = _attn_inputs(shape, q_layout)
    scale = shape[-1] ** -0.5
    res = {}
    for impl in ("reference", "triton"):
        def fn(q_, k_, v_):
            return ps.pattern_attention(q_, k_, v_, bias, scale, impl=impl)
        res[impl] = kutil.grads(fn, [q.requires_grad_(), k.requires_grad_(), v.requires_grad_()])
    out_r, g_r = res["reference"]
    out_t, g_t = res["triton"]
    kutil.assert_close(out_t, out_r, msg="out", **TOL)
    for name, a, b in zip(("dq", "dk", "dv"), g_t, g_r):
        kutil.assert_close(a, b, msg=name, **TOL)


def test_attention_reference_gradcheck():
    q, k, v, bias = _attn_inputs((1, 2, 6, 3, 4))
    args = [t.double().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(
        lambda a, b_, c: ps.pattern_attention_reference(a, b_, c, bias.double(), 0.5),
                                    args)


def test_attention_bad_shapes():
    q, k, v, bias = _attn_inputs((1, 2, 6, 3, 4))
    with pytest.raises(ValueError, match="expected q"):
        ps.pattern_attention(q, k, v[:, :, :2], bias, 0.5)


@pytest.mark.parametrize("k", [0, 1, 5, 62])
def test_membership_codes(k, triton_interp):
    m = torch.rand(2, k, 7, 5) < 0.4
    ref = ps.membership_codes_reference(m)
    torch.testing.assert_close(ps.membership_codes(m, impl="triton"), ref)
    torch.testing.assert_close(ps.membership_codes(m.float(), impl="triton"), ref)
    if k:
        torch.testing.assert_close(ps.membership_codes(m.transpose(2, 3), impl="triton"),
                                   ps.membership_codes_reference(m.transpose(2, 3)))
    with pytest.raises(ValueError, match="at most 62"):
        ps.membership_codes(torch.zeros(1, 63, 2, 2))


@pytest.mark.parametrize("shape,layout", kutil.cases())
def test_pattern_tokens_triton_matches_reference(shape, layout, triton_interp):
    b, h, w = shape
    c = 6
    masks = torch.rand(b, 4, h, w) < 0.4
    src = kutil.make(b, c, h, w, layout, requires_grad=True)
    res = {}
    for impl in ("reference", "triton"):
        def fn(s, impl=impl):
            tok, bias, inv = ps.pattern_tokens(masks, s, impl=impl)
            res[impl + "_bias"], res[impl + "_inv"] = bias, inv
            return tok
        res[impl] = kutil.grads(fn, [src])
    kutil.assert_close(res["triton"][0], res["reference"][0], msg="tokens", **TOL)
    kutil.assert_close(res["triton"][1][0], res["reference"][1][0], msg="dsrc", **TOL)
    torch.testing.assert_close(res["triton_bias"], res["reference_bias"])
    torch.testing.assert_close(res["triton_inv"], res["reference_inv"])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_sca_block_same_through_both_paths(layout, triton_interp, monkeypatch):
    from irblocks.registry import build
    torch.manual_seed(0)
    blk = build("semantic_cross_attention", "block", dim=8).eval()
    masks = (torch.rand(2, 3, 10, 14) < 0.5).float()
    x = kutil.make(2, 8, 5, 7, layout, requires_grad=True)
    res = {}
    for impl in ("reference", "triton"):
        monkeypatch.setenv("IRBLOCKS_KERNELS", impl)
        blk.zero_grad()
        out, (dx,) = kutil.grads(lambda t: blk(t, Guidance({"prior.masks": masks})), [x])
        res[impl] = (out, dx, [p.grad.clone() for p in blk.parameters()])
    kutil.assert_close(res["triton"][0], res["reference"][0], msg="out", **TOL)
    kutil.assert_close(res["triton"][1], res["reference"][1], msg="dx", **TOL)
    kutil.assert_close(res["triton"][2], res["reference"][2], msg="param grads", **TOL)


def test_opcheck(triton_interp):
    q, k, v, bias = _attn_inputs((1, 2, 9, 3, 8))
    torch.library.opcheck(torch.ops.irblocks.pattern_attention.default,
                          (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), bias, 0.35),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))
    src = torch.randn(2, 3, 4, 5, requires_grad=True)
    inv = torch.randint(0, 3, (2, 20))
    torch.library.opcheck(torch.ops.irblocks.pattern_segment_sum.default, (src, inv, 3),
                          test_utils=("test_schema", "test_faketensor",
                                      "test_autograd_registration"))


def test_flop_formula(triton_interp):
    from torch.utils.flop_counter import FlopCounterMode
    q, k, v, bias = _attn_inputs((2, 2, 9, 3, 8))
    for impl in ("reference", "triton"):
        with FlopCounterMode(display=False) as fc:
            ps.pattern_attention(q, k, v, bias, 0.35, impl=impl)
        assert fc.get_total_flops() == 2 * 2 * 2 * 2 * 9 * 3 * 8, impl


_COMPILE_SCRIPT = """
import os, sys
from irblocks.kernels.report import compile_spec, discover
table = discover(sys.argv[1])["pattern_sca"]
assert len(table) == 26, len(table)   # 2 + 4 head-dim blocks x 3 kernels x 2 stride variants
specs = table if os.environ.get("IRBLOCKS_FULL_COMPILE") == "1" else \
    [s for s in table if s[2].get("BLOCK_SIZE_D") == 64]
for spec in specs:
    assert set(spec[2]) <= set(spec[1])
    k = compile_spec(spec, 90)
    assert k.metadata.shared <= 228 * 1024, (spec[0].fn.__name__, k.metadata.shared)
print("OK", len(specs))
"""


@pytest.mark.slow
def test_compile_sm90():
    """Real sm_90 code for the attention kernels at head-dim block 64 (all 26 compile-table
    entries with IRBLOCKS_FULL_COMPILE=1; registers/spills of every entry are checked by
    tests/kernels/test_compile_sm90.py); run in a subprocess because jit functions are
    interpreter objects once TRITON_INTERPRET=1 is set."""
    import os
    import subprocess
    import sys
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    from tests.kernels import compile_specs
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT, compile_specs.__file__], env=env,
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0 and "ptxas" in r.stderr.lower():
        pytest.skip("sm_90 toolchain (ptxas) unavailable")
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-2000:]


def test_gpu_launch_configs_are_the_compiled_specs(monkeypatch):
    """The block sizes / warps / stages the launcher uses on a GPU (interpreter off) for every
    head dim up to MAX_TRITON_HEAD_DIM are exactly the configs the compile table lists (which
    test_compile_sm90.py checks for zero spills)."""
    from tests.kernels.compile_specs import pattern_sca_specs
    monkeypatch.setenv("TRITON_INTERPRET", "0")      # block_size() reads it at call time
    compiled = {(s[0].__name__ if hasattr(s[0], "__name__") else s[0].fn.__name__,
                 tuple(sorted((k, v) for k, v in s[2].items() if "_stride_" not in k)),
                 tuple(sorted(s[3].items()))) for s in pattern_sca_specs(ps)[2:]}
    for d in range(1, ps.MAX_TRITON_HEAD_DIM + 1):
        bn, bp, bd, dc, opts = ps._blocks(d)
        const = tuple(sorted(dict(BLOCK_SIZE_N=bn, BLOCK_SIZE_P=bp, BLOCK_SIZE_D=bd,
                                  BLOCK_SIZE_DC=dc, INPUT_PRECISION=ps._GPU_PREC).items()))
        assert bd % dc == 0, (d, bd, dc)
        for name in ("_attn_fwd_kernel", "_attn_bwd_dq_kernel", "_attn_bwd_dkdv_kernel"):
            assert (name, const, tuple(sorted(opts.items()))) in compiled, (d, name, const, opts)


@pytest.mark.parametrize("d", [48, 96])
def test_attention_large_head_dims(d, triton_interp):
    """ClearAIR's widest levels (C = 192 / 384, 4 heads): BLOCK_SIZE_D = 64 / 128, the head-dim
    chunk loops run 3 / 6 times in the interpreter (16-wide chunks) and dk/dv span 4 / 8
    output-chunk programs per token block."""
    q, k, v, bias = _attn_inputs((2, 1, 19, 5, d), "transposed")
    scale = d ** -0.5
    res = {
        impl: kutil.grads(
            lambda a, b_, c, impl=impl: ps.pattern_attention(a, b_, c, bias, scale, impl=impl),
                          [t.detach().requires_grad_() for t in (q, k, v)])
           for impl in ("reference", "triton")}
    kutil.assert_close(res["triton"][0], res["reference"][0], msg="out", **TOL)
    for name, a, b in zip(("dq", "dk", "dv"), res["triton"][1], res["reference"][1]):
        kutil.assert_close(a, b, msg=name, **TOL)


def test_head_dim_above_max_falls_back_to_reference(triton_interp, monkeypatch):
    """Documented fallback: d > MAX_TRITON_HEAD_DIM (128) has no spill-free GPU config and
    takes the reference path even with impl="triton" (the Triton op is never called)."""
    def boom(*a, **k):
        raise AssertionError("Triton op called for a head dim above MAX_TRITON_HEAD_DIM")
    d = ps.MAX_TRITON_HEAD_DIM + 8
    q, k, v, bias = _attn_inputs((1, 2, 7, 3, d))
    ref = ps.pattern_attention_reference(q, k, v, bias, d ** -0.5)
    monkeypatch.setattr(ps, "_pattern_attention_op", boom)
    torch.testing.assert_close(ps.pattern_attention(q, k, v, bias, d ** -0.5, impl="triton"), ref)


def test_attention_float16(triton_interp):
    """float16 inputs: the kernels load and compute in float32 and cast the result; the
    reference runs the float16 matmuls on the CPU -> compare against a float32 reference."""
    q, k, v, bias = _attn_inputs((1, 2, 21, 6, 16))
    ref_out, ref_g = kutil.grads(
        lambda a, b_, c: ps.pattern_attention(a, b_, c, bias, 0.25, impl="reference"),
                                 [q.requires_grad_(), k.requires_grad_(), v.requires_grad_()])
    h = [t.detach().half().requires_grad_() for t in (q, k, v)]
    out, g = kutil.grads(lambda a, b_, c: ps.pattern_attention(a, b_, c, bias, 0.25, impl="triton"),
                         h)
    assert out.dtype == torch.float16 and all(t.dtype == torch.float16 for t in g)
    kutil.assert_close(out, ref_out, dtype=torch.float16, msg="out")
    for name, a, b in zip(("dq", "dk", "dv"), g, ref_g):
        kutil.assert_close(a, b, dtype=torch.float16, grad=True, msg=name)
