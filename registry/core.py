"""The one registry of irblocks: entries keyed by kind and name.

Every block, model, kernel, loss and prior registers with the decorator
:func:`register`. Each entry carries a pydantic schema derived from its
constructor signature (annotations required, unknown keys forbidden) or given
explicitly, so recipes are validated before anything is built.

Two annotation markers drive recipes:

* ``Context[int]`` marks a parameter the *container* supplies (``dim``,
  ``level``, ``heads``...). A recipe that sets it gets an error.
* ``BlockSpec`` / ``LossSpec`` / ``PriorSpec`` (see :func:`Spec`) mark a
  nested component: a registered name, a ``{type: name, ...}`` mapping, or
  (from Python) a callable or ``functools.partial`` that builds the module
  when called with the context.

A per-level value: where a parameter's annotation is not a list/tuple and a
recipe gives a list, the list is indexed by the ``level`` context.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import functools
import inspect
import os
import types
import typing
import warnings
from typing import Any, Callable, Iterable

import pydantic

KINDS = ("block", "model", "kernel", "loss", "prior", "degradation")

__all__ = [
    "KINDS", "Context", "Spec", "SpecMap", "BlockSpec", "LossSpec", "PriorSpec", "BlockMap", "PriorMap", "Entry",
    "RegistryError", "UnknownNameError", "WrongKindError", "DuplicateError",
    "ConfigError", "register", "lookup", "accepts", "list_names", "info", "build", "entries",
    "load_plugins", "spec_of",
]


# --------------------------------------------------------------------------- errors
class RegistryError(LookupError):
    """Base class of registry errors. ``str(err)`` is one line."""


class UnknownNameError(RegistryError):
    pass


class WrongKindError(RegistryError):
    pass


class DuplicateError(RegistryError):
    pass


class ConfigError(ValueError):
    """A wrong argument: names the path and what was expected, on one line each."""


# --------------------------------------------------------------------------- markers
class _ContextMarker:
    def __repr__(self) -> str:
        return "Context"


_CONTEXT = _ContextMarker()


class Context:
    """``Context[int]``: a parameter the container supplies; recipes must not set it."""

    def __class_getitem__(cls, tp):
        return typing.Annotated[tp, _CONTEXT]


@dataclasses.dataclass(frozen=True)
class _ComponentMarker:
    kind: str
    mapping: bool = False     # a name -> spec mapping (priors, shared modules)


def Spec(kind: str):
    """Annotation of a nested-component parameter of the given kind."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    return typing.Annotated[typing.Union[str, dict, list, Callable, None], _ComponentMarker(kind)]


