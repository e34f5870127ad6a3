"""irblocks: a PyTorch component library for all-in-one image restoration.

Three ways in:

* import blocks: ``from irblocks import MDTA, GDFN, TransformerBlock``;
* build whole models from YAML recipes: ``irblocks.create_model("restormer")``;
* microbenchmark the kernels (``pytest tests/benchmarks --benchmark-only``).

``import irblocks`` is light (no torch, no Triton): every public name below is
imported on first use (PEP 562), and the built-in blocks, losses, degradations,
converters and kernels register on the first registry lookup (``create_model``,
``irblocks.registry.list``, ...), before third-party plug-ins (the
``irblocks.plugins`` entry point group). A new public name goes into ``_EXPORTS``;
a new file that registers entries goes into ``_BUILTIN_MODULES``.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access)
_EXPORTS: dict[str, str] = {
    # registry, errors, execution switches
    "InputError": "irblocks.errors",
    "set_execution": "irblocks.execution",
    "keep_freed_memory": "irblocks.allocator",
    "Guidance": "irblocks.guidance", "GuidanceError": "irblocks.guidance",
    "GuidedBlock": "irblocks.guidance",
    # auxiliary losses
    "record_aux_loss": "irblocks.aux_loss", "aux_losses": "irblocks.aux_loss",
    "total_aux_loss": "irblocks.aux_loss", "clear_aux_losses": "irblocks.aux_loss",
    # blocks
    "ChannelLayerNorm": "irblocks.norm",
    "GDFN": "irblocks.gdfn",
    "MDTA": "irblocks.mdta",
    "TransformerBlock": "irblocks.transformer_block",
    "Downsample": "irblocks.sampling", "PatchEmbed": "irblocks.sampling",
    "Upsample": "irblocks.sampling", "PromptGenBlock": "irblocks.prompt",
    "PromptInteraction": "irblocks.prompt", "UNetRestorer": "irblocks.unet",
    # building models, checkpoints, summaries
    "create_model": "irblocks.api", "list_models": "irblocks.api", "is_model": "irblocks.api",
    "resolve_recipe": "irblocks.api", "to_recipe": "irblocks.api",
    "load": "irblocks.checkpoint", "save": "irblocks.checkpoint",
    "summarize": "irblocks.summary",
}
# paper subpackages: their ``__all__`` is re-exported
_SUBPACKAGES = ("irblocks.anyir", "irblocks.clusir", "irblocks.clearair")

# files whose decorators register the built-in entries (imported on the first lookup)
_BUILTIN_MODULES = (
    "irblocks.norm", "irblocks.gdfn", "irblocks.mdta", "irblocks.transformer_block",
    "irblocks.sampling", "irblocks.prompt", "irblocks.unet", *_SUBPACKAGES, "irblocks.losses",
    "irblocks.train.config", "irblocks.train.degradations", "irblocks.convert",
)


def _load_builtins() -> None:
    for mod in _BUILTIN_MODULES:
        importlib.import_module(mod)


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    mod = _EXPORTS.get(name)
    if mod is not None:
        value = getattr(importlib.import_module(mod), name)
    else:
        for sub in _SUBPACKAGES:
            pkg = importlib.import_module(sub)
            if name in getattr(pkg, "__all__", ()):
                value = getattr(pkg, name)
                break
        else:
            try:    # a submodule: irblocks.losses, irblocks.train, ...
                value = importlib.import_module(f"irblocks.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"irblocks.{name}":
                    raise
                raise AttributeError(f"module 'irblocks' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = ["__version__", *_EXPORTS]

from irblocks.registry import plugins as _plugins  # noqa: E402  (pydantic only, no torch)

_plugins.add_builtin_loader(_load_builtins)
