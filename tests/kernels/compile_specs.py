"""sm_90 compile table: the GPU configurations of every Triton kernel in ``irblocks.kernels``.

``tests/kernels/test_compile_sm90.py`` compiles each entry for an H100 on this GPU-less machine
and fails on register spills; ``python -m irblocks.kernels.report`` prints registers and spills
from a source checkout (it reads this file). An entry is ``(jit_fn, signature, constexprs)`` or
``(jit_fn, signature, constexprs, options)`` with ``options`` passed to ``triton.compile``
(e.g. ``{"num_warps": 8}``). The block sizes must be the ones the kernel module launches with
on a GPU (``_dispatch.block_size(gpu=...)``); signatures name the kernel's arguments in order.

``SPECS`` maps each kernel module name to a function of the imported module returning its
entries. A new kernel file adds one function here listing every launched kernel (jit functions
named ``*_kernel``; ``test_every_kernel_module_has_compile_specs`` fails until it does).
"""
from __future__ import annotations

import importlib

_AXES = ("batch", "channel", "height", "width")


def _strides(*tensors: str) -> dict:
    """Signature entries ``<t>_stride_<axis>`` (i32) of (B, C, H, W) tensors, in order."""
    return {f"{t}_stride_{a}": "i32" for t in tensors for a in _AXES}


def _unit_strides(axis: str, *tensors: str) -> dict:
    """The runtime's ==1 specialisation: stride ``axis`` of these tensors is the constant 1
    (NCHW -> ``width``, channels_last -> ``channel``)."""
    return {f"{t}_stride_{axis}": 1 for t in tensors}


def anyir_fusion_specs(m) -> list:
    _GPU_BLOCK = 1024
    sizes = {"height": "i32", "width": "i32"}
    return [
        (m._fusion_fwd_kernel,
         {"a_ptr": "*fp32", "g_ptr": "*fp32", "lam_ptr": "*fp32", "out_ptr": "*fp32",
          "out_channels": "i32", "in_channels": "i32", **sizes, **_strides("a", "g", "out"),
          "BLOCK_SIZE": "constexpr"},
         {"BLOCK_SIZE": _GPU_BLOCK}),
        (m._fusion_bwd_kernel,
         {"a_ptr": "*fp32", "g_ptr": "*fp32", "lam_ptr": "*fp32", "dout_ptr": "*fp32",
          "da_ptr": "*fp32", "dg_ptr": "*fp32", "dlam_partial_ptr": "*fp32",
          "in_channels": "i32", **sizes, "num_pixel_blocks": "i32",
          **_strides("a", "g", "dout", "da", "dg"), "BLOCK_SIZE": "constexpr"},
         {"BLOCK_SIZE": _GPU_BLOCK}),
    ]


def fsb_filter_specs(m) -> list:
    sizes = {"channels": "i32", "height": "i32", "width": "i32", "channels_per_group": "i32"}
    weight_strides = {f"weight_stride_{a}": "i32" for a in ("batch", "group", "tap")}
    consts = {"KERNEL_SIZE": "constexpr", "BLOCK_SIZE": "constexpr"}
    fwd = {"x_ptr": "*fp32", "weight_ptr": "*fp32", "y_ptr": "*fp32", **sizes, **_strides("x"),
           **weight_strides, **_strides("y"), **consts}
    bwd = {"x_ptr": "*fp32", "weight_ptr": "*fp32", "dy_ptr": "*fp32", "dx_ptr": "*fp32",
           "dweight_ptr": "*fp32", **sizes, **_strides("x"), **weight_strides,
           **_strides("dy", "dx"), "groups": "i32", **consts}
    return [(m._fsb_fwd_kernel, fwd, {"KERNEL_SIZE": 3, "BLOCK_SIZE": 512}),
            (m._fsb_bwd_kernel, bwd, {"KERNEL_SIZE": 3, "BLOCK_SIZE": 512})]


def gated_da_stats_specs(m) -> list:
    sizes = {"channels": "i32", "alpha_channels": "i32", "height": "i32", "width": "i32",
             "num_planes": "i32"}
    return [
        (m._gda_fwd_kernel,
         {"f_ptr": "*fp32", "alpha_ptr": "*fp32", "tau_ptr": "*fp32", "out_ptr": "*fp32",
          "stats_ptr": "*fp32", **sizes, "eps": "fp32", **_strides("f", "alpha", "out"),
          "BLOCK_SIZE": "constexpr"},
         {"BLOCK_SIZE": 1024}),
        (m._gda_bwd_kernel,
         {"f_ptr": "*fp32", "alpha_ptr": "*fp32", "tau_ptr": "*fp32", "stats_ptr": "*fp32",
          "dout_ptr": "*fp32", "df_ptr": "*fp32", "dalpha_ptr": "*fp32",
          "dtau_partial_ptr": "*fp32", **sizes,
          **_strides("f", "alpha", "dout", "df", "dalpha"), "BLOCK_SIZE": "constexpr"},
         {"BLOCK_SIZE": 1024}),
    ]


