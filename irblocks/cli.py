"""The ``irblocks`` command line.

    irblocks list [KIND] [PATTERN]       registered entries (recipes with KIND=recipe)
    irblocks info NAME                   signature, schema, source file, docstring
    irblocks summary RECIPE [--size H W] parameters, GMACs and FLOPs, per-stage table
    irblocks check RECIPE                validate a recipe, every problem at once
    irblocks schema [-o FILE]            JSON Schema of recipes and all registered entries
    irblocks convert ARCH SRC DST        official checkpoint -> irblocks safetensors
    irblocks bench [-o FILE]             run the kernel/model benchmarks, write JSON

plus ``train``, ``eval``, ``restore`` and ``demo`` (see ``irblocks demo -h``).
Errors print one line (``irblocks: error: ...``) and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["main", "build_parser"]


def _cmd_list(args) -> int:
    import irblocks
    from irblocks import registry
    kind, pattern = args.kind, args.pattern
    if kind and kind not in registry.KINDS and kind not in ("recipe", "recipes", "all") and pattern == "*":
        kind, pattern = None, kind           # `irblocks list '*norm*'`
    if kind in ("recipe", "recipes"):
        for n in irblocks.list_models(pattern):
            print(n)
        return 0
    kinds = registry.KINDS if kind in (None, "all") else (kind,)
    for k in kinds:
        names = registry.list(k, pattern)
        if names:
            print(f"{k}:")
            for n in names:
                print(f"  {n}")
    if kind in (None, "all"):
        recs = irblocks.list_models(pattern)
        if recs:
            print("recipe:")
            for n in recs:
                print(f"  {n}")
    return 0


def _cmd_info(args) -> int:
    from irblocks import registry
    try:
        d = registry.info(args.name)
    except registry.RegistryError:
        import irblocks
        if args.name in irblocks.list_models():
            r = irblocks.resolve_recipe(args.name)
            print(f"recipe {args.name}  ({r.source})")
            print((r.data.get("description") or "").strip())
            return 0
        raise
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"{d['kind']} {d['name']}" + (f"  (aliases: {', '.join(d['aliases'])})" if d["aliases"] else ""))
    print(f"signature: {d['signature']}")
    if d["context"]:
        print(f"context (supplied by the container): {', '.join(d['context'])}")
    print(f"source: {d['source']}")
    print()
    print(d["doc"])
    return 0


def _cmd_summary(args) -> int:
    from irblocks.summary import format_summary, summarize
    print(format_summary(summarize(args.recipe, size=tuple(args.size))))
    return 0


def _cmd_check(args) -> int:
    from irblocks.api import check_recipe
    problems = check_recipe(args.recipe)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"irblocks: {len(problems)} problem(s) in {args.recipe}", file=sys.stderr)
        return 1
    import torch

    import irblocks
    with torch.device("meta"):      # constructor-level checks (divisibility, wiring) without allocating
        irblocks.create_model(args.recipe)
    print(f"{args.recipe}: ok")
    return 0


def _cmd_schema(args) -> int:
    from irblocks.registry.schema import recipe_schema
    text = json.dumps(recipe_schema(), indent=2)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


def _cmd_convert(args) -> int:
    from irblocks.convert import convert_file
    config = None
    if args.config:
        import os
        config = json.load(open(args.config)) if os.path.isfile(args.config) else json.loads(args.config)
    model = convert_file(args.arch, args.src, args.dst, config)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst} ({args.arch}, {n:,} parameters); load it with irblocks.load({args.dst!r})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="irblocks", description="irblocks: blocks, recipes and kernels for "
                                "all-in-one image restoration")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    s = sub.add_parser("list", help="list registered entries and recipes")
    s.add_argument("kind", nargs="?", default=None, help="block|model|kernel|loss|prior|degradation|recipe")
    s.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. '*norm*'")
    s.set_defaults(func=_cmd_list)
    s = sub.add_parser("info", help="signature, schema, source and docstring of an entry")
    s.add_argument("name")
    s.add_argument("--json", action="store_true", help="print everything (with the JSON schema) as JSON")
    s.set_defaults(func=_cmd_info)
    s = sub.add_parser("summary", help="parameters, GMACs/FLOPs and per-stage table of a recipe")
    s.add_argument("recipe", help="recipe name (irblocks list recipe) or YAML path")
    s.add_argument("--size", nargs=2, type=int, default=[224, 224], metavar=("H", "W"))
    s.set_defaults(func=_cmd_summary)
    s = sub.add_parser("check", help="validate a recipe and report every problem")
    s.add_argument("recipe")
    s.set_defaults(func=_cmd_check)
    s = sub.add_parser("schema", help="JSON Schema of recipe files and registered entries")
    s.add_argument("-o", "--output", default=None)
    s.set_defaults(func=_cmd_schema)
    s = sub.add_parser("convert", help="convert an official checkpoint to an irblocks safetensors file")
    s.add_argument("arch", help="restormer | promptir | anyir")
    s.add_argument("src", help="official checkpoint (.pth/.ckpt loaded with weights_only=True, or .safetensors)")
    s.add_argument("dst", help="output .safetensors")
    s.add_argument("--config", default=None, help="official constructor kwargs as JSON or a JSON file")
    s.set_defaults(func=_cmd_convert)
    sub.add_parser("bench", help="run the pytest-benchmark suite and write a JSON result file "
                   "(irblocks bench -h)", add_help=False)
    try:
        from irblocks.train import cli as train_cli
    except ImportError:
        train_cli = None
    if train_cli is not None and hasattr(train_cli, "add_parsers"):
        train_cli.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:          # its options belong to pytest-benchmark's runner
        from irblocks import bench
        return bench.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from irblocks.errors import InputError
    from irblocks.registry import ConfigError, RegistryError
    from irblocks.registry.recipe import RecipeError
    try:
        return int(args.func(args) or 0)
    except RecipeError as e:
        for pr in e.problems:
            print(f"irblocks: error: {pr}", file=sys.stderr)
        return 2
    except (RegistryError, ConfigError, InputError, ValueError, FileNotFoundError, KeyError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"irblocks: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("irblocks: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
