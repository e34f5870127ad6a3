"""Export a network for deployment: ``torch.export`` programs and ONNX files with dynamic batch,
height and width.

    irblocks export RECIPE_OR_RUN -o model.onnx     # a recipe (random weights) or a trained run

- :func:`export_program`: ``torch.export.export`` of the model in eval mode, every input
  dimension but the channels dynamic (batch 1..1024, height and width 16..8192).
- :func:`export_onnx`: the same program translated to ONNX (``torch.onnx``'s dynamo exporter,
  needs the ``export`` extra: ``pip install 'irblocks[export]'``), written atomically.

Kernels: the exported graph is made of plain PyTorch ops. Export runs the reference path of
every kernel (``IRBLOCKS_KERNELS=reference``, see ``irblocks.kernels._dispatch``), so the
Triton custom ops never enter the graph and onnxruntime runs it on any device. Inputs of any
size >= 16 x 16 work: the padding to a multiple of 8 and the crop back are part of the graph
(``irblocks.unet.pad_to_multiple`` takes an export branch with the same reflect padding).

Not exportable, with the reason (:func:`check_exportable` raises one line):
- ClusIR: it traces only for one batch size and one image size. ``torch.export`` with
  dynamic shapes specialises the batch (the PCGRM router picks experts per image with
  ``topk`` and runs them through ``vmap`` over their gathered weights) and the height and
  width (checked on clusir-tiny). A fixed-size export would not be the "any B x H x W"
  network users run, so it is refused rather than exported half-way.
- ClearAIR: the semantic cross-attention's pattern tokens (``torch.unique`` over the
  region masks) are as many as the distinct mask patterns of the image, so tensor shapes
  depend on the image content (``torch.export`` stops at that count, even at a fixed size).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:          # torch is imported by the functions: `irblocks --help` stays light
    import torch
    from torch import nn

__all__ = ["ExportError", "MIN_SIZE", "MAX_SIZE", "MAX_BATCH", "check_exportable", "export_program",
           "export_onnx", "setup_export", "cmd_export"]

MIN_SIZE = 16      # smallest exported height/width (the latent is then at least 2 x 2)
MAX_SIZE = 8192
MAX_BATCH = 1024


class ExportError(ValueError):
    """The model cannot be exported faithfully (one line saying why)."""


def _blocker(model: nn.Module) -> str | None:
    from irblocks.clearair.sca import SemanticCrossAttention
    from irblocks.clusir.moe import ClusterMoE
    for name, m in model.named_modules():
        if isinstance(m, ClusterMoE):
            return (f"ClusIR routing ({name}: per-image top-k experts run through vmap over their "
                    "gathered weights) traces only for a fixed batch and image size; no dynamic "
                    "export")
        if isinstance(m, SemanticCrossAttention) and m.mode == "pattern":
            return (f"ClearAIR pattern tokens ({name}: torch.unique over the region masks) are as "
                    "many as the image's distinct mask patterns: tensor shapes depend on the "
                    "content")
    return None


def check_exportable(model: nn.Module, what: str = "model") -> None:
    """Raise :class:`ExportError` (one line) when ``model`` contains a block that cannot be
    exported faithfully (see the module docstring)."""
    why = _blocker(model)
    if why is not None:
        raise ExportError(f"{what} cannot be exported: {why}")


@contextlib.contextmanager
def _reference_kernels():
    from irblocks.kernels import ENV
    old = os.environ.get(ENV)
    os.environ[ENV] = "reference"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old


def _example(model: nn.Module) -> torch.Tensor:
    import torch
    p = next(model.parameters(), None)
    channels = getattr(model, "in_channels", 3)
    # batch 2 and 24 x 24: no dimension is 0/1-specialised or a power-of-two coincidence
    return torch.rand(2, channels, 24, 24, device=p.device if p is not None else "cpu",
                      dtype=p.dtype if p is not None else torch.float32)


def _dynamic_shapes():
    import torch
    dim = torch.export.Dim
    return ({0: dim("batch", min=1, max=MAX_BATCH), 2: dim("height", min=MIN_SIZE, max=MAX_SIZE),
             3: dim("width", min=MIN_SIZE, max=MAX_SIZE)},)


def export_program(model: nn.Module, what: str = "model") -> torch.export.ExportedProgram:
    """``torch.export`` program of ``model`` (put in eval mode) taking (B, C, H, W) with dynamic
    B in [1, 1024] and H, W in [16, 8192]; plain PyTorch ops (reference kernels)."""
    import torch
    check_exportable(model, what)
    model.eval()
    with _reference_kernels(), torch.no_grad():
        # size facts the symbolic solver cannot prove for floor-divided padded sizes (e.g.
        # "1 % (112 * ((W + 7) // 8)) != 0" from reshapes after an rfft) stay as runtime checks
        # instead of failing the export
        return torch.export.export(model, (_example(model),), dynamic_shapes=_dynamic_shapes(),
                                   prefer_deferred_runtime_asserts_over_guards=True)


def export_onnx(model: nn.Module, path: str | os.PathLike, what: str = "model",
                program: torch.export.ExportedProgram | None = None) -> Path:
    """Write ``model`` as ONNX to ``path`` (input ``image`` (B, C, H, W) -> ``restored``, dynamic
    batch, height and width); atomic: nothing is left at ``path`` on failure."""
    import torch

    from irblocks.train.imageio import atomic_path
    from irblocks.train.runlog import require_extra
    require_extra("onnx", "export", "ONNX export")
    require_extra("onnxscript", "export", "ONNX export")
    if program is None:
        program = export_program(model, what)
    path = Path(path)
    with _reference_kernels():
        onx = torch.onnx.export(program, (_example(model),), input_names=["image"],
                                output_names=["restored"], dynamo=True, verbose=False)
    onx.optimize()
    with atomic_path(path) as tmp:
        onx.save(str(tmp))
    return path


# --------------------------------------------------------------------------- command line
def setup_export(p) -> None:
    p.add_argument("model", metavar="RECIPE_OR_RUN",
                   help="a recipe name or YAML (random weights, seeded by --seed), a .safetensors "
                        "checkpoint or a training folder")
    p.add_argument("-o", "--out", required=True, help="ONNX file to write (e.g. model.onnx)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random weights of a recipe (default 0)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from irblocks.cli_visual import load_for_diagnosis
    from irblocks.train.runlog import require_extra
    require_extra("onnx", "export", "ONNX export")            # before any slow work
    require_extra("onnxscript", "export", "ONNX export")
    model, label = load_for_diagnosis(args.model, args.seed)
    check_exportable(model, args.model)
    path = export_onnx(model, args.out, args.model)
    print(f"wrote {path} ({label}; input 'image' B x {getattr(model, 'in_channels', 3)} x H x W, "
          f"B <= {MAX_BATCH}, {MIN_SIZE} <= H, W <= {MAX_SIZE})")
    return 0
