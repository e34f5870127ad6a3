"""Model size: parameters, GMACs/FLOPs (on the meta device), per-stage table.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 per
multiply-add); GMACs = FLOPs / 2 is the fvcore-style count the papers report
(element-wise ops and FFTs are not counted by either).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Summary", "summarize", "count_flops", "format_summary"]


@dataclasses.dataclass
class Summary:
    name: str
    params: int
    trainable: int
    size: tuple[int, int]
    flops: int
    stages: list[tuple[str, int, int]]     # (stage, params, flops)

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9


def count_flops(model: nn.Module, size=(224, 224), batch: int = 1, in_channels: int | None = None) -> tuple[int, dict]:
    """Total FLOPs and FLOPs per module path of one eval forward on a meta input."""
    in_channels = in_channels or getattr(model, "in_channels", 3)
    x = torch.empty(batch, in_channels, *size, device="meta")
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            model(x)
    finally:
        model.train(was)
    per = {}
    for k, ops in fc.get_flop_counts().items():
        per[k] = sum(ops.values())
    return fc.get_total_flops(), per


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
        import copy
        with torch.device("meta"):
            meta_model = copy.deepcopy(model).to("meta")
    else:
        meta_model = model
    total, per = count_flops(meta_model, size)
    root = type(meta_model).__name__
    stages = []
    for child, mod in meta_model.named_children():
        p = sum(t.numel() for t in mod.parameters())
        pre = f"{root}.{child}"
        f = per.get(pre) or sum(v for k, v in per.items()        # ModuleLists are never called:
                                if k.startswith(pre + ".") and "." not in k[len(pre) + 1:])  # sum their items
        if p or f:
            stages.append((child, p, f))
    params = sum(t.numel() for t in model.parameters())
    trainable = sum(t.numel() for t in model.parameters() if t.requires_grad)
    return Summary(name=name, params=params, trainable=trainable, size=tuple(size), flops=total, stages=stages)


def format_summary(s: Summary) -> str:
    lines = [f"model      {s.name}",
             f"params     {s.params:,} ({s.params / 1e6:.3f} M; trainable {s.trainable:,})",
             f"input      1x3x{s.size[0]}x{s.size[1]}",
             f"GMACs      {s.gmacs:.2f}  (fvcore-style, 1 multiply-add = 1)",
             f"GFLOPs     {s.flops / 1e9:.2f}  (FlopCounterMode, 1 multiply-add = 2)",
             "",
             f"{'stage':<16}{'params':>14}{'GMACs':>10}"]
    for st, p, f in s.stages:
        lines.append(f"{st:<16}{p:>14,}{f / 2e9:>10.3f}")
    return "\n".join(lines)
