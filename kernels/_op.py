"""The custom-op boilerplate every kernel file needs, written once.

A kernel's Triton path is exposed as ``torch.library`` custom ops (``irblocks::<name>``) so
autograd, ``torch.compile`` (fake tensors), ``torch.export`` and ``FlopCounterMode`` handle
it like a built-in op. Each op needs the same four registrations: the op itself (no
mutated inputs), a fake implementation (output shapes, dtypes and memory formats without
running anything), optionally an autograd formula, and a FLOP formula. ``kernel_op`` does
all four::

    def _fake(x):                                   # same arguments as the op
        return torch.empty_like(x)

    def _setup(ctx, inputs, output):                # save what the backward needs
        ctx.save_for_backward(inputs[0])

    def _backward(ctx, dy):                         # one gradient per op input (None if none)
        (x,) = ctx.saved_tensors
        return _my_op_bwd(dy, x)

    @kernel_op("my_op", fake=_fake, backward=_backward, setup_context=_setup)
    def _my_op(x: torch.Tensor) -> torch.Tensor:    # type hints define the op schema
        return _fwd_triton(x)

``flops`` is the FLOP formula ``(*input_shapes, out_shape=..., **kwargs) -> int``
(``torch.utils.flop_counter`` convention, 2 FLOPs per multiply-add); the default counts 0,
the convention for element-wise ops and reductions (fvcore, FlopCounterMode). Re-importing
a kernel module keeps the first FLOP formula instead of failing.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import flop_registry, register_flop_formula

__all__ = ["kernel_op", "zero_flops"]

NAMESPACE = "irblocks"


def zero_flops(*args, out_shape=None, **kwargs) -> int:
    """FLOP formula of element-wise ops and reductions: not counted."""
    return 0


def kernel_op(name: str, *, fake: Callable, backward: Callable | None = None,
              setup_context: Callable | None = None, flops: Callable = zero_flops):
    """Decorator: register ``fn`` as the custom op ``irblocks::<name>`` with its fake
    implementation, autograd formula (``backward`` + ``setup_context``, both optional) and
    FLOP formula. Returns the op (call it like ``fn``; also ``torch.ops.irblocks.<name>``)."""
    def wrap(fn: Callable) -> torch.library.CustomOpDef:
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=())
        op.register_fake(fake)
        if backward is not None:
            op.register_autograd(backward, setup_context=setup_context)
        packet = getattr(getattr(torch.ops, NAMESPACE), name)
        if packet.default not in flop_registry:
            register_flop_formula(packet)(flops)
        return op
    return wrap
