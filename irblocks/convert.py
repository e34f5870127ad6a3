"""Official checkpoints -> irblocks models.

``from_official(arch, state_dict, config=None)`` builds our model for the
official constructor kwargs ``config`` (official defaults when None) and loads
the official state_dict (official key names) into it, strictly: every official
tensor must land somewhere (except documented never-used layers) and every one
of ours must be filled.

Converters register per architecture with :func:`register_converter`; the
U-Net-level renames shared by the Restormer family live in
:func:`map_unet_key`. Checkpoint files are read with safetensors or
``torch.load(weights_only=True)``; anything needing arbitrary unpickling is
refused.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from irblocks.checkpoint import CheckpointError, as_path, check_state_dict, read_tensors

__all__ = ["register_converter", "from_official", "converters", "map_unet_key",
           "load_official_checkpoint", "convert_file", "ConversionError", "load_mapped",
           "official_config"]


class ConversionError(CheckpointError):
    """An official checkpoint that does not fit the architecture (one line; a CheckpointError)."""


_CONVERTERS: dict[str, Callable[[dict, dict | None], nn.Module]] = {}


def register_converter(arch: str):
    """Decorator: ``fn(state_dict, config) -> nn.Module`` converting official weights of
    ``arch``."""
    def deco(fn):
        if arch in _CONVERTERS and _CONVERTERS[arch] is not fn:
            raise ValueError(f"a converter for {arch!r} is already registered "
                             f"({_CONVERTERS[arch].__module__})")
        _CONVERTERS[arch] = fn
        return fn
    return deco


def converters() -> list[str]:
    from irblocks.registry.plugins import ensure_loaded
    ensure_loaded()                  # the built-in files register their converters
    return sorted(_CONVERTERS)


def from_official(arch: str, state_dict: Mapping[str, torch.Tensor],
                  config: dict | None = None) -> nn.Module:
    """Build our model for the official kwargs ``config`` and load the official ``state_dict``.

    ``state_dict`` is a mapping of official parameter names to tensors (read files with
    :func:`load_official_checkpoint`, or convert a file with :func:`convert_file`); a path
    or anything else is a one-line ConversionError saying so.
    """
    if isinstance(state_dict, (str, os.PathLike)):
        raise ConversionError(f"from_official: state_dict must be a mapping of names to tensors, "
                              f"got the path {str(state_dict)!r}; use from_official({arch!r}, "
                              f"load_official_checkpoint(path)) or convert_file")
    if not isinstance(state_dict, Mapping):
        raise ConversionError(f"from_official: state_dict must be a mapping of names to tensors, "
                              f"got {type(state_dict).__name__}")
    bad = next(((k, v) for k, v in state_dict.items() if not isinstance(k, str)
                or (not k.startswith("__") and not isinstance(v, torch.Tensor))), None)
    if bad is not None:
        raise ConversionError(f"from_official: state_dict must map names (str) to tensors, got "
                              f"{bad[0]!r}: {type(bad[1]).__name__}")
    if config is not None and not isinstance(config, Mapping):
        raise ConversionError(f"from_official: config must be a mapping of official constructor "
                              f"arguments or None, got {type(config).__name__}")
    convert = _converter(arch)
    # parity files carry __input__
    sd = {k: v for k, v in state_dict.items() if not k.startswith("__")}
    return convert(sd, dict(config) if config else None)


def _converter(arch: str) -> Callable:
    """The converter of ``arch``, or a one-line ConversionError with a suggestion."""
    names = converters()
    if arch not in _CONVERTERS:
        import difflib
        hint = difflib.get_close_matches(arch, names, n=2)
        raise ConversionError("no converter for "
                              f"{arch!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                              + f" (available: {', '.join(names)})")
    return _CONVERTERS[arch]


# ----------------------------------------------------------------------------- shared renames
_LEVEL_RULES = [
    (r"^encoder_level([123])\.(\d+)\.", lambda m: f"encoders.{int(m[1]) - 1}.blocks.{m[2]}."),
    (r"^latent\.(\d+)\.", lambda m: f"latent.blocks.{m[1]}."),
    (r"^decoder_level([123])\.(\d+)\.", lambda m: f"decoders.{3 - int(m[1])}.blocks.{m[2]}."),
    (r"^refinement\.(\d+)\.", lambda m: f"refinement.blocks.{m[1]}."),
    (r"^down1_2\.", lambda m: "downs.0."), (r"^down2_3\.", lambda m: "downs.1."),
    (r"^down3_4\.", lambda m: "downs.2."), (r"^up4_3\.", lambda m: "ups.0."),
    (r"^up3_2\.", lambda m: "ups.1."), (r"^up2_1\.", lambda m: "ups.2."),
    (r"^reduce_chan_level3\.", lambda m: "reduces.0."),
    (r"^reduce_chan_level2\.", lambda m: "reduces.1."),
    (r"^patch_embed\.", lambda m: "patch_embed."), (r"^output\.", lambda m: "output."),
]
_IN_BLOCK = re.compile(r"\.(norm[12])\.body\.")


def map_unet_key(key: str, block_rename: Callable[[str], str] | None = None) -> str | None:
    """Official Restormer-family key -> our key (None when no rule applies).

    ``block_rename`` rewrites the part inside a transformer block (after
    ``...blocks.N.``) for architectures whose blocks differ from Restormer's.
    """
    for pat, rep in _LEVEL_RULES:
        m = re.match(pat, key)
        if m:
            head = rep(m)
            rest = key[m.end():]
            if ".blocks." in head or head.startswith("latent.") or head.startswith("refinement."):
                rest = _IN_BLOCK.sub(r".\1.", "." + rest)[1:]
                if block_rename is not None:
                    rest = block_rename(rest)
            return head + rest
    return None


def load_mapped(model: nn.Module, mapped: dict[str, torch.Tensor], arch: str,
                unmapped: list[str]) -> nn.Module:
    """Strictly load ``mapped`` into ``model``; one clear line for any mismatch."""
    if unmapped:
        raise ConversionError(f"{arch}: {len(unmapped)} official keys have no place in our model "
                              f"(e.g. {', '.join(unmapped[:3])}); is the config right?")
    check_state_dict(model.state_dict(), mapped, arch, ConversionError,
                     hint="; is the config right?", label="official")
    model.load_state_dict(mapped, strict=True)
    return model


# ----------------------------------------------------------------------------- Restormer / PromptIR
_RESTORMER_DEFAULTS = dict(inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8],
                           num_refinement_blocks=4, heads=[1, 2, 4, 8], ffn_expansion_factor=2.66,
                           bias=False, LayerNorm_type="WithBias", dual_pixel_task=False)
_PROMPTIR_DEFAULTS = {**{k: v for k, v in _RESTORMER_DEFAULTS.items() if k != "dual_pixel_task"},
                      "decoder": True}


def official_config(arch: str, config: dict | None, defaults: dict) -> dict:
    """Official constructor kwargs over their defaults; unknown names are a one-line error."""
    cfg = dict(defaults)
    for k, v in (config or {}).items():
        if k not in defaults:
            raise ConversionError(f"{arch}: unknown official constructor argument {k!r} "
                                  f"(expected some of {', '.join(defaults)})")
        cfg[k] = v
    if cfg["LayerNorm_type"] not in ("WithBias", "BiasFree"):
        raise ConversionError(f"{arch}: LayerNorm_type must be 'WithBias' or 'BiasFree', got "
                              f"{cfg['LayerNorm_type']!r}")
    return cfg


def restormer_block_spec(cfg: dict, mixer: dict | None = None) -> dict:
    bias = bool(cfg["bias"])
    return {"type": "transformer_block",
            "norm": {"type": "layernorm",
                     "variant": "bias_free" if cfg["LayerNorm_type"] == "BiasFree"
                     else "with_bias"},
            "mixer": mixer or {"type": "mdta", "bias": bias},
            "ffn": {"type": "gdfn", "expansion": float(cfg["ffn_expansion_factor"]), "bias": bias}}


def restormer_model_spec(cfg: dict) -> dict:
    return {"type": "unet_restorer", "in_channels": cfg["inp_channels"],
            "out_channels": cfg["out_channels"], "width": cfg["dim"],
            "blocks": list(cfg["num_blocks"]), "refinement": cfg["num_refinement_blocks"],
            "heads": list(cfg["heads"]), "bias": bool(cfg["bias"]),
            "block": restormer_block_spec(cfg)}


@register_converter("restormer")
def _restormer(state_dict: dict, config: dict | None) -> nn.Module:
    from irblocks.registry import build
    cfg = official_config("restormer", config, _RESTORMER_DEFAULTS)
    if cfg["dual_pixel_task"]:
        raise ConversionError("restormer: dual_pixel_task=True (defocus deblurring with a skip "
                              "conv) is not supported")
    model = build(restormer_model_spec(cfg), "model")
    mapped, unmapped = {}, []
    for k, v in state_dict.items():
        nk = map_unet_key(k)
        (unmapped.append(k) if nk is None else mapped.__setitem__(nk, v))
    return load_mapped(model, mapped, "restormer", unmapped)


# PromptIR's hard-coded prompt blocks (its code only builds with dim=48):
# prompt3 at the latent (320 ch, 16x16), prompt2 after decoder level 3 (128, 32x32),
# prompt1 after decoder level 2 (64, 64x64); every inner block uses heads[2].
PROMPTIR_DEAD = ("chnl_reduce1.", "chnl_reduce2.", "chnl_reduce3.",
                 "reduce_noise_channel_1.", "reduce_noise_channel_2.", "reduce_noise_channel_3.")


def promptir_model_spec(cfg: dict) -> dict:
    spec = restormer_model_spec(cfg)
    inner = restormer_block_spec(cfg)
    h = cfg["heads"][2]

    def prompt(pd, size):
        return {"type": "prompt_interaction", "prompt_dim": pd, "length": 5, "size": size,
                "heads": h, "block": inner, "bias": bool(cfg["bias"])}

    spec.update(latent_reduce=True, latent_end=prompt(320, 16),
                decoder_end=[None, prompt(64, 64), prompt(128, 32)])
    return spec


_PROMPT_RULES = [
    (r"^prompt3\.", "latent_end.gen."), (r"^noise_level3\.", "latent_end.block."),
    (r"^reduce_noise_level3\.", "latent_end.reduce."),
    (r"^prompt2\.", "decoder_ends.0.gen."), (r"^noise_level2\.", "decoder_ends.0.block."),
    (r"^reduce_noise_level2\.", "decoder_ends.0.reduce."),
    (r"^prompt1\.", "decoder_ends.1.gen."), (r"^noise_level1\.", "decoder_ends.1.block."),
    (r"^reduce_noise_level1\.", "decoder_ends.1.reduce."),
]


def _promptir_key(k: str, v: torch.Tensor):
    for pat, head in _PROMPT_RULES:
        m = re.match(pat, k)
        if m:
            rest = k[m.end():]
            rest = {"prompt_param": "prompt", "linear_layer.weight": "linear.weight",
                    "linear_layer.bias": "linear.bias",
                    "conv3x3.weight": "conv.weight"}.get(rest, rest)
            rest = _IN_BLOCK.sub(r".\1.", "." + rest)[1:]
            if rest == "prompt":
                v = v.reshape(v.shape[1:])        # (1, N, C, S, S) -> (N, C, S, S)
            return head + rest, v
    return map_unet_key(k), v


@register_converter("promptir")
def _promptir(state_dict: dict, config: dict | None) -> nn.Module:
    from irblocks.registry import build
    cfg = official_config("promptir", config, _PROMPTIR_DEFAULTS)
    if not cfg["decoder"]:
        raise ConversionError("promptir: decoder=False does not run in the official code (its "
                              "up4_3 expects 4d); only decoder=True checkpoints exist")
    if cfg["dim"] != 48:
        raise ConversionError("promptir: the official prompt blocks are hard-coded for dim=48, "
                              f"got dim={cfg['dim']}")
    model = build(promptir_model_spec(cfg), "model")
    mapped, unmapped = {}, []
    for k, v in state_dict.items():
        if k.startswith(PROMPTIR_DEAD):
            continue   # built but never used by the official forward: omitted by design
        nk, v = _promptir_key(k, v)
        (unmapped.append(k) if nk is None else mapped.__setitem__(nk, v))
    return load_mapped(model, mapped, "promptir", unmapped)


# ----------------------------------------------------------------------------- files
def _check_torch_zip(path: Path) -> None:
    """torch.save writes its zip entries uncompressed; a compressed entry could inflate far
    beyond the file's size (a zip bomb), so it is refused before torch.load reads it."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            packed = [i.filename for i in z.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable torch zip checkpoint ({e})") from None
    if packed:
        raise CheckpointError(f"{path}: refused: compressed zip entries ({packed[0]}); torch.save "
                              "never compresses, so this is not a plain torch checkpoint")


