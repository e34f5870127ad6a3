"""Toy prior and guidance blocks for the guidance-flow tests (tests/test_guidance.py), registered
on import. Every test module that parametrizes over ``registry.list("block")`` imports this
module too (tests/test_blocks_and_models.py), so the registered set, and with it the collected
tests, does not depend on which other test files are in the session.
"""
import torch
from torch import nn

from irblocks import registry
from irblocks.guidance import GuidedBlock
from irblocks.registry import Context

CALLS = {"prior": 0, "shapes": []}


@registry.register("prior", "toy_colour_stats")
class ToyColourStats(nn.Module):
    """Parameter-free prior: per-channel mean and std of the image. (B,3,H,W) -> {stats: B x 6}."""

    def __init__(self):
        super().__init__()

    def provides(self):
        return {"stats"}

    def forward(self, img):
        CALLS["prior"] += 1
        CALLS["shapes"].append(tuple(img.shape))
        return {"stats": torch.cat([img.mean((2, 3)), img.std((2, 3))], 1)}


@registry.register("block", "toy_adapter")
class ToyAdapter(nn.Module):
    """Shared trainable module: Linear 6 -> 8."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 8)

    def example_inputs(self, batch: int = 1, height: int = 8,
                       width: int = 8) -> tuple[torch.Tensor]:
        """(B, 6) colour statistics (the spatial size is unused)."""
        return (torch.randn(batch, 6),)

    def forward(self, s):
        return self.lin(s)


@registry.register("block", "toy_film")
class ToyFiLM(GuidedBlock):
    """Reads prior.stats through the shared adapter; FiLM on the feature. (B,C,H,W) -> same."""

    def __init__(self, dim: Context[int], shared: Context[nn.ModuleDict] = None):
        super().__init__()
        self._shared = [shared["adapter"]]          # a reference, owned by the model
        self.to_scale = nn.Linear(8, dim)

    def guidance_io(self):
        return set(), {"prior.stats"}

    def forward(self, x, guidance):
        e = self._shared[0](guidance.get("prior.stats"))
        return x * (1 + self.to_scale(e)[:, :, None, None])


@registry.register("block", "toy_prompt_producer")
class ToyPromptProducer(GuidedBlock):
    """Writes prompt.enc<level> = GAP(x) (B x C); identity on the feature."""

    def __init__(self, dim: Context[int], level: Context[int] = 0):
        super().__init__()
        self.key = f"prompt.enc{level}"
        self.proj = nn.Conv2d(dim, dim, 1)

    def guidance_io(self):
        return {self.key}, set()

    def forward(self, x, guidance):
        x = self.proj(x)
        guidance.put(self.key, x.mean((2, 3)))
        return x


@registry.register("block", "toy_prompt_fuser")
class ToyPromptFuser(GuidedBlock):
    """Latent block: consumes every stage prompt with the latent, writes prompt.dec0..2."""

    def __init__(self, dim: Context[int], width: Context[int] = 8):
        super().__init__()
        self.ins = nn.ModuleList(nn.Linear(width * 2 ** l, dim) for l in range(3))
        self.outs = nn.ModuleList(nn.Linear(dim, width * 2 ** max(l, 1)) for l in range(3))

    def guidance_io(self):
        return {f"prompt.dec{l}" for l in range(3)}, {f"prompt.enc{l}" for l in range(3)}

    def forward(self, x, guidance):
        z = (x.mean((2, 3))
             + sum(lin(guidance.get(f"prompt.enc{l}")) for l, lin in enumerate(self.ins)))
        for l, lin in enumerate(self.outs):
            guidance.put(f"prompt.dec{l}", lin(z))
        return x + z[:, :, None, None]


@registry.register("block", "toy_prompt_consumer")
class ToyPromptConsumer(GuidedBlock):
    """Decoder end: adds its level's prompt. (B,C,H,W) -> same."""

    def __init__(self, dim: Context[int], level: Context[int] = 0):
        super().__init__()
        self.key = f"prompt.dec{level}"
        self.gate = nn.Parameter(torch.ones(dim))

    def guidance_io(self):
        return set(), {self.key}

    def forward(self, x, guidance):
        return x + (self.gate * guidance.get(self.key))[:, :, None, None]
