"""Model size: parameters, GMACs/FLOPs (on the meta device), and where they go.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 per
multiply-add); GMACs = FLOPs / 2 is the fvcore-style count the papers report
(element-wise ops and FFTs are not counted by either). Routed blocks count
only the experts a forward runs.

The table lists the model's stages in the order a forward runs them
(``ModuleList`` items one by one: ``encoders.0``, ``downs.0``, ...), each with
its output map (C x H x W), parameters, *idle* parameters (experts that a
routed block holds but a forward does not run), GMACs and share of the total;
below each stage, the blocks inside it that carry at least 0.5% of the model's
GMACs or parameters (the rest folded into one ``(N more)`` line). A module that
blocks call from inside (a ``shared`` one) keeps its parameters in its own row and
its GMACs in its callers' rows, so every column sums to the total. Then the same
totals grouped by block type (WaveletBlock, ClusterMoE, Upsample, ...), which is
what a reader checks against a paper's budget.
"""
from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Summary", "Row", "summarize", "count_flops", "format_summary", "idle_parameters",
           "by_kind"]

DETAIL_SHARE = 0.005     # sub-rows under this share of both GMACs and params fold into "(N more)"


@dataclasses.dataclass
class Row:
    """One line of the table: a stage (depth 0) or a block inside it (depth 1)."""
    path: str                               # module path, e.g. "encoders.0.blocks.1"
    kind: str                               # class name
    depth: int
    params: int
    idle: int                               # parameters a forward does not run
    flops: int                              # FlopCounterMode FLOPs (2 per multiply-add)
    shape: tuple[int, ...] | None = None    # output (C, H, W) of a batch-1 forward
    note: str = ""


@dataclasses.dataclass
class Summary:
    name: str
    params: int
    trainable: int
    size: tuple[int, int]
    flops: int
    stages: list[tuple[str, int, int]]      # (stage, params, flops), stages in module order
    rows: list[Row] = dataclasses.field(default_factory=list)
    idle: int = 0                           # parameters no forward runs (unpicked experts)

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


def idle_parameters(module: nn.Module) -> tuple[int, str]:
    """Parameters of ``module`` that one forward does not run, and a note saying why.

    A routed block declares ``routed_experts() -> (run, pool, params_per_expert)``: one
    sample runs ``run`` of the ``pool`` experts, so the other experts' parameters are idle
    (``ClusterMoE`` does; a new routed block implements the same method). Sums over nested
    routed blocks.
    """
    idle, notes = 0, []
    for m in module.modules():
        routed = getattr(m, "routed_experts", None)
        if not callable(routed):
            continue
        run, pool, per = routed()
        idle += (pool - run) * per
        notes.append(f"{run} of {pool} experts run")
    return idle, "; ".join(dict.fromkeys(notes))


def count_flops(model: nn.Module, size=(224, 224), batch: int = 1,
                in_channels: int | None = None) -> tuple[int, dict]:
    """Total FLOPs and FLOPs per module path of one eval forward on a meta input."""
    total, per, *_ = _trace(model, size, batch, in_channels)
    return total, per


def _trace(model: nn.Module, size, batch: int = 1, in_channels: int | None = None):
    """One eval forward on meta: total FLOPs, FLOPs per path, call order, output shapes, and
    ``nested``: top-level units (see :func:`_units`) called while another one runs (modules
    ``shared`` by blocks), mapped to that caller."""
    in_channels = in_channels or getattr(model, "in_channels", 3)
    x = torch.empty(batch, in_channels, *size, device="meta")
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    names = {id(m): n for n, m in model.named_modules()}
    top = {id(m) for _, m in _units(model, "")}
    running: list[str] = []
    nested: dict[str, str] = {}

    def pre(mod, args):
        n = names[id(mod)]
        if running:
            nested.setdefault(n, running[0])
        running.append(n)

    def hook(mod, args, out):
        n = names.get(id(mod))
        if n is None:
            return
        if id(mod) in top:
            running.pop()
        if n not in shapes:
            order.append(n)
        if isinstance(out, torch.Tensor) and out.dim() == 4:
            shapes[n] = tuple(out.shape[1:])
        else:
            shapes.setdefault(n, None)

    handles = [m.register_forward_hook(hook) for n, m in model.named_modules() if n]
    handles += [m.register_forward_pre_hook(pre) for n, m in model.named_modules() if id(m) in top]
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    per = {k: sum(ops.values()) for k, ops in fc.get_flop_counts().items()}
    return fc.get_total_flops(), per, order, shapes, nested


