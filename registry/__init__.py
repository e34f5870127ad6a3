"""irblocks.registry: the plug-in registry and the recipe loader.

>>> import irblocks, irblocks.registry as reg
>>> reg.list("block", "*norm*")            # wildcard listing
>>> reg.info("gdfn")["signature"]          # signature, schema, source, doc
>>> reg.build({"type": "gdfn", "expansion": 2}, "block", dim=32)
"""
from .core import (  # noqa: F401
    KINDS, BlockMap, BlockSpec, PriorMap, SpecMap, ConfigError, Context, DuplicateError, Entry, LossSpec, PriorSpec,
    RegistryError, Spec, UnknownNameError, WrongKindError, accepts, build, entries, info,
    json_schema, load_plugins, lookup, register, spec_of, suggest,
)
from .core import list_names  # noqa: F401
from .core import list_names as list  # noqa: F401,A004  (irblocks.registry.list(kind, pattern))
