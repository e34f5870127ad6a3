"""Input checks shared by blocks and models: one clear line per problem.

What :func:`check_feature` decides (the one place blocks and models check inputs):

* not a tensor, not 4-D, wrong channel count, not floating point: :class:`InputError`;
* an empty input (batch 0, height 0 or width 0): :class:`InputError` (there is nothing
  to restore; filter empty batches before the model);
* a floating dtype different from the module's parameters (``dtype=``, passed by the
  models): :class:`InputError` naming both, outside ``torch.autocast``. The input is not
  cast: a silent float64 -> float32 cast would drop precision the caller asked for, and
  a float16 input to a float32 model is usually a forgotten ``model.half()``;
* NaN/Inf values: with ``finite=True`` an :class:`InputError`; otherwise, with
  ``warn_nonfinite=True`` (the models' default), a one-time ``RuntimeWarning`` naming
  ``check_finite`` (one pass over the input per call until it has warned; skipped while
  ``torch.compile`` traces, so compiled graphs get no host sync).
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["InputError", "check_feature"]


class InputError(ValueError):
    """A tensor that does not fit what a block or model expects (one-line message)."""


_nonfinite_warned = False       # one warning per process (see check_feature)


def _shape(x) -> str:
    return "x".join(str(s) for s in x.shape)


def check_feature(x: torch.Tensor, channels: int | None, where: str, finite: bool = False,
                  dtype: torch.dtype | None = None, warn_nonfinite: bool = False) -> None:
    """Check a B x C x H x W floating feature map (see the module docstring).

    Cheap (shape/dtype only) unless ``finite`` or ``warn_nonfinite`` asks for a pass over
    the values. ``dtype``: the parameters' dtype the input must match (outside autocast).
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{where}: expected a torch.Tensor of shape B x C x H x W, got "
                         f"{type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{where}: expected a 4-D tensor B x {channels or 'C'} x H x W, "
                         f"got a {x.dim()}-D tensor of shape {_shape(x)}")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{where}: expected {channels} channels (B x {channels} x H x W), "
                         f"got {x.shape[1]} (shape {_shape(x)})")
    if not x.is_floating_point():
        raise InputError(f"{where}: expected a floating-point tensor (float32/float16/bfloat16), "
                         f"got {x.dtype}; convert images with x.float() / 255")
    if x.shape[0] == 0 or x.shape[2] == 0 or x.shape[3] == 0:
        raise InputError(f"{where}: empty input of shape {_shape(x)}; expected at least one "
                         "image of at least 1x1 pixels")
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise InputError(f"{where}: input dtype {x.dtype} does not match the parameters' {dtype}; "
                         f"convert the input with x.to({dtype}) or the model with .to({x.dtype})")
    if x.device.type == "meta" or not (finite or warn_nonfinite):
        return
    if finite:
        if not bool(torch.isfinite(x).all()):
            n = int((~torch.isfinite(x)).sum())
            raise InputError(f"{where}: input contains {n} NaN/Inf values; expected finite values")
        return
    global _nonfinite_warned
    if _nonfinite_warned or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    if not bool(torch.isfinite(x).all()):
        _nonfinite_warned = True
        n = int((~torch.isfinite(x)).sum())
        warnings.warn(f"{where}: input contains {n} NaN/Inf values, which spread through the "
                      "output; pass check_finite=True to raise an InputError instead "
                      "(warned once per process)", RuntimeWarning, stacklevel=2)
