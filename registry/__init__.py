"""irblocks.registry: the plug-in registry and the recipe loader.

>>> import irblocks, irblocks.registry as reg
>>> reg.list("block", "*norm*")            # wildcard listing
>>> reg.info("gdfn")["signature"]          # signature, schema, source, doc
>>> reg.build({"type": "gdfn", "expansion": 2}, "block", dim=32)

One concern per file: ``errors`` (exceptions), ``markers`` (``Context``, ``Spec``),
``schemas`` (parameters and pydantic schemas from signatures), ``table`` (the entry
table, ``register``, lookup), ``plugins`` (built-in and third-party loading),
``builder`` (building components), ``recipe`` (YAML recipes), ``schema`` (JSON Schema).
"""
from __future__ import annotations

import importlib

# public name -> submodule (imported on first use, so `import irblocks` stays light)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["accepts", "build", "resolve_per_level"], "builder"),
    **dict.fromkeys(["ConfigError", "DuplicateError", "RegistryError", "UnknownNameError",
                     "WrongKindError"], "errors"),
    **dict.fromkeys(["KINDS", "BlockMap", "BlockSpec", "Context", "LossSpec", "PriorMap",
                     "PriorSpec", "Spec", "SpecMap"], "markers"),
    "load_plugins": "plugins",
    **dict.fromkeys(["Param", "type_name"], "schemas"),
    **dict.fromkeys(["Entry", "entries", "info", "json_schema", "list_names", "lookup", "register",
                     "spec_of", "suggest", "unregister"], "table"),
}

__all__ = [*_EXPORTS, "list"]


def __getattr__(name: str):
    if name == "list":                   # irblocks.registry.list(kind, pattern)
        value = importlib.import_module(f"{__name__}.table").list_names
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
