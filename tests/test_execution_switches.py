"""Switches of README's "Execution switches" table that no other test compares."""
from __future__ import annotations

import torch

import irblocks


def test_unet_channels_last_switch_gives_the_same_output_and_gradients():
    torch.manual_seed(0)
    fast = irblocks.create_model("restormer-tiny").train()
    nchw = irblocks.create_model("restormer-tiny", channels_last=False).train()
    assert fast.channels_last and not nchw.channels_last
    nchw.load_state_dict(fast.state_dict())
    x = torch.rand(2, 3, 19, 24)
    out_fast, out_nchw = fast(x), nchw(x)
    torch.testing.assert_close(out_fast, out_nchw, atol=1e-5, rtol=1e-5)
    out_fast.square().mean().backward()
    out_nchw.square().mean().backward()
    for (name, p), q in zip(fast.named_parameters(), nchw.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