def haar_dwt_specs(m) -> list:
    def strides(t):
        return {f"{t}_stride_{a}": "i32" for a in ("batch", "channel", "height", "width")}

    _SIG = {"x_ptr": "*fp32", "y_ptr": "*fp32", "channels": "i32", "out_height": "i32",
            "out_width": "i32", "num_outputs": "i32", **strides("x"), **strides("y"),
            "BLOCK_SIZE": "constexpr"}
    _ISIG = {"y_ptr": "*fp32", "x_ptr": "*fp32", "channels": "i32", "in_height": "i32",
             "in_width": "i32", "num_inputs": "i32", **strides("y"), **strides("x"),
             "BLOCK_SIZE": "constexpr"}
    return [(m._haar_dwt_kernel, _SIG, {"BLOCK_SIZE": 1024}),
            (m._haar_idwt_kernel, _ISIG, {"BLOCK_SIZE": 1024})]


def layernorm_specs(m) -> list:
    """GPU configs: C = 48 (Restormer level 1) and 384 (latent); NCHW (w stride 1) and
    channels_last (c stride 1) flat layouts, as the runtime's ==1 specialisation sees them."""
    fwd_sig = {"x_ptr": "*fp32", "weight_ptr": "*fp32", "bias_ptr": "*fp32", "y_ptr": "*fp32",
               "channels": "i32", "num_pixels": "i32", "width": "i32", **_strides("x", "y"),
               "eps": "fp32", "HAS_BIAS": "constexpr", "FLAT_PIXELS": "constexpr",
               "BLOCK_SIZE_P": "constexpr", "BLOCK_SIZE_C": "constexpr"}
    bwd_sig = {"dy_ptr": "*fp32", "x_ptr": "*fp32", "weight_ptr": "*fp32", "dx_ptr": "*fp32",
               "dweight_partial_ptr": "*fp32", "dbias_partial_ptr": "*fp32", "channels": "i32",
               "num_pixels": "i32", "width": "i32", **_strides("dy", "x", "dx"), "eps": "fp32",
               "HAS_BIAS": "constexpr", "FLAT_PIXELS": "constexpr",
               "BLOCK_SIZE_P": "constexpr", "BLOCK_SIZE_C": "constexpr"}
    specs = []
    for bias in (True, False):
        for c, bc in ((48, 64), (384, 512)):
            for axis in ("width", "channel"):   # the unit stride: NCHW -> W, channels_last -> C
                ones = _unit_strides(axis, "x", "y")
                specs.append(
                    (m._ln_fwd_kernel, {**fwd_sig, **{k: "constexpr" for k in ones}},
                     {"HAS_BIAS": bias, "FLAT_PIXELS": True,
                      "BLOCK_SIZE_P": max(1, min(256, 4096 // bc)), "BLOCK_SIZE_C": bc, **ones}))
                ones = _unit_strides(axis, "dy", "x", "dx")
                specs.append(
                    (m._ln_bwd_kernel, {**bwd_sig, **{k: "constexpr" for k in ones}},
                     {"HAS_BIAS": bias, "FLAT_PIXELS": True,
                      "BLOCK_SIZE_P": max(1, min(256, 2048 // bc)), "BLOCK_SIZE_C": bc, **ones}))
    # the non-flat fallback (H and W strides do not merge, e.g. a W-crop view), generic strides
    specs.append(
        (m._ln_fwd_kernel, dict(fwd_sig),
         {"HAS_BIAS": True, "FLAT_PIXELS": False, "BLOCK_SIZE_P": 64, "BLOCK_SIZE_C": 64}))
    return specs


def gdfn_gate_specs(m) -> list:
    """GPU configs for NCHW (w stride 1) and channels_last (c stride 1) flat layouts, as the
    runtime's ==1 specialisation sees them; float32 and float16."""
    tiles = {"FLAT_PIXELS": "constexpr", "BLOCK_SIZE_P": "constexpr",
             "BLOCK_SIZE_C": "constexpr"}
    sizes = {"channels": "i32", "num_pixels": "i32", "width": "i32"}
    specs = []
    for axis in ("width", "channel"):   # the unit stride: NCHW -> W, channels_last -> C
        for dt, bp, bc in (("fp32", 32, 64), ("fp16", 16, 128)):
            blocks = {"FLAT_PIXELS": True, "BLOCK_SIZE_P": bp, "BLOCK_SIZE_C": bc}
            ones = _unit_strides(axis, "x", "y")
            fwd = {"x_ptr": f"*{dt}", "y_ptr": f"*{dt}", **sizes, **_strides("x", "y"), **tiles,
                   **{k: "constexpr" for k in ones}}
            specs.append((m._gate_fwd_kernel, fwd, {**blocks, **ones}))
            ones = _unit_strides(axis, "dy", "x", "dx")
            bwd = {"dy_ptr": f"*{dt}", "x_ptr": f"*{dt}", "dx_ptr": f"*{dt}", **sizes,
                   **_strides("dy", "x", "dx"), **tiles, **{k: "constexpr" for k in ones}}
            specs.append((m._gate_bwd_kernel, bwd, {**blocks, **ones}))
    specs.append(
        (m._gate_fwd_kernel,
         {"x_ptr": "*fp32", "y_ptr": "*fp32", **sizes, **_strides("x", "y"), **tiles},
         {"FLAT_PIXELS": False, "BLOCK_SIZE_P": 32, "BLOCK_SIZE_C": 64}))   # non-flat fallback
    return specs


def mdta_specs(m) -> list:
    """GPU configs per padded head dim, for NCHW (w stride 1) and channels_last (c stride 1)
    flat layouts as the runtime's ==1 specialisation sees them."""
    specs = []
    sizes = {"head_dim": "i32", "heads": "i32", "num_pixels": "i32", "width": "i32"}
    common = {"FLAT_PIXELS": "constexpr", "BLOCK_SIZE_D": "constexpr",
              "BLOCK_SIZE_N": "constexpr", "INPUT_PRECISION": "constexpr"}
    gram_args = {"x_ptr": "*fp32", "y_ptr": "*fp32", "gram_ptr": "*fp32", "x_sumsq_ptr": "*fp32",
                 "y_sumsq_ptr": "*fp32", **sizes, "pixels_per_split": "i32",
                 "num_splits": "i32"}

    def strides(tensors, axis):
        ones = _unit_strides(axis, *tensors)
        return {**_strides(*tensors), **{k: "constexpr" for k in ones}}, ones

    for block_d in (16, 32, 64):
        gram_n, apply_n, bwd_n, warps = m._GPU_TILES[block_d]
        opts = {"num_warps": warps}
        for axis in ("width", "channel"):   # the unit stride: NCHW -> W, channels_last -> C
            for with_sumsq in (True, False):
                sig, ones = strides(("x", "y"), axis)
                specs.append(
                    (m._gram_kernel,
                     {**gram_args, **sig, "WITH_SUMSQ": "constexpr", **common},
                     {"WITH_SUMSQ": with_sumsq, "FLAT_PIXELS": True, "BLOCK_SIZE_D": block_d,
                      "BLOCK_SIZE_N": gram_n, "INPUT_PRECISION": m._GPU_PREC, **ones}, opts))
            sig, ones = strides(("v", "out"), axis)
            specs.append(
                (m._apply_kernel,
                 {"attn_ptr": "*fp32", "v_ptr": "*fp32", "out_ptr": "*fp32", **sizes, **sig,
                  **common},
                 {"FLAT_PIXELS": True, "BLOCK_SIZE_D": block_d, "BLOCK_SIZE_N": apply_n,
                  "INPUT_PRECISION": m._GPU_PREC, **ones}, opts))
            sig, ones = strides(("q", "k", "dq", "dk"), axis)
            specs.append(
                (m._bwd_apply_kernel,
                 {**{p: "*fp32" for p in ("q_ptr", "k_ptr", "dq_from_k_ptr", "dq_scale_ptr",
                                          "dk_from_q_ptr", "dk_scale_ptr", "dq_ptr", "dk_ptr")},
                  **sizes, **sig, **common},
                 {"FLAT_PIXELS": True, "BLOCK_SIZE_D": block_d, "BLOCK_SIZE_N": bwd_n,
                  "INPUT_PRECISION": m._GPU_PREC, **ones},
                 opts))
    gram_n, _, _, warps = m._GPU_TILES[64]   # non-flat fallback (W-crop views), generic strides
    specs.append(
        (m._gram_kernel,
         {**gram_args, **_strides("x", "y"), "WITH_SUMSQ": "constexpr", **common},
         {"WITH_SUMSQ": True, "FLAT_PIXELS": False, "BLOCK_SIZE_D": 64, "BLOCK_SIZE_N": gram_n,
          "INPUT_PRECISION": m._GPU_PREC},
         {"num_warps": warps}))
    return specs


def pattern_sca_specs(m) -> list:
    _F = "*fp32"
    specs = [
        (m._codes_kernel,
         {"masks_ptr": "*u8", "codes_ptr": "*i64", "num_masks": "i32", "num_pixels": "i32",
          "masks_stride_batch": "i32", "masks_stride_mask": "i32", "masks_stride_pixel": "i32",
          "BLOCK_SIZE": "constexpr"},
         {"BLOCK_SIZE": 1024}),
        (m._segment_sum_kernel,
         {"x_ptr": _F, "pattern_index_ptr": "*i64", "sums_ptr": _F, "num_pixels": "i32",
          "channels": "i32", "num_patterns": "i32", "x_stride_batch": "i32",
          "x_stride_pixel": "i32", "x_stride_channel": "i32",
          "BLOCK_SIZE_N": "constexpr", "BLOCK_SIZE_C": "constexpr"},
         {"BLOCK_SIZE_N": 128, "BLOCK_SIZE_C": 32}),
    ]
    _sizes = {"num_pixels": "i32", "num_tokens": "i32", "heads": "i32", "head_dim": "i32",
              "scale": "fp32"}
    _attn_sig = {**{f"{t}_stride_{a}": "i32" for t in "qkv"
                    for a in ("batch", "head", "pixel" if t == "q" else "token", "dim")},
                 "bias_stride_batch": "i32", "bias_stride_token": "i32",
                 "BLOCK_SIZE_N": "constexpr", "BLOCK_SIZE_P": "constexpr",
                 "BLOCK_SIZE_D": "constexpr", "BLOCK_SIZE_DC": "constexpr",
                 "INPUT_PRECISION": "constexpr"}
    _fwd = {"q_ptr": _F, "k_ptr": _F, "v_ptr": _F, "bias_ptr": _F, "out_ptr": _F, "lse_ptr": _F,
            **_sizes, **_attn_sig}
    _dq = {"q_ptr": _F, "k_ptr": _F, "v_ptr": _F, "bias_ptr": _F, "dout_ptr": _F, "lse_ptr": _F,
           "delta_ptr": _F, "dq_ptr": _F, **_sizes, **_attn_sig}
    _dkdv = {"q_ptr": _F, "k_ptr": _F, "v_ptr": _F, "bias_ptr": _F, "dout_ptr": _F,
             "lse_ptr": _F, "delta_ptr": _F, "dk_partial_ptr": _F, "dv_partial_ptr": _F,
             **_sizes, "pixels_per_chunk": "i32", **_attn_sig}
    # the SCA block's layout: q/k/v head-dim stride 1 and bias token stride 1, which the
    # launcher's ==1 integer specialisation turns into constants (different code than generic)
    _UNIT = ("q_stride_dim", "k_stride_dim", "v_stride_dim", "bias_stride_token")

    def _attn_specs():
        specs = []
        # head dims 12/24/48/96 of ClearAIR
        for bd, (bn, bp, dc, warps, stages) in m._GPU_TILES.items():
            const = {"BLOCK_SIZE_N": bn, "BLOCK_SIZE_P": bp, "BLOCK_SIZE_D": bd,
                     "BLOCK_SIZE_DC": min(dc, bd), "INPUT_PRECISION": m._GPU_PREC}
            opts = {"num_warps": warps, "num_stages": stages}
            for fn, sig in ((m._attn_fwd_kernel, _fwd), (m._attn_bwd_dq_kernel, _dq),
                            (m._attn_bwd_dkdv_kernel, _dkdv)):
                specs.append((fn, dict(sig), dict(const), dict(opts)))  # generic strides
                specs.append((fn, {k: ("constexpr" if k in _UNIT else t) for k, t in sig.items()},
                              {**const, **{k: 1 for k in _UNIT}}, dict(opts)))  # unit strides
        return specs

    return specs + _attn_specs()


SPECS = {"anyir_fusion": anyir_fusion_specs, "fsb_filter": fsb_filter_specs,
         "gated_da_stats": gated_da_stats_specs, "gdfn_gate": gdfn_gate_specs,
         "haar_dwt": haar_dwt_specs, "layernorm": layernorm_specs, "mdta": mdta_specs,
         "pattern_sca": pattern_sca_specs}


def compile_specs() -> dict[str, list]:
    """{kernel module name: its entries}; empty when Triton is not importable."""
    from irblocks.kernels import _dispatch
    if not _dispatch.triton_available():
        return {}
    return {name: fn(importlib.import_module(f"irblocks.kernels.{name}"))
            for name, fn in SPECS.items()}
