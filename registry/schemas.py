"""Parameters and pydantic schemas of registered entries, derived from constructor signatures.

Every constructor argument needs an annotation; the schema forbids unknown keys.
A per-level value: where a parameter's annotation is not a list/tuple, a recipe
may give a list, indexed by the ``level`` context.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any

import pydantic

from .markers import strip

__all__ = ["Param", "params_of", "schema_for", "type_name", "value_problem", "check_arguments",
           "CONTEXT_MINIMUM"]

# What the containers supply has one meaning everywhere: sizes are positive, indices >= 0.
CONTEXT_MINIMUM = {"dim": 1, "heads": 1, "width": 1, "out_dim": 1, "level": 0, "stage": 0,
                   "index": 0}


@dataclasses.dataclass
class Param:
    name: str
    annotation: Any          # the bare annotation (markers stripped)
    default: Any             # inspect.Parameter.empty when required
    context: bool = False
    component: str | None = None   # kind of a nested component, else None
    mapping: bool = False          # a {name: spec} mapping of components

    _adapter: Any = dataclasses.field(default=None, repr=False, compare=False)

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


def params_of(obj, name: str) -> dict[str, Param]:
    """The annotated parameters of a class's ``__init__`` or of a function."""
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
        bare, context, component, mapping = strip(hints[p.name])
        out[p.name] = Param(p.name, bare, p.default, context, component, mapping)
    return out


def schema_for(name: str, params: dict[str, Param]) -> type[pydantic.BaseModel]:
    """A pydantic model of the recipe-settable parameters (context ones excluded)."""
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


def _bound(meta) -> str:
    """``annotated_types.Gt(0)`` -> ``"> 0"`` (and pydantic ``Field`` metadata)."""
    parts = []
    for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        v = getattr(meta, attr, None)
        if v is not None:
            parts.append(f"{sym} {v}")
    for m in getattr(meta, "metadata", ()):
        parts.append(_bound(m))
    return " and ".join(p for p in parts if p)


def type_name(tp) -> str:
    """Readable name of an annotation for error messages."""
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        base, *meta = typing.get_args(tp)
        bounds = " and ".join(b for b in (_bound(m) for m in meta) if b)
        return f"{type_name(base)} {bounds}" if bounds else type_name(base)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, typing.Sequence):
        args = typing.get_args(tp)
        return f"list of {type_name(args[0])}" if args else "list"
    return str(tp).replace("typing.", "")


_UNCHECKED = object()


def _adapter(p: Param):
    if p._adapter is None:
        try:
            p._adapter = pydantic.TypeAdapter(p.annotation)
        except Exception:  # an annotation pydantic cannot check (a class, a callable type)
            p._adapter = _UNCHECKED
    return p._adapter


def _literal_choices(tp) -> tuple:
    if typing.get_origin(tp) is typing.Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(c for a in typing.get_args(tp) for c in _literal_choices(a))
    return ()


def value_problem(p: Param, value) -> str | None:
    """What is wrong with ``value`` for parameter ``p`` (its annotation with Literal choices
    and ``Annotated`` ranges, or the context minimum), or None. The one check of a value:
    recipes, ``registry.build`` and direct construction all call it."""
    if p.component:
        return None                            # checked where the component is built
    if p.context:
        low = CONTEXT_MINIMUM.get(p.name)
        if (low is not None and isinstance(value, int) and not isinstance(value, bool)
                and value < low):
            return (f"expected {'a positive integer' if low == 1 else f'an integer >= {low}'}, got "
                    f"{value!r}")
        return None
    if value is p.default:
        return None
    adapter = _adapter(p)
    if adapter is _UNCHECKED:
        return None
    try:
        adapter.validate_python(value)
    except pydantic.ValidationError:
        msg = f"expected {type_name(p.annotation)}, got {value!r}"
        choices = [c for c in _literal_choices(p.annotation) if isinstance(c, str)]
        if choices and isinstance(value, str):
            import difflib
            hint = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            if hint:
                msg += f"; did you mean {hint[0]!r}?"
        return msg
    return None


def check_arguments(name: str, params: dict[str, Param], arguments: dict, where: str = "") -> None:
    """Raise a one-line ConfigError for the first argument that does not fit its parameter."""
    for k, v in arguments.items():
        p = params.get(k)
        if p is None:
            continue
        msg = value_problem(p, v)
        if msg is not None:
            from .errors import ConfigError
            raise ConfigError(f"{where or name}.{k}: {msg}")
