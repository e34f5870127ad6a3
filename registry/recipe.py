"""Recipe files: YAML (safe loader only) naming registered components only.

A recipe is validated completely before anything is built; every problem is
reported at once, each on one line with ``file:line``, the path as the user
wrote it (``model.block.ffn.expansion``) and a suggestion::

  recipes/mine.yaml:7: model.block.ffn.expanson: unknown parameter of gdfn; did you mean
  'expansion'?

Top-level keys: ``recipe`` (format version, 1), ``description``, ``extends``
(another recipe's name or a path relative to this file; maps merge, lists
replace), ``model`` (a ``{type: <model>, ...}`` spec), plus the sections other
packages register (:mod:`irblocks.registry.sections`): ``loss`` (a list of
``{type: <loss>, weight: w, ...}``), ``optimizer``, ``schedule``, ``train``, ``eval``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import RegistryError
from .schemas import type_name, value_problem
from .sections import sections
from .table import Entry, lookup

__all__ = ["RecipeError", "Problem", "Recipe", "load", "validate", "find", "names", "deep_merge",
           "parse_yaml", "CORE_KEYS", "RECIPE_VERSION", "MAX_RECIPE_BYTES", "MAX_YAML_NODES",
           "MAX_YAML_DEPTH", "MAX_EXTENDS"]

RECIPE_VERSION = 1
CORE_KEYS = ("recipe", "description", "extends", "model")
"""Top-level keys the registry reads; other keys are registered sections (``sections()``)."""


@dataclasses.dataclass
class Problem:
    file: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path or '<recipe>'}: {self.message}"


class RecipeError(ValueError):
    """One or more recipe problems; ``str()`` lists one problem per line."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclasses.dataclass
class Recipe:
    """A loaded (merged) recipe: the data plus where each path was written."""
    data: dict
    source: str
    lines: dict[str, tuple[str, int]]

    @property
    def name(self) -> str:
        return Path(self.source).stem if self.source.endswith((".yaml", ".yml")) else self.source

    def where(self, path: str) -> tuple[str, int | None]:
        p = path
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p.rsplit(".", 1)[0] if "." in p else (p.split("[")[0] if "[" in p else "")
        return self.source, None


# ----------------------------------------------------------------------------- finding files
def _recipe_dir():
    return resources.files("irblocks.recipes")


def names(pattern: str = "*") -> list[str]:
    """Names of the shipped recipes (``recipes/*.yaml``) matching a wildcard."""
    import fnmatch
    out = []
    for f in _recipe_dir().iterdir():
        if f.name.endswith(".yaml") and fnmatch.fnmatchcase(f.name[:-5], pattern):
            out.append(f.name[:-5])
    return sorted(out)


def find(name_or_path: str | Path, relative_to: Path | None = None, path: str = "",
         origin: tuple[str, int | None] | None = None) -> Path:
    """Resolve a recipe name or path to a file (shipped names first, then paths)."""
    s = str(name_or_path)
    if relative_to is not None and s.endswith((".yaml", ".yml")):
        cand = (relative_to / s)
        if cand.is_file():
            return cand
    p = Path(s)
    if s.endswith((".yaml", ".yml")) or "/" in s or p.is_file():
        if p.is_file():
            return p
        file, line = origin or (s, None)
        raise RecipeError([Problem(file, line, path, f"recipe file {s!r} does not exist")])
    f = _recipe_dir() / f"{s}.yaml"
    if f.is_file():
        return Path(str(f))
    hint = difflib.get_close_matches(s, names(), n=3, cutoff=0.5)
    file, line = origin or ("<recipe>", None)
    msg = f"unknown recipe {s!r}"
    msg += (f"; did you mean {', '.join(map(repr, hint))}?" if hint
            else f"; shipped recipes: {', '.join(names())}")
    raise RecipeError([Problem(file, line, path, msg)])


