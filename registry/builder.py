"""Building registered components from a name, a ``{type: ...}`` mapping or a factory."""
from __future__ import annotations

import difflib
import functools
import inspect

from .errors import ConfigError
from .schemas import check_arguments, type_name
from .table import Entry, lookup, prevalidated

__all__ = ["build", "accepts", "resolve_per_level"]


def _split_spec(spec, kind, path) -> tuple[str, dict]:
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, dict):
        if "type" not in spec:
            raise ConfigError(f"{path or '<root>'}: a {kind} mapping needs a 'type' key "
                              f"(one of the registered {kind}s), got keys {sorted(spec)}")
        return spec["type"], {k: v for k, v in spec.items() if k != "type"}
    raise ConfigError(f"{path or '<root>'}: expected a {kind} name or a mapping with 'type', "
                      f"got {type(spec).__name__}")


def resolve_per_level(entry: Entry, kwargs: dict, context: dict, path: str = "") -> dict:
    """Index per-level lists by the ``level`` context (scalar parameters only)."""
    out = dict(kwargs)
    for k, v in kwargs.items():
        p = entry.params.get(k)
        if p is None or p.component or p.is_sequence or not isinstance(v, (list, tuple)):
            continue
        if "level" not in context:
            raise ConfigError(f"{path + '.' if path else ''}{k}: a list was given for a scalar "
                              f"parameter, but no 'level' context exists here to index it")
        lvl = context["level"]
        if not 0 <= lvl < len(v):
            raise ConfigError(f"{path + '.' if path else ''}{k}: per-level list {v} has no entry "
                              f"for level {lvl}")
        out[k] = v[lvl]
    return out


def accepts(spec, kind: str, name: str) -> bool:
    """Whether the component ``spec`` (name, mapping or factory) takes parameter ``name``
    (containers use it to decide whether a block handles a context value itself)."""
    if spec is None:
        return False
    if isinstance(spec, (str, dict)):
        entry = lookup(kind, spec if isinstance(spec, str) else spec.get("type"))
        return name in entry.params
    target = spec.func if isinstance(spec, functools.partial) else spec
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def build(spec, kind: str = "block", path: str = "", **context):
    """Build a registered component from a name, a ``{type: ...}`` mapping or a factory.

    ``context`` holds what the container supplies (``dim``, ``level``, ...); each
    value is passed only when the target's constructor takes it. Setting a
    context parameter in the spec is an error.
    """
    if spec is None:
        return None
    if callable(spec) and not isinstance(spec, (str, dict)):
        target = spec.func if isinstance(spec, functools.partial) else spec
        try:
            names = inspect.signature(target).parameters
        except (TypeError, ValueError):
            names = {}
        given = spec.keywords if isinstance(spec, functools.partial) else {}
        accepts_var = any(p.kind == p.VAR_KEYWORD for p in names.values())
        ctx = {k: v for k, v in context.items() if (k in names or accepts_var) and k not in given}
        return spec(**ctx)
    name, kwargs = _split_spec(spec, kind, path)
    entry = lookup(kind, name)
    where = path or name
    ctx_params = entry.context_params()
    bad = sorted(set(kwargs) & ctx_params)
    if bad:
        raise ConfigError(f"{where}.{bad[0]}: {bad[0]!r} is supplied by the container "
                          f"(context), remove it from the recipe")
    kwargs = resolve_per_level(entry, kwargs, context, where)
    unknown = [k for k in kwargs if k not in entry.params]
    if unknown:
        hint = difflib.get_close_matches(unknown[0],
                                         [n for n, q in entry.params.items() if not q.context], n=1)
        raise ConfigError(f"{where}.{unknown[0]}: unknown parameter of {entry.name}"
                          + (f"; did you mean {hint[0]!r}?" if hint else ""))
    missing = [n for n, p in entry.params.items() if p.required and not p.context
               and n not in kwargs]
    if missing:
        raise ConfigError(f"{where}: missing required parameter {missing[0]!r} of {entry.name} "
                          f"(expected {type_name(entry.params[missing[0]].annotation)})")
    ctx = {k: v for k, v in context.items() if k in entry.params and entry.params[k].context}
    missing = [n for n, p in entry.params.items() if p.context and p.required and n not in ctx]
    if missing:
        raise ConfigError(f"{where}: context {missing} must be supplied by the container "
                          f"(build it inside a container, or pass {missing[0]}=...)")
    values = {**kwargs, **ctx}
    check_arguments(entry.name, entry.params, values, where)     # the one value check
    with prevalidated(entry.obj):     # the constructor wrapper need not check again
        return entry.obj(**values)

