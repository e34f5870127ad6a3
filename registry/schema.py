"""JSON Schema of every registered entry and of recipe files (``irblocks schema``).

Editors use it to autocomplete and flag typos in recipes (for example with a
``# yaml-language-server: $schema=irblocks-recipe.schema.json`` comment). It
describes recipe files *as written*: a recipe with ``extends`` may give a partial
``model`` (any parameters of a registered model, ``type`` optional, nested
components likewise partial), while a recipe without ``extends`` must give a complete
one. Typos, unknown names and wrong types are rejected either way. The sections other
packages register (``loss``, ``optimizer``, ...) contribute their own schemas.
A test validates every shipped recipe file against it.
"""
from __future__ import annotations

import json

import pydantic

from .markers import KINDS
from .schemas import Param
from .sections import sections
from .table import Entry, entries

__all__ = ["recipe_schema"]


def _ref(kind: str, partial: bool) -> dict:
    return {"$ref": f"#/$defs/{'partial.' if partial else ''}{kind}"}


def _field_schema(entry: Entry, name: str, p: Param, partial: bool) -> dict:
    if p.mapping:
        return {"anyOf": [{"type": "object", "additionalProperties": _ref(p.component, partial)},
                          {"type": "null"}]}
    if p.component:
        one = _ref(p.component, partial)
        return {"anyOf": [one, {"type": "array", "items": {"anyOf": [one, {"type": "null"}]}},
                          {"type": "null"}]}
    field = entry.schema.model_fields[name]
    try:
        sch = pydantic.TypeAdapter(field.annotation).json_schema()
    except Exception:
        sch = {}
    if not p.required:
        try:
            json.dumps(p.default)
            sch["default"] = list(p.default) if isinstance(p.default, tuple) else p.default
        except TypeError:
            pass
    return sch


def _entry_schema(entry: Entry, partial: bool = False) -> dict:
    names = [entry.name, *entry.aliases]
    props = {"type": {"const": entry.name} if len(names) == 1 else {"enum": names}}
    required = [] if partial else ["type"]
    for n, p in entry.params.items():
        if p.context:
            continue
        props[n] = _field_schema(entry, n, p, partial)
        if p.required and not partial:
            required.append(n)
    doc = entry.doc.split("\n\n")[0].replace("\n", " ") if entry.doc else entry.name
    out = {"type": "object", "title": entry.name, "description": doc, "properties": props,
           "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def recipe_schema() -> dict:
    """A JSON Schema (draft 2020-12) for recipe files, with a definition per entry."""
    defs: dict = {}
    for partial in (False, True):
        prefix = "partial." if partial else ""
        for kind in KINDS:
            names = []
            for e in entries(kind):
                defs[f"{prefix}{kind}.{e.name}"] = _entry_schema(e, partial)
                names += [e.name, *e.aliases]
            defs[f"{prefix}{kind}"] = {"anyOf": [
                {"type": "string", "enum": sorted(names)} if names else {"not": {}},
                *[{"$ref": f"#/$defs/{prefix}{kind}.{e.name}"} for e in entries(kind)]]}
    loss_entries = []
    for e in entries("loss"):   # loss items may carry a weight
        s = _entry_schema(e)
        s["properties"]["weight"] = {"type": "number", "minimum": 0}
        defs[f"loss_item.{e.name}"] = s
        loss_entries.append({"$ref": f"#/$defs/loss_item.{e.name}"})
    names = sorted(n for e in entries("loss") for n in (e.name, *e.aliases))
    defs["loss_item"] = {"anyOf": [{"type": "string", "enum": names}, *loss_entries]}
    props = {
        "recipe": {"const": 1},
        "description": {"type": "string"},
        "extends": {"type": "string"},
        "model": {"type": ["object", "string"]},
    }
    for name, section in sections().items():
        sch = dict(section.json_schema())
        defs.update(sch.pop("$defs", {}))
        if section.doc and "description" not in sch:
            sch["description"] = section.doc.split("\n\n")[0]
        props[name] = sch
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "irblocks recipe",
        "type": "object",
        "properties": props,
        "additionalProperties": False,
        # with `extends` the model section is merged onto the parent's: partial is fine
        "if": {"required": ["extends"]},
        "then": {"properties": {"model": _ref("model", True)}},
        "else": {"required": ["model"], "properties": {"model": _ref("model", False)}},
        "$defs": defs,
    }
