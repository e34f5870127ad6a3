"""irblocks.registry: the plug-in registry and the recipe loader.

>>> import irblocks, irblocks.registry as reg
>>> reg.list("block", "*norm*")            # wildcard listing
>>> reg.info("gdfn")["signature"]          # signature, schema, source, doc
>>> reg.build({"type": "gdfn", "expansion": 2}, "block", dim=32)

One concern per file: ``errors`` (exceptions), ``markers`` (``Context``, ``Spec``),
``schemas`` (parameters and pydantic schemas from signatures), ``table`` (the entries,
table, ``register``, lookup), ``plugins`` (built-in and third-party loading),
``build`` (building components), ``recipe`` (YAML recipes), ``schema`` (JSON Schema).
"""
from .build import accepts, build, resolve_per_level  # noqa: F401
from .errors import (  # noqa: F401
    ConfigError,
    DuplicateError,
    RegistryError,
    UnknownNameError,
    WrongKindError,
)
from .markers import (  # noqa: F401
    KINDS,
    BlockMap,
    BlockSpec,
    Context,
    LossSpec,
    PriorMap,
    PriorSpec,
    Spec,
    SpecMap,
)
from .plugins import load_plugins  # noqa: F401
from .schemas import Param, type_name  # noqa: F401
from .table import (  # noqa: F401
    Entry,
    entries,
    info,
    json_schema,
    list_names,
    lookup,
    register,
    spec_of,
    suggest,
    unregister,
)
from .table import list_names as list  # noqa: F401,A004  (irblocks.registry.list(kind, pattern))
