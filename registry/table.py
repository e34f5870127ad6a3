"""The table of registered entries (kind -> name -> :class:`Entry`), registration and lookup.

Every block, model, kernel, loss, prior and degradation registers with the
decorator :func:`register`. Registered classes remember the arguments they were
built with (:func:`spec_of`), which ``irblocks.to_recipe`` and checkpoints use
to rebuild them.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import fnmatch
import functools
import inspect
from typing import Any, Iterable

import pydantic

from .errors import DuplicateError, RegistryError, UnknownNameError, WrongKindError
from .markers import KINDS
from .plugins import ensure_loaded
from .schemas import Param, check_arguments, params_of, schema_for, type_name

__all__ = ["Entry", "register", "unregister", "lookup", "suggest", "entries", "list_names", "info",
           "json_schema", "spec_of"]


@dataclasses.dataclass
class Entry:
    kind: str
    name: str
    obj: Any
    aliases: tuple[str, ...]
    params: dict[str, Param]
    schema: type[pydantic.BaseModel]
    source: str
    doc: str

    @property
    def signature(self) -> str:
        parts = []
        for p in self.params.values():
            if p.mapping:
                ann = f"{{name: {p.component} spec}}"
            elif p.component:
                ann = f"{p.component.capitalize()}Spec"
            else:
                ann = type_name(p.annotation)
            if p.context:
                ann = f"Context[{ann}]"
            parts.append(f"{p.name}: {ann}" + ("" if p.required else f" = {_show(p.default)}"))
        return f"{self.name}({', '.join(parts)})"

    def context_params(self) -> set[str]:
        return {n for n, p in self.params.items() if p.context}


def _show(value) -> str:
    """A default as written in a signature: floats to 6 significant digits (8/3 -> 2.66667)."""
    if isinstance(value, float):
        return f"{value:.6g}" if "e" in f"{value:.6g}" or "." in f"{value:.6g}" else f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_show(v) for v in value)
        return (f"[{inner}]" if isinstance(value, list)
                else f"({inner}{',' if len(value) == 1 else ''})")
    return repr(value)


_ENTRIES: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_ALIASES: dict[str, dict[str, str]] = {k: {} for k in KINDS}


def _source_of(obj) -> str:
    try:
        return inspect.getsourcefile(obj) or "<unknown>"
    except TypeError:
        return "<unknown>"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")


def register(kind: str, name: str, aliases: Iterable[str] = (),
             schema: type[pydantic.BaseModel] | None = None):
    """Class/function decorator: register ``obj`` as ``kind`` under ``name`` (+ aliases)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    aliases = tuple(aliases)

    def deco(obj):
        params = params_of(obj, name)
        entry = Entry(kind=kind, name=name, obj=obj, aliases=aliases, params=params,
                      schema=schema or schema_for(name, params), source=_source_of(obj),
                      doc=inspect.getdoc(obj) or "")
        for n in (name, *aliases):
            other = _ENTRIES[kind].get(n) or _ENTRIES[kind].get(_ALIASES[kind].get(n, ""))
            if other is not None and other.obj is not obj:
                raise DuplicateError(f"{kind} {n!r} registered twice: by {entry.source} "
                                     f"and already by {other.source}")
        _ENTRIES[kind][name] = entry
        for a in aliases:
            _ALIASES[kind][a] = name
        if inspect.isclass(obj) and "__init__" in obj.__dict__:
            _wrap_init(obj, name)
        obj.__irblocks_entry__ = entry
        return obj

    return deco


def unregister(kind: str, name: str) -> None:
    """Remove an entry and its aliases (tests and interactive sessions)."""
    entry = _ENTRIES[kind].pop(name, None)
    for a in entry.aliases if entry else ():
        _ALIASES[kind].pop(a, None)


_PREVALIDATED: contextvars.ContextVar = contextvars.ContextVar("irblocks_prevalidated",
                                                               default=None)


@contextlib.contextmanager
def prevalidated(obj):
    """``registry.build`` checked the arguments of the next ``obj(...)`` call already."""
    token = _PREVALIDATED.set(obj)
    try:
        yield
    finally:
        _PREVALIDATED.reset(token)


