"""Input checks shared by blocks and models: one clear line per problem."""
from __future__ import annotations

import torch

__all__ = ["InputError", "check_feature"]


class InputError(ValueError):
    """A tensor that does not fit what a block or model expects (one-line message)."""


def _shape(x) -> str:
    return "x".join(str(s) for s in x.shape)


def check_feature(x: torch.Tensor, channels: int | None, where: str, finite: bool = False) -> None:
    """Check a B x C x H x W floating feature map (cheap: shape/dtype only unless ``finite``)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{where}: expected a torch.Tensor of shape B x C x H x W, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{where}: expected a 4-D tensor B x {channels or 'C'} x H x W, "
                         f"got a {x.dim()}-D tensor of shape {_shape(x)}")
    if channels is not None and x.shape[1] != channels:
        raise InputError(f"{where}: expected {channels} channels (B x {channels} x H x W), "
                         f"got {x.shape[1]} (shape {_shape(x)})")
    if not x.is_floating_point():
        raise InputError(f"{where}: expected a floating-point tensor (float32/float16/bfloat16), "
                         f"got {x.dtype}; convert images with x.float() / 255")
    if finite and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        n = int((~torch.isfinite(x)).sum())
        raise InputError(f"{where}: input contains {n} NaN/Inf values; expected finite values")