# ----------------------------------------------------------------------------- YAML with lines
MAX_RECIPE_BYTES = 1 << 20
"""A recipe (or ``--set`` value) larger than this is refused before parsing (1 MiB)."""
MAX_YAML_NODES = 100_000
"""Budget of YAML nodes a document may expand to, counting each alias as the nodes it
repeats: a "billion laughs" alias bomb is refused while it is composed."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings/sequences a recipe may have (shipped recipes use < 10)."""
MAX_EXTENDS = 32
"""Longest ``extends`` chain."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts while composing, so hostile YAML costs bounded work.

    Every node adds one to a running total and every alias adds the size of the subtree
    it repeats; past :data:`MAX_YAML_NODES` (or past :data:`MAX_YAML_DEPTH` levels, or
    for an alias of a node that is still open, i.e. a recursive structure) composing
    stops with a one-line :class:`RecipeError` naming the file and line. Only the safe
    constructors run (no tags beyond YAML's standard ones).
    """

    def __init__(self, text: str, file: str, path: str = "", with_lines: bool = True):
        super().__init__(text)
        self._file, self._path, self._with_lines = file, path, with_lines
        self._depth = 0
        self._total = 0
        self._sizes: dict[int, int] = {}      # id(anchored node) -> expanded size

    def _refuse(self, mark, message: str):
        line = mark.line + 1 if mark and self._with_lines else None
        raise RecipeError([Problem(self._file, line, self._path, message)])

    def _too_deep(self, mark):
        self._refuse(mark, f"YAML nested deeper than {MAX_YAML_DEPTH} levels; refused")

    # the scanner stops at the depth limit too, before it looks further ahead
    def fetch_flow_collection_start(self, token_class):
        if self.flow_level >= MAX_YAML_DEPTH:
            self._too_deep(self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def add_indent(self, column):
        if len(self.indents) >= MAX_YAML_DEPTH:
            self._too_deep(self.get_mark())
        return super().add_indent(column)

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = self.anchors.get(event.anchor)
            if node is not None:
                size = self._sizes.get(id(node))
                if size is None:
                    self._refuse(event.start_mark, f"recursive YAML alias *{event.anchor} "
                                 "(a structure containing itself) is not allowed in a recipe")
                self._total += size
                if self._total > MAX_YAML_NODES:
                    self._refuse(event.start_mark, f"YAML aliases expand to more than "
                                 f"{MAX_YAML_NODES} values (at alias *{event.anchor}); "
                                 "refused (alias bomb?)")
            return super().compose_node(parent, index)
        event = self.peek_event()
        mark, anchor = event.start_mark, event.anchor
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            self._too_deep(mark)
        self._total += 1
        if self._total > MAX_YAML_NODES:
            self._refuse(mark, f"YAML document has more than {MAX_YAML_NODES} values; refused")
        before = self._total
        node = super().compose_node(parent, index)
        self._depth -= 1
        if anchor is not None:
            self._sizes[id(node)] = self._total - before + 1
        return node


def _compose(text: str, file: str, path: str = "", with_lines: bool = True):
    """(root node or None, data) of one YAML document, with bounded work (see _BoundedLoader)."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError([Problem(file, None, path, f"{len(text)} characters of YAML; "
                                   f"recipes are at most {MAX_RECIPE_BYTES} (refused unread)")])
    loader = _BoundedLoader(text, file, path, with_lines)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark and with_lines else None
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise RecipeError([Problem(file, line, path, f"not valid YAML: {problem}")]) from None
    finally:
        loader.dispose()
    return node, data


def parse_yaml(text: str, source: str = "<yaml>", path: str = "") -> Any:
    """One YAML value parsed safely with bounded work (``--set KEY=VALUE`` values).

    Same limits as recipe files: :data:`MAX_RECIPE_BYTES`, :data:`MAX_YAML_NODES`,
    :data:`MAX_YAML_DEPTH`, safe constructors only (a ``!!python/...`` tag is refused).
    Problems are a one-line :class:`RecipeError` naming ``source`` and ``path``
    (``--set: model.width: ...``). An empty text is ``None``.
    """
    return _compose(text, source, path, with_lines=False)[1]


def _parse(text: str, file: str) -> tuple[Any, dict[str, tuple[str, int]]]:
    node, data = _compose(text, file)
    if node is None:
        raise RecipeError([Problem(file, 1, "", "empty recipe: expected a mapping with a "
                                   "'model' key")])
    lines: dict[str, tuple[str, int]] = {}
    seen: set[int] = set()        # collections already walked: an alias is never re-visited

    def walk(n, path):
        if id(n) in seen:
            return
        if isinstance(n, yaml.MappingNode):
            seen.add(id(n))
            for k, v in n.value:
                key = f"{path}.{k.value}" if path else str(k.value)
                lines[key] = (file, k.start_mark.line + 1)
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            seen.add(id(n))
            for i, v in enumerate(n.value):
                key = f"{path}[{i}]"
                lines[key] = (file, v.start_mark.line + 1)
                walk(v, key)

    walk(node, "")
    if not isinstance(data, dict):
        raise RecipeError([Problem(file, node.start_mark.line + 1, "",
                                   "a recipe must be a YAML mapping (with a 'model' key), got a "
                                   f"{type(data).__name__}")])
    return data, lines


def _read(path: Path) -> str:
    """A recipe file's text; refused unread past MAX_RECIPE_BYTES, one line if unreadable."""
    if path.suffix.lower() in (".safetensors", ".pth", ".pt", ".ckpt", ".bin"):
        raise RecipeError([Problem(str(path), None, "", "a checkpoint file, not a recipe: load it "
                                   "with irblocks.load(path) (irblocks checkpoints) or "
                                   "irblocks.convert.load_official_checkpoint")])
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise RecipeError([Problem(str(path), None, "", f"recipe file is {size} bytes; "
                                       f"recipes are at most {MAX_RECIPE_BYTES} (refused unread)")])
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([Problem(str(path), None, "", f"cannot read recipe: {e}")]) from None


def deep_merge(base: Any, over: Any) -> Any:
    """Maps merge recursively; anything else (lists included) is replaced. A component
    mapping whose ``type`` changes is replaced whole (the old parameters belong to
    the old type); a component given by name and overridden by a mapping without
    ``type`` keeps its name (``block: gdfn`` + ``{expansion: 3}``)."""
    if isinstance(base, str) and isinstance(over, dict) and "type" not in over:
        base = {"type": base}
    if isinstance(base, dict) and isinstance(over, dict) and not (
            "type" in base and "type" in over and base["type"] != over["type"]):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


def load(name_or_path: str | Path | dict, _seen: tuple = ()) -> Recipe:
    """Load a recipe (name, path or an already-parsed mapping), following ``extends``.

    A chain that comes back to a file it already read (compared as resolved paths, so
    ``sub/s.yaml`` extending ``../sub/s.yaml`` is caught) or is longer than
    :data:`MAX_EXTENDS` is a one-line :class:`RecipeError`.
    """
    if isinstance(name_or_path, dict):
        data, lines, file = copy.deepcopy(name_or_path), {}, "<dict>"
    else:
        path = find(name_or_path)
        file = str(path)
        data, lines = _parse(_read(Path(path)), file)
        _seen = _seen + (str(Path(path).resolve()),)
    if "extends" in data:
        parent_ref = data.pop("extends")
        origin = lines.get("extends", (file, None))
        if not isinstance(parent_ref, str):
            raise RecipeError(
                [Problem(*origin, "extends", f"expected a recipe name or path (string), "
                         f"got {type(parent_ref).__name__}")])
        rel = Path(file).parent if file != "<dict>" else None
        parent_path = find(parent_ref, rel, "extends", origin)
        if str(Path(parent_path).resolve()) in _seen:
            raise RecipeError([Problem(*origin, "extends", f"circular extends: {parent_ref!r} is "
                                       f"{Path(parent_path).resolve()}, already in the chain")])
        if len(_seen) >= MAX_EXTENDS:
            raise RecipeError([Problem(*origin, "extends", f"extends chain longer than "
                                       f"{MAX_EXTENDS} recipes; refused")])
        parent = load(parent_path, _seen)
        merged_lines = dict(parent.lines)
        merged_lines.update(lines)
        data = deep_merge(parent.data, data)
        lines = merged_lines
    return Recipe(data=data, source=file, lines=lines)


# ----------------------------------------------------------------------------- validation
_type_name = type_name


def _check_value(entry: Entry, key: str, value, path: str, out: list[tuple[str, str]]) -> None:
    p = entry.params[key]
    per_level = isinstance(value, list) and not p.is_sequence
    for v in (value if per_level else [value]):
        msg = value_problem(p, v)
        if msg is not None:
            if not p.is_sequence and not per_level and msg.startswith("expected "):
                head, _, got = msg.partition(", got ")
                msg = f"{head} (or a per-level list of them), got {got}"
            out.append((path, msg))
            return


def check_component(spec, kind: str, path: str, out: list[tuple[str, str]],
                    allow_list: bool = False, ignore: tuple[str, ...] = ()) -> None:
    """Collect (path, message) problems of a component spec, recursively."""
    if spec is None:
        return
    if isinstance(spec, list) and allow_list:
        for i, s in enumerate(spec):
            check_component(s, kind, f"{path}[{i}]", out)
        return
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict):
        if "type" not in spec:
            out.append((path, f"a {kind} mapping needs a 'type' key naming a registered {kind}"))
            return
        name, kwargs = spec["type"], {k: v for k, v in spec.items() if k != "type"
                                      and k not in ignore}
    else:
        out.append(
            (path,
             f"expected a {kind} name or a mapping with 'type', got {type(spec).__name__} "
             f"{spec!r}"))
        return
    try:
        entry = lookup(kind, name)
    except RegistryError as e:
        out.append((f"{path}.type" if isinstance(spec, dict) else path, str(e)))
        return
    params = entry.params
    for k, v in kwargs.items():
        kp = f"{path}.{k}"
        if k not in params:
            allowed = [n for n, p in params.items() if not p.context]
            hint = difflib.get_close_matches(k, allowed, n=1, cutoff=0.5)
            msg = f"unknown parameter of {entry.name}"
            msg += (f"; did you mean {hint[0]!r}?" if hint
                    else f"; parameters: {', '.join(allowed) or '(none)'}")
            out.append((kp, msg))
            continue
        p = params[k]
        if p.context:
            out.append(
                (kp,
                 f"{k!r} is supplied by the container (context) and must not be set in a recipe"))
        elif p.mapping:
            if v is None:
                continue
            if not isinstance(v, dict):
                out.append(
                    (kp,
                     f"expected a mapping of names to {p.component} specs, got {type(v).__name__}"))
                continue
            for name2, s in v.items():
                check_component(s, p.component, f"{kp}.{name2}", out)
        elif p.component:
            check_component(v, p.component, kp, out, allow_list=True)
        else:
            _check_value(entry, k, v, kp, out)
    for n, p in params.items():
        if p.required and not p.context and n not in kwargs:
            out.append(
                (path,
                 f"missing required parameter {n!r} of {entry.name} (expected "
                 f"{_type_name(p.annotation)})"))


def validate(recipe: Recipe) -> list[Problem]:
    """Every problem of a loaded recipe (empty list when it is valid): the registry checks
    ``recipe``/``model``; each other top-level key is checked by the validator its package
    registered (:mod:`irblocks.registry.sections`)."""
    data, found = recipe.data, []
    registered = sections()
    allowed = (*CORE_KEYS, *registered)
    for k in data:
        if k not in allowed:
            hint = difflib.get_close_matches(k, allowed, n=1)
            found.append((k, "unknown top-level key" + (f"; did you mean {hint[0]!r}?" if hint else
                                                         f"; allowed: {', '.join(allowed)}")))
    version = data.get("recipe", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        found.append(
            ("recipe",
             f"unsupported recipe format {version!r}; this irblocks reads format {RECIPE_VERSION}"))
    if "model" not in data:
        found.append(("", "missing required key 'model' (a {type: <model>, ...} mapping)"))
    else:
        check_component(data["model"], "model", "model", found)
    for name, section in registered.items():
        if data.get(name) is not None:
            found += section.check(data[name])
    problems = [Problem(*recipe.where(p), p, msg) for p, msg in found]
    return sorted(problems, key=lambda pr: (pr.file, pr.line or 0))
