"""The ``irblocks`` command line.

    irblocks list [KIND] [PATTERN]       registered entries (recipes with KIND=recipe)
    irblocks info NAME                   signature, schema, source file, docstring
    irblocks summary RECIPE [--size H W] parameters, GMACs and FLOPs, per-stage table
    irblocks check RECIPE                validate a recipe, every problem at once
    irblocks schema [-o FILE]            JSON Schema of recipes and all registered entries
    irblocks convert ARCH SRC DST        official checkpoint -> irblocks safetensors
    irblocks bench [-o FILE]             run the kernel/model benchmarks, write JSON
    irblocks export RECIPE_OR_RUN -o F   ONNX file, dynamic batch/height/width (extra [export])

plus ``train``, ``eval``, ``restore`` and ``demo`` (see ``irblocks demo -h``), and ``plot``
and ``diagnose`` (training curves, pictures of routing / masks / spectra).

Conventions: ``irblocks --help`` and ``--version`` import nothing heavy (each
subcommand's module is imported only when that subcommand runs: see
:data:`COMMANDS`). Exit status 0 on success, 1 when a problem is found or the
command fails (one line per problem: ``irblocks: error: ...``, no traceback),
2 for usage errors (argparse), 130 when interrupted.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys

__all__ = ["main", "build_parser", "COMMANDS", "Command", "positive_int"]


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help and ``"module:function"``, the function that adds its
    arguments to an ``argparse`` parser and sets ``func`` (``parser.set_defaults(func=run)``;
    ``run(args)`` returns the exit status). The module is imported only when the command runs.
    ``raw`` commands get the remaining arguments unparsed (``function(argv) -> int``).
    ``runs_networks`` commands keep freed memory in the heap before they run
    (:func:`irblocks.allocator.keep_freed_memory`; ``IRBLOCKS_MALLOC=system`` turns it off)."""
    help: str
    setup: str
    raw: bool = False
    runs_networks: bool = False


# Adding a subcommand: one line here, plus a ``setup_<name>(parser)`` in your module that
# imports nothing heavy at module level (CONTRIBUTING.md, "Command line").
COMMANDS: dict[str, Command] = {
    "list": Command("list registered entries and recipes", "irblocks.cli:setup_list"),
    "info": Command("signature, schema, source and docstring of an entry",
                    "irblocks.cli:setup_info"),
    "summary": Command("parameters, GMACs/FLOPs and per-stage table of a recipe",
                       "irblocks.cli:setup_summary"),
    "check": Command("validate a recipe and report every problem", "irblocks.cli:setup_check"),
    "schema": Command("JSON Schema of recipe files and registered entries",
                      "irblocks.cli:setup_schema"),
    "convert": Command("convert an official checkpoint to an irblocks safetensors file",
                       "irblocks.cli:setup_convert"),
    "bench": Command("run the pytest-benchmark suite and write a JSON result file (irblocks bench "
                     "-h)",
                     "irblocks.bench:main", raw=True),
    "train": Command("train a recipe's model (single process, or multi-GPU/-node under torchrun)",
                     "irblocks.train.cli:setup_train", runs_networks=True),
    "eval": Command("per-task PSNR/SSIM of a checkpoint (table + JSON)",
                    "irblocks.train.cli:setup_eval", runs_networks=True),
    "restore": Command("restore image files or folders with a checkpoint",
                       "irblocks.train.cli:setup_restore", runs_networks=True),
    "demo": Command("train anyir-tiny on noisy natural images for ~2 minutes and restore a "
                    "held-out one",
                    "irblocks.train.cli:setup_demo", runs_networks=True),
    "export": Command("export a recipe or trained run to ONNX (dynamic batch, height, width)",
                      "irblocks.export:setup_export"),
    "plot": Command("loss / PSNR / learning-rate curves of a training run as a PNG",
                    "irblocks.cli_visual:setup_plot"),
    "diagnose": Command("labelled pictures (routing, masks, spectra...) and numbers of a network "
                        "on one image", "irblocks.cli_visual:setup_diagnose"),
}


