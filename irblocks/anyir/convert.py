"""Released AnyIR weights (Amazingren/AnyIR, commit 098dcd1) -> our ``unet_restorer``.

Official block keys ``<level>.<i>.attn.*`` land in our transformer block's
``attn`` (a ``degradation_adaptation`` mixer):

* ``temperature``, ``qkv``, ``qkv_dwconv``  -> ``attn.attn.*`` (MDTA without projection)
* ``gatedcnn.{tau, norm.*, W_exp, W_depth, W_gate, W_proj}`` -> ``attn.gate.{tau, norm.*, w_exp,
  ...}``
  (BatchNorm buffers included)
* ``lam``, ``project_out`` -> ``attn.fusion.*``
* ``reduce_dim_level3`` -> ``latent_reduce``; the rest follows the Restormer renames.
"""
from __future__ import annotations

import re

from torch import nn

from irblocks.convert import (
    ConversionError,
    load_mapped,
    map_unet_key,
    official_config,
    register_converter,
)

__all__ = ["ANYIR_DEFAULTS", "anyir_model_spec", "anyir_key"]

ANYIR_DEFAULTS = dict(inp_channels=3, out_channels=3, dim=28, num_blocks=[3, 5, 5, 7],
                      num_refinement_blocks=4, heads=[1, 2, 4, 8], ffn_expansion_factor=2,
                      bias=False, LayerNorm_type="WithBias")

_BLOCK_RULES = [
    (re.compile(r"^attn\.(temperature|qkv\.|qkv_dwconv\.)"), r"attn.attn.\1"),
    (re.compile(r"^attn\.gatedcnn\.W_(exp|depth|gate|proj)\."), r"attn.gate.w_\1."),
    (re.compile(r"^attn\.gatedcnn\.(tau$|norm\.)"), r"attn.gate.\1"),
    (re.compile(r"^attn\.(lam$|project_out\.)"), r"attn.fusion.\1"),
]


def _block_rename(rest: str) -> str:
    for pat, rep in _BLOCK_RULES:
        if pat.match(rest):
            return pat.sub(rep, rest, count=1)
    return rest


def anyir_key(key: str) -> str | None:
    """Official AnyIR state_dict key -> ours (None when it has no place)."""
    if key.startswith("reduce_dim_level3."):
        return "latent_reduce." + key[len("reduce_dim_level3."):]
    return map_unet_key(key, _block_rename)


def anyir_model_spec(cfg: dict) -> dict:
    """Our model spec for the official constructor kwargs (defaults filled in)."""
    bias = bool(cfg["bias"])
    return {"type": "unet_restorer", "in_channels": cfg["inp_channels"],
            "out_channels": cfg["out_channels"], "width": cfg["dim"],
            "blocks": list(cfg["num_blocks"]), "refinement": cfg["num_refinement_blocks"],
            "heads": list(cfg["heads"]), "bias": bias, "latent_reduce": True,
            "block": {"type": "transformer_block",
                      "norm": {"type": "layernorm",
                               "variant": "bias_free" if cfg["LayerNorm_type"] == "BiasFree"
                               else "with_bias"},
                      "mixer": {"type": "degradation_adaptation", "bias": bias},
                      "ffn": {"type": "gdfn", "expansion": float(cfg["ffn_expansion_factor"]),
                              "bias": bias}}}


@register_converter("anyir")
def _anyir(state_dict: dict, config: dict | None) -> nn.Module:
    from irblocks.registry import build
    cfg = official_config("anyir", config, ANYIR_DEFAULTS)
    model = build(anyir_model_spec(cfg), "model")
    mapped, unmapped = {}, []
    for k, v in state_dict.items():
        nk = anyir_key(k)
        (unmapped.append(k) if nk is None else mapped.__setitem__(nk, v))
    if unmapped:
        raise ConversionError(f"anyir: {len(unmapped)} official keys have no place in our model: "
                              f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}")
    return load_mapped(model, mapped, "anyir", unmapped)