def load_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official checkpoint: ``.safetensors``, or a torch file loaded with
    ``weights_only=True`` (Lightning's ``state_dict``/``params`` wrappers and
    ``net.``/``module.`` prefixes are unwrapped). Arbitrary pickles are refused.

    Takes a path (a mapping is refused with a pointer to :func:`from_official`); every
    read failure is one CheckpointError naming the file."""
    path = as_path(path, "load_official_checkpoint")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        sd = read_tensors(path)
    else:
        _check_torch_zip(path)
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: refused: not loadable with "
                                  "torch.load(weights_only=True) "
                                  "(irblocks never unpickles arbitrary objects): "
                                  f"{first[:200]}") from None
        for key in ("state_dict", "params_ema", "params", "model"):
            if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"{path}: expected a mapping of parameter names to tensors")
        sd = obj
    for prefix in ("module.", "net."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def convert_file(arch: str, src: str | Path, dst: str | Path,
                 config: dict | None = None) -> nn.Module:
    """Convert an official checkpoint file to an irblocks safetensors file (recipe in its metadata).

    Everything is read and checked before ``dst`` is written (atomically), so a failed
    conversion leaves no output file.
    """
    from irblocks.checkpoint import save
    _converter(arch)                 # an unknown architecture is reported before the file is read
    as_path(dst, "convert_file dst")
    model = from_official(arch, load_official_checkpoint(src), config)
    save(model, dst)
    return model