def SpecMap(kind: str):
    """Annotation of a ``{name: component spec}`` mapping parameter (e.g. priors)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    return typing.Annotated[typing.Optional[dict], _ComponentMarker(kind, mapping=True)]


BlockSpec = Spec("block")
LossSpec = Spec("loss")
PriorSpec = Spec("prior")
BlockMap = SpecMap("block")
PriorMap = SpecMap("prior")


# --------------------------------------------------------------------------- entries
@dataclasses.dataclass
class Param:
    name: str
    annotation: Any          # the bare annotation (markers stripped)
    default: Any             # inspect.Parameter.empty when required
    context: bool = False
    component: str | None = None   # kind of a nested component, else None
    mapping: bool = False          # a {name: spec} mapping of components

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty

    @property
    def is_sequence(self) -> bool:
        origin = typing.get_origin(self.annotation)
        if origin in (list, tuple, typing.Sequence):
            return True
        if origin is typing.Union:
            return any(typing.get_origin(a) in (list, tuple) or a in (list, tuple)
                       for a in typing.get_args(self.annotation))
        return self.annotation in (list, tuple)


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
            parts.append(f"{p.name}: {ann}" + ("" if p.required else f" = {p.default!r}"))
        return f"{self.name}({', '.join(parts)})"

    def context_params(self) -> set[str]:
        return {n for n, p in self.params.items() if p.context}


_ENTRIES: dict[str, dict[str, Entry]] = {k: {} for k in KINDS}
_ALIASES: dict[str, dict[str, str]] = {k: {} for k in KINDS}
_PLUGINS_LOADED = False


def _source_of(obj) -> str:
    try:
        return inspect.getsourcefile(obj) or "<unknown>"
    except TypeError:
        return "<unknown>"


def _strip(annotation):
    """Split an annotation into (bare type, is_context, component_kind)."""
    context, component, mapping = False, None, False
    if typing.get_origin(annotation) is typing.Annotated:
        args = typing.get_args(annotation)
        for meta in args[1:]:
            if meta is _CONTEXT:
                context = True
            elif isinstance(meta, _ComponentMarker):
                component, mapping = meta.kind, meta.mapping
        annotation = args[0]
    return annotation, context, component, mapping


def _params_of(obj, name: str) -> dict[str, Param]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception as e:  # unresolved forward reference
        raise TypeError(f"cannot resolve the annotations of {name!r} ({obj!r}): {e}") from e
    out: dict[str, Param] = {}
    for p in sig.parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name not in hints:
            raise TypeError(f"registered {name!r}: parameter {p.name!r} of {obj.__qualname__} "
                            "has no type annotation (every constructor argument needs one)")
        bare, context, component, mapping = _strip(hints[p.name])
        out[p.name] = Param(p.name, bare, p.default, context, component, mapping)
    return out


def _schema_for(name: str, params: dict[str, Param]) -> type[pydantic.BaseModel]:
    fields = {}
    for p in params.values():
        if p.context:
            continue
        if p.mapping:
            tp = typing.Optional[typing.Dict[str, typing.Union[str, dict]]]
        elif p.component:
            tp = typing.Union[str, dict, typing.List[typing.Union[str, dict, None]], None]
        else:
            tp = p.annotation
        if not p.is_sequence and not p.component:
            # a per-level list is allowed for any scalar parameter
            tp = typing.Union[tp, typing.List[tp]]
        default = ... if p.required else p.default
        fields[p.name] = (tp, default)
    model_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_")) + "Config"
    return pydantic.create_model(model_name, __config__=pydantic.ConfigDict(
        extra="forbid", arbitrary_types_allowed=True, protected_namespaces=()), **fields)


def register(kind: str, name: str, aliases: Iterable[str] = (), schema: type[pydantic.BaseModel] | None = None):
    """Class/function decorator: register ``obj`` as ``kind`` under ``name`` (+ aliases).

    Registered classes remember the arguments they were built with (``spec_of``),
    which ``irblocks.to_recipe`` and checkpoints use to rebuild them.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    aliases = tuple(aliases)

    def deco(obj):
        params = _params_of(obj, name)
        entry = Entry(kind=kind, name=name, obj=obj, aliases=aliases, params=params,
                      schema=schema or _schema_for(name, params), source=_source_of(obj),
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


def _wrap_init(cls, name):
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self) is cls or getattr(self, "_irblocks_spec", None) is None:
            try:
                bound = inspect.signature(init).bind(self, *args, **kwargs)
            except TypeError:
                return
            spec = {"type": name}
            for k, v in list(bound.arguments.items())[1:]:
                spec[k] = _to_plain(v)
            object.__setattr__(self, "_irblocks_spec", spec)

    cls.__init__ = __init__


def _to_plain(v):
    """Turn constructor arguments into recipe values (for to_recipe)."""
    if isinstance(v, functools.partial) and hasattr(v.func, "__irblocks_entry__"):
        return {"type": v.func.__irblocks_entry__.name, **{k: _to_plain(x) for k, x in v.keywords.items()}}
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