def _units(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """Children of ``module`` with ModuleLists expanded into their items."""
    out = []
    for n, c in module.named_children():
        path = f"{prefix}.{n}" if prefix else n
        if isinstance(c, (nn.ModuleList, nn.ModuleDict)):
            out += [(f"{path}.{k}", m) for k, m in c.named_children()]
        else:
            out.append((path, c))
    return out


def _flops_of(per: dict, root: str, path: str) -> int:
    key = f"{root}.{path}"
    if key in per:
        return per[key]
    # a container never called itself (ModuleList): the sum of its direct items
    return sum(v for k, v in per.items() if k.startswith(key + ".") and "." not in k[len(key) + 1:])


def summarize(model_or_recipe, size=(224, 224), name: str | None = None) -> Summary:
    """Summary of a model or a recipe (recipes are built on the meta device)."""
    if isinstance(model_or_recipe, nn.Module):
        model = model_or_recipe
        name = name or getattr(model, "_irblocks_recipe_name", type(model).__name__)
    else:
        from irblocks.api import create_model
        with torch.device("meta"):
            model = create_model(model_or_recipe)
        name = name or getattr(model, "_irblocks_recipe_name", str(model_or_recipe))
    on_meta = next(iter(model.parameters()), torch.empty(0)).device.type == "meta"
    if not on_meta:
        with torch.device("meta"):
            meta_model = copy.deepcopy(model).to("meta")
    else:
        meta_model = model
    total, per, order, shapes, nested = _trace(meta_model, size)
    root = type(meta_model).__name__
    rank = {n: i for i, n in enumerate(order)}

    def first_call(path: str) -> int:
        hits = [i for n, i in rank.items() if n == path or n.startswith(path + ".")]
        return min(hits) if hits else len(rank)

    def row(path: str, mod: nn.Module, depth: int) -> Row:
        idle, note = idle_parameters(mod)
        level = getattr(mod, "level", None)
        if isinstance(level, int) and not isinstance(level, bool):
            note = f"level {level}" + (f"; {note}" if note else "")
        tokens = isinstance(mod, (nn.Linear, nn.LayerNorm))       # (B, H, W, C): not C x H x W
        shape = None if tokens else shapes.get(path)
        return Row(path, type(mod).__name__, depth, sum(t.numel() for t in mod.parameters()), idle,
                   _flops_of(per, root, path), shape, note)

    stages, rows = [], []
    for child, mod in meta_model.named_children():
        p, f = sum(t.numel() for t in mod.parameters()), _flops_of(per, root, child)
        if p or f:
            stages.append((child, p, f))
    params = sum(t.numel() for t in model.parameters())

    def in_order(units):
        return sorted(units, key=lambda pm: first_call(pm[0]))

    for path, mod in in_order(_units(meta_model, "")):
        r = row(path, mod, 0)
        if not (r.params or r.flops):
            continue
        rows.append(r)
        if path in nested:          # a shared module: its MACs are counted in its caller's row
            r.note = (f"shared, runs inside its callers (first {nested[path]}), whose rows count "
                      f"its {r.flops / 2e9:.3f} GMACs" + (f"; {r.note}" if r.note else ""))
            r.flops = 0
            continue
        subs = [row(p, m, 1) for p, m in in_order(_units(mod, path))]
        subs = [s for s in subs if s.params or s.flops]
        one_block = len(subs) == 1 and isinstance(getattr(mod, "blocks", None), nn.ModuleList)
        if len(subs) < 2 and not one_block:         # one child is shown for a stage of blocks only
            continue
        big = [s for s in subs if s.flops >= DETAIL_SHARE * max(total, 1)
               or s.params >= DETAIL_SHARE * max(params, 1)]
        if not big:
            continue
        rows += big
        # the rest: the small children plus what the stage computes itself (e.g. its attention)
        rest = Row(f"{path}.*", f"({len(subs) - len(big)} more)", 1,
                   r.params - sum(b.params for b in big), r.idle - sum(b.idle for b in big),
                   r.flops - sum(b.flops for b in big), note=f"rest of {r.kind}")
        if rest.params or rest.flops:
            rows.append(rest)
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    idle = idle_parameters(meta_model)[0]
    return Summary(name=name, params=params, trainable=trainable, size=tuple(size), flops=total,
                   stages=stages, rows=rows, idle=idle)


def by_kind(s: Summary) -> list[tuple[str, int, int, int, int]]:
    """(block type, count, params, idle, flops) over the table's finest rows, most GMACs first.
    A stage's folded ``(N more)`` line counts as its stage's type."""
    groups: dict[str, list[int]] = {}
    rows = s.rows
    for i, r in enumerate(rows):
        folded = r.kind.startswith("(")
        g = groups.setdefault(r.note[len("rest of "):] if folded else r.kind, [0, 0, 0, 0])
        g[0] += 0 if folded else 1
        if r.depth == 0 and i + 1 < len(rows) and rows[i + 1].depth == 1:
            continue                                    # its costs are in the rows below it
        g[1] += r.params
        g[2] += r.idle
        g[3] += r.flops
    return sorted(((k, *v) for k, v in groups.items() if v[1] or v[3]), key=lambda t: -t[4])


def format_summary(s: Summary) -> str:
    lines = [f"model      {s.name}",
             f"params     {s.params:,} ({s.params / 1e6:.3f} M; trainable {s.trainable:,})"]
    if s.idle:
        run = s.params - s.idle
        lines.append(f"run        {run:,} ({run / 1e6:.3f} M) params per forward; {s.idle:,} "
                     f"({s.idle / max(s.params, 1):.0%}) are experts the router does not pick")
    lines += [f"input      1x3x{s.size[0]}x{s.size[1]}",
              f"GMACs      {s.gmacs:.2f}  (fvcore-style, 1 multiply-add = 1)",
              f"GFLOPs     {s.flops / 1e9:.2f}  (FlopCounterMode, 1 multiply-add = 2)",
              f"MACs/param {s.flops / 2 / max(s.params, 1):.0f}",
              ""]
    rows = s.rows or [Row(n, "", 0, p, 0, f) for n, p, f in s.stages]
    w = max([len("  " * r.depth + r.path) for r in rows] + [5]) + 2
    k = max([len(r.kind) for r in rows] + [5]) + 2

    def cols(params: int, idle: int, flops: int) -> str:
        return (f"{params:>14,}{(f'{idle:,}' if idle else ''):>13}{flops / 2e9:>9.3f}"
                f"{flops / max(s.flops, 1):>7.1%}")

    head = f"{'params':>14}{'idle':>13}{'GMACs':>9}{'share':>7}"
    lines.append(f"{'stage':<{w}}{'block':<{k}}{'output':>14}{head}  note")
    for r in rows:
        shape = "x".join(str(v) for v in r.shape) if r.shape else ""
        lines.append(f"{'  ' * r.depth + r.path:<{w}}{r.kind:<{k}}{shape:>14}"
                     f"{cols(r.params, r.idle, r.flops)}  {r.note}".rstrip())
    lines.append(f"{'total':<{w + k + 14}}{cols(s.params, s.idle, s.flops)}")
    if s.rows:
        lines += ["", f"{'by block type':<{w + k}}{'count':>14}{head}"]
        for kind, n, p, idle, f in by_kind(s):
            lines.append(f"{kind:<{w + k}}{(n or ''):>14}{cols(p, idle, f)}")
    return "\n".join(lines)