def _wrap_init(cls, name):
    """Check the arguments of every construction (the entry's parameters: Literal choices,
    ranges, context minimums; the same check as recipes) and remember them (``spec_of``)."""
    init = cls.__init__
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        try:
            bound = sig.bind(self, *args, **kwargs)
        except TypeError:
            bound = None                  # let the constructor raise its own TypeError
        if bound is not None:
            arguments = dict(list(bound.arguments.items())[1:])
            if _PREVALIDATED.get() is cls:
                _PREVALIDATED.set(None)   # checked by build(); nested constructions check
            else:
                check_arguments(name, cls.__irblocks_entry__.params, arguments)
        init(self, *args, **kwargs)
        if (bound is not None
                and (type(self) is cls or getattr(self, "_irblocks_spec", None) is None)):
            spec = {"type": name}
            for k, v in arguments.items():
                spec[k] = _to_plain(v)
            object.__setattr__(self, "_irblocks_spec", spec)

    cls.__init__ = __init__


def _to_plain(v):
    """Turn constructor arguments into recipe values (for to_recipe)."""
    if isinstance(v, functools.partial) and hasattr(v.func, "__irblocks_entry__"):
        return {"type": v.func.__irblocks_entry__.name,
                **{k: _to_plain(x) for k, x in v.keywords.items()}}
    if hasattr(v, "__irblocks_entry__") and inspect.isclass(v):
        return v.__irblocks_entry__.name
    if isinstance(v, dict):
        return {k: _to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_plain(x) for x in v]
    return v


def spec_of(module) -> dict | None:
    """The ``{type: name, **arguments}`` a registered object was built with."""
    return getattr(module, "_irblocks_spec", None)


def _all_names(kind: str) -> list[str]:
    return sorted([*_ENTRIES[kind], *_ALIASES[kind]])


def suggest(name: str, kind: str | None = None, n: int = 3) -> list[str]:
    """Registered names close to ``name`` (for "did you mean" hints)."""
    ensure_loaded()
    kinds = [kind] if kind else KINDS
    pool = [x for k in kinds for x in _all_names(k)]
    norm = lambda s: s.lower().replace("-", "_")  # noqa: E731
    by_norm = {norm(x): x for x in pool}
    hits = difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=0.5)
    hits += [k for k in by_norm if norm(name) in k and k not in hits][: max(0, n - len(hits))]
    return [by_norm[h] for h in hits]


def lookup(kind: str, name: str) -> Entry:
    """The entry of ``kind`` called ``name`` (or one of its aliases)."""
    _check_kind(kind)
    ensure_loaded()
    if not isinstance(name, str):
        raise RegistryError(f"a {kind} name must be a string, got {type(name).__name__} {name!r}")
    key = _ALIASES[kind].get(name, name)
    if key in _ENTRIES[kind]:
        return _ENTRIES[kind][key]
    for other in KINDS:
        if other != kind and (name in _ENTRIES[other] or name in _ALIASES[other]):
            raise WrongKindError(f"{name!r} is a {other}, not a {kind}")
    hint = suggest(name, kind)
    msg = f"unknown {kind} {name!r}."
    msg += f" Did you mean {', '.join(repr(h) for h in hint)}?" if hint else \
        f" Registered {kind} entries: {', '.join(_all_names(kind)) or '(none)'}"
    raise UnknownNameError(msg)


def entries(kind: str | None = None) -> list[Entry]:
    """Every entry of ``kind`` (all kinds if None)."""
    if kind is not None:
        _check_kind(kind)
    ensure_loaded()
    kinds = [kind] if kind else KINDS
    return [e for k in kinds for e in _ENTRIES[k].values()]


def list_names(kind: str | None = None, pattern: str = "*") -> list[str]:
    """Registered names of ``kind`` (all kinds if None) matching a shell wildcard."""
    return sorted(e.name for e in entries(kind) if fnmatch.fnmatchcase(e.name, pattern)
                  or any(fnmatch.fnmatchcase(a, pattern) for a in e.aliases))


def info(name: str, kind: str | None = None) -> dict:
    """Signature, JSON schema, source file, aliases and docstring of an entry."""
    ensure_loaded()
    kinds = [kind] if kind else KINDS
    for k in kinds:
        key = _ALIASES[k].get(name, name)
        if key in _ENTRIES[k]:
            e = _ENTRIES[k][key]
            return {"kind": k, "name": e.name, "aliases": [*e.aliases], "signature": e.signature,
                    "context": sorted(e.context_params()), "schema": json_schema(e),
                    "source": e.source, "doc": e.doc}
    hint = suggest(name, kind)
    raise UnknownNameError(f"unknown name {name!r}."
                           + (f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""))


def json_schema(entry: Entry) -> dict:
    """The entry's JSON schema (pydantic's; a permissive one for non-JSON annotations)."""
    try:
        return entry.schema.model_json_schema()
    except Exception:  # arbitrary (non-JSON) annotation types
        return {"title": entry.schema.__name__, "type": "object",
                "properties": {n: {} for n, p in entry.params.items() if not p.context},
                "additionalProperties": False}