# --------------------------------------------------------------------------- plug-ins
def load_plugins(force: bool = False) -> list[str]:
    """Load entry points of group ``irblocks.plugins`` once (lazily on first lookup).

    A plug-in entry point names a module (imported: its decorators register)
    or a callable (called with no arguments). A plug-in that fails becomes a
    warning naming it. ``IRBLOCKS_NO_PLUGINS=1`` turns autoloading off.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not force:
        return []
    _PLUGINS_LOADED = True
    if os.environ.get("IRBLOCKS_NO_PLUGINS", "") not in ("", "0") and not force:
        return []
    from importlib.metadata import entry_points
    loaded = []
    for ep in entry_points(group="irblocks.plugins"):
        try:
            obj = ep.load()
            if callable(obj) and not inspect.ismodule(obj):
                obj()
            loaded.append(ep.name)
        except Exception as e:  # a broken plug-in must not break the library
            warnings.warn(f"irblocks plug-in {ep.name!r} ({ep.value}) failed to load: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return loaded


# --------------------------------------------------------------------------- lookup
def _all_names(kind: str) -> list[str]:
    return sorted([*_ENTRIES[kind], *_ALIASES[kind]])


def suggest(name: str, kind: str | None = None, n: int = 3) -> list[str]:
    kinds = [kind] if kind else KINDS
    pool = [x for k in kinds for x in _all_names(k)]
    norm = lambda s: s.lower().replace("-", "_")  # noqa: E731
    by_norm = {norm(x): x for x in pool}
    hits = difflib.get_close_matches(norm(name), list(by_norm), n=n, cutoff=0.5)
    hits += [k for k in by_norm if norm(name) in k and k not in hits][: max(0, n - len(hits))]
    return [by_norm[h] for h in hits]


def lookup(kind: str, name: str) -> Entry:
    """The entry of ``kind`` called ``name`` (or one of its aliases)."""
    if kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    load_plugins()
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
    load_plugins()
    kinds = [kind] if kind else KINDS
    return [e for k in kinds for e in _ENTRIES[k].values()]


def list_names(kind: str | None = None, pattern: str = "*") -> typing.List[str]:
    """Registered names of ``kind`` (all kinds if None) matching a shell wildcard."""
    if kind is not None and kind not in KINDS:
        raise RegistryError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    return sorted(e.name for e in entries(kind) if fnmatch.fnmatchcase(e.name, pattern)
                  or any(fnmatch.fnmatchcase(a, pattern) for a in e.aliases))


def info(name: str, kind: str | None = None) -> dict:
    """Signature, JSON schema, source file, aliases and docstring of an entry."""
    load_plugins()
    kinds = [kind] if kind else KINDS
    for k in kinds:
        key = _ALIASES[k].get(name, name)
        if key in _ENTRIES[k]:
            e = _ENTRIES[k][key]
            return {"kind": k, "name": e.name, "aliases": [*e.aliases], "signature": e.signature,
                    "context": sorted(e.context_params()), "schema": json_schema(e),
                    "source": e.source, "doc": e.doc}
    hint = suggest(name, kind)
    raise UnknownNameError(f"unknown name {name!r}." + (f" Did you mean {', '.join(map(repr, hint))}?" if hint else ""))


def json_schema(entry: Entry) -> dict:
    try:
        return entry.schema.model_json_schema()
    except Exception:  # arbitrary (non-JSON) annotation types
        return {"title": entry.schema.__name__, "type": "object",
                "properties": {n: {} for n, p in entry.params.items() if not p.context},
                "additionalProperties": False}


# --------------------------------------------------------------------------- build
def type_name(tp) -> str:
    """Readable name of an annotation for error messages."""
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(tp)
        return f"list of {type_name(args[0])}" if args else "list"
    return str(tp).replace("typing.", "")


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
            raise ConfigError(f"{path + '.' if path else ''}{k}: per-level list {v} has no entry for level {lvl}")
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
    try:
        validated = entry.schema.model_validate(kwargs)
    except pydantic.ValidationError as e:
        err = e.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else ""
        p = entry.params.get(field)
        if err["type"] == "missing":
            raise ConfigError(f"{where}: missing required parameter {field!r} of {entry.name}"
                              + (f" (expected {type_name(p.annotation)})" if p else "")) from None
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(field, [n for n, q in entry.params.items() if not q.context], n=1)
            raise ConfigError(f"{where}.{field}: unknown parameter of {entry.name}"
                              + (f"; did you mean {hint[0]!r}?" if hint else "")) from None
        expected = type_name(p.annotation) if p else "a valid value"
        raise ConfigError(f"{where}.{field}: expected {expected}, got {err.get('input')!r}") from None
    values = {k: getattr(validated, k) for k in kwargs}
    for k, v in values.items():   # nested components keep their raw spec; give them their path
        p = entry.params.get(k)
        if p is not None and p.component and kwargs.get(k) is not None:
            values[k] = kwargs[k]       # keep the raw spec (pydantic must not coerce it)
    ctx = {k: v for k, v in context.items() if k in entry.params and entry.params[k].context}
    missing = [n for n, p in entry.params.items() if p.context and p.required and n not in ctx]
    if missing:
        raise ConfigError(f"{where}: context {missing} must be supplied by the container "
                          f"(build it inside a container, or pass {missing[0]}=...)")
    obj = entry.obj(**values, **ctx)
    return obj