def _resolve(setup: str):
    module, _, func = setup.partition(":")
    return getattr(importlib.import_module(module), func)


def positive_int(text: str) -> int:
    """argparse ``type=`` for sizes and counts (> 0)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


# --------------------------------------------------------------------------- list
def setup_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", default=None,
                   help="block|model|kernel|loss|prior|degradation|recipe|all, or a wildcard "
                        "pattern")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. '*norm*'")
    p.set_defaults(func=cmd_list)


def _is_pattern(s: str) -> bool:
    return any(c in s for c in "*?[")


def cmd_list(args) -> int:
    import irblocks
    from irblocks import registry
    kind, pattern = args.kind, args.pattern
    choices = (*registry.KINDS, "recipe", "recipes", "all")
    if kind is not None and kind not in choices:
        if _is_pattern(kind) and pattern == "*":
            kind, pattern = None, kind           # `irblocks list '*norm*'`
        else:
            import difflib
            hint = difflib.get_close_matches(kind, choices, n=1, cutoff=0.5)
            raise ValueError("unknown kind "
                             f"{kind!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
                             + f" (kinds: {', '.join(registry.KINDS)}, recipe, all; "
                             f"or a wildcard pattern such as '*{kind}*')")
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


# --------------------------------------------------------------------------- info
def setup_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--json", action="store_true",
                   help="print everything (with the JSON schema) as JSON")
    p.set_defaults(func=cmd_info)


def _width() -> int:
    import shutil
    return max(40, min(100, shutil.get_terminal_size((100, 24)).columns))


def _wrap_signature(sig: str, width: int) -> str:
    """``name(a: int = 1, ...)`` on one line if it fits, else one parameter per line."""
    if len(sig) + len("signature: ") <= width:
        return sig
    head, _, rest = sig.partition("(")
    parts, depth, cur = [], 0, ""
    for ch in rest[:-1]:              # split on top-level commas
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return head + "(\n" + "".join(f"    {p},\n" for p in parts) + ")"


def cmd_info(args) -> int:
    import textwrap

    from irblocks import registry
    width = _width()
    try:
        d = registry.info(args.name)
    except registry.RegistryError:
        import irblocks
        if not irblocks.is_model(args.name):
            raise
        r = irblocks.resolve_recipe(args.name)
        print(f"recipe {args.name}  ({r.source})")
        desc = " ".join((r.data.get("description") or "").split())
        print(textwrap.fill(desc, width) if desc else "")
        return 0
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    aliases = f"  (aliases: {', '.join(d['aliases'])})" if d["aliases"] else ""
    print(f"{d['kind']} {d['name']}{aliases}")
    print(f"signature: {_wrap_signature(d['signature'], width)}")
    if d["context"]:
        print(f"context (supplied by the container): {', '.join(d['context'])}")
    print(f"source: {d['source']}")
    print()
    print(d["doc"])
    return 0


# ------------------------------------------------------------------------- summary / check / schema
def setup_summary(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe name (irblocks list recipe) or YAML path")
    p.add_argument("--size", nargs=2, type=positive_int, default=[224, 224], metavar=("H", "W"))
    p.set_defaults(func=cmd_summary)


def cmd_summary(args) -> int:
    import torch

    from irblocks.api import create_model
    from irblocks.progress import progress
    from irblocks.summary import format_summary, summarize
    with progress(total=2, desc="summary", unit="step", leave=False, terminal_only=True) as bar:
        bar.set_postfix_str("building the model on meta")
        with torch.device("meta"):
            model = create_model(args.recipe)
        bar.update(1)
        bar.set_postfix_str("counting FLOPs")
        s = summarize(model, size=tuple(args.size))
        bar.update(1)
    print(format_summary(s))
    return 0


def setup_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe")
    p.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from irblocks.api import check_recipe
    from irblocks.progress import progress
    with progress(total=2, desc="check", unit="step", leave=False, terminal_only=True) as bar:
        bar.set_postfix_str("validating the recipe")
        problems = check_recipe(args.recipe)
        bar.update(1)
        if not problems:
            import torch

            import irblocks
            bar.set_postfix_str("building the model on meta")
            # constructor-level checks (divisibility, wiring) without allocating
            with torch.device("meta"):
                irblocks.create_model(args.recipe)
            bar.update(1)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        print(f"irblocks: {len(problems)} problem(s) in {args.recipe}", file=sys.stderr)
        return 1
    print(f"{args.recipe}: ok")
    return 0


def setup_schema(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=None, help="write the schema to this file")
    p.set_defaults(func=cmd_schema)


def cmd_schema(args) -> int:
    from irblocks.registry.schema import recipe_schema
    text = json.dumps(recipe_schema(), indent=2)
    if args.output:
        from irblocks.atomic import atomic_path
        with atomic_path(args.output) as tmp:
            tmp.write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


# --------------------------------------------------------------------------- convert
def setup_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", help="restormer | promptir | anyir")
    p.add_argument("src",
                   help="official checkpoint (.pth/.ckpt loaded with weights_only=True, or "
                        ".safetensors)")
    p.add_argument("dst", help="output .safetensors")
    p.add_argument("--config", default=None,
                   help="official constructor kwargs as JSON or a JSON file")
    p.set_defaults(func=cmd_convert)


def cmd_convert(args) -> int:
    from irblocks.convert import convert_file
    from irblocks.registry.recipe import parse_yaml
    config = None
    if args.config:      # JSON (a YAML subset): the bounded safe parser, one line on error
        if os.path.isfile(args.config):
            with open(args.config, encoding="utf-8") as f:
                config = parse_yaml(f.read(), args.config, "--config")
        else:
            config = parse_yaml(args.config, "irblocks convert", "--config")
    from irblocks.progress import progress
    with progress(total=1, desc="convert", unit="file", leave=False, terminal_only=True) as bar:
        bar.set_postfix_str(f"{os.path.basename(args.src)} -> {os.path.basename(args.dst)}")
        model = convert_file(args.arch, args.src, args.dst, config)
        bar.update(1)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.dst} ({args.arch}, {n:,} parameters); load it with "
          f"irblocks.load({args.dst!r})")
    return 0


# --------------------------------------------------------------------------- main
def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s arguments are set up (its module imported)."""
    import irblocks
    p = argparse.ArgumentParser(prog="irblocks",
                                description="irblocks: blocks, recipes and kernels for "
                                "all-in-one image restoration")
    p.add_argument("--version", action="version", version=f"irblocks {irblocks.__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, c in COMMANDS.items():
        s = sub.add_parser(name, help=c.help, description=c.help[:1].upper() + c.help[1:] + ".",
                           add_help=not c.raw)
        if name == command and not c.raw:
            _resolve(c.setup)(s)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    # Every irblocks error is a ValueError (ConfigError, RecipeError, InputError, CheckpointError,
    # TrainError, ...) or a LookupError (RegistryError); missing optional extras are ImportErrors.
    return (ValueError, LookupError, OSError, TypeError, ImportError)


def _one_line(e: BaseException) -> str:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    lines = str(msg).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    try:
        c = COMMANDS.get(command) if command else None
        if c is not None and c.raw:
            return int(_resolve(c.setup)(argv[1:]) or 0)
        parser = build_parser(command)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:       # --help, --version (0) and usage errors (2) as a status
            return e.code if isinstance(e.code, int) else 2
        if not getattr(args, "func", None):
            parser.print_help()
            return 0
        if c is not None and c.runs_networks:
            from irblocks.allocator import keep_freed_memory
            keep_freed_memory()
        code = int(args.func(args) or 0)
        sys.stdout.flush()            # a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:           # `irblocks schema | head`: the reader left; stop quietly
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except KeyboardInterrupt:
        print("irblocks: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as e:
        problems = getattr(e, "problems", None)      # RecipeError: one line per problem
        for line in ([str(p) for p in problems] if problems else [_one_line(e)]):
            print(f"irblocks: error: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
