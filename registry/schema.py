"""JSON Schema of every registered entry and of recipe files (``irblocks schema``).

Editors use it to autocomplete and flag typos in recipes (for example with a
``# yaml-language-server: $schema=irblocks-recipe.schema.json`` comment); a
test validates every shipped recipe against it.
"""
from __future__ import annotations

import pydantic

from .markers import KINDS
from .schemas import Param
from .table import Entry, entries

__all__ = ["recipe_schema"]


def _field_schema(entry: Entry, name: str, p: Param) -> dict:
    if p.mapping:
        return {"anyOf": [{"type": "object", "additionalProperties": _component_ref(p.component)}, {"type": "null"}]}
    if p.component:
        one = _component_ref(p.component)
        return {"anyOf": [one, {"type": "array", "items": {"anyOf": [one, {"type": "null"}]}}, {"type": "null"}]}
    field = entry.schema.model_fields[name]
    try:
        sch = pydantic.TypeAdapter(field.annotation).json_schema()
    except Exception:
        sch = {}
    if not p.required:
        try:
            import json
            json.dumps(p.default)
            sch["default"] = list(p.default) if isinstance(p.default, tuple) else p.default
        except TypeError:
            pass
    return sch


def _component_ref(kind: str) -> dict:
    return {"$ref": f"#/$defs/{kind}"}


def _entry_schema(entry: Entry) -> dict:
    props = {"type": {"const": entry.name} if not entry.aliases else {"enum": [entry.name, *entry.aliases]}}
    required = ["type"]
    for n, p in entry.params.items():
        if p.context:
            continue
        props[n] = _field_schema(entry, n, p)
        if p.required:
            required.append(n)
    doc = entry.doc.split("\n\n")[0].replace("\n", " ") if entry.doc else entry.name
    return {"type": "object", "title": entry.name, "description": doc, "properties": props,
            "required": required, "additionalProperties": False}


def recipe_schema() -> dict:
    """A JSON Schema (draft 2020-12) for recipe files, with a definition per entry."""
    defs: dict = {}
    for kind in KINDS:
        names = []
        for e in entries(kind):
            key = f"{kind}.{e.name}"
            defs[key] = _entry_schema(e)
            names += [e.name, *e.aliases]
        defs[kind] = {"anyOf": [{"type": "string", "enum": sorted(names)} if names else {"not": {}},
                                *[{"$ref": f"#/$defs/{kind}.{e.name}"} for e in entries(kind)]]}
    loss_item = {"allOf": [{"$ref": "#/$defs/loss"}]}
    loss_entries = []
    for e in entries("loss"):   # loss items may carry a weight
        s = _entry_schema(e)
        s["properties"]["weight"] = {"type": "number"}
        defs[f"loss_item.{e.name}"] = s
        loss_entries.append({"$ref": f"#/$defs/loss_item.{e.name}"})
    loss_item = {"anyOf": loss_entries} if loss_entries else {"type": "object"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "irblocks recipe",
        "type": "object",
        "properties": {
            "recipe": {"const": 1},
            "description": {"type": "string"},
            "extends": {"type": "string"},
            "model": {"$ref": "#/$defs/model"},
            "loss": {"type": "array", "items": loss_item},
            "optimizer": {"type": "object"},
            "schedule": {"type": "object"},
            "train": {"type": "object"},
            "eval": {"type": "object"},
        },
        "additionalProperties": False,
        "$defs": defs,
    }
