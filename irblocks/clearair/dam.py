"""Degradation prompt generator and Degradation-Aware Module (ClearAIR Eq. 10-14)."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from torch import nn

from irblocks.errors import check_feature
from irblocks.guidance import Guidance, GuidedBlock
from irblocks.registry import BlockSpec, Context, build, register

from .priors_common import CONTENT_DIM, DEGRADATION_DIM
from .qgm import guidance_vector, shared_or_own

__all__ = ["DegradationPromptGenerator", "DegradationAwareModule"]


@register("block", "degradation_prompt", aliases=("degradation_prompt_generator",))
class DegradationPromptGenerator(nn.Module):
    """Degradation prompt (ClearAIR Eq. 10): softmax weights from an MLP of the
    degradation embedding over ``length`` learnable prompts; weighted sum; MLP.

    Built once and shared by every DAM (the U-Net's ``shared`` mapping).

    Args:
        dim: d, the base width (context). embed_dim: degradation interface size (512).
        length: number of learnable prompts (5). prompt_dim: prompt width (default 4d).

    Shapes: (B, embed_dim) -> (B, prompt_dim).
    """

    def __init__(self, dim: Context[int], embed_dim: int = DEGRADATION_DIM, length: int = 5,
                 prompt_dim: int = 0):
        super().__init__()
        prompt_dim = prompt_dim or 4 * dim
        if length < 1 or prompt_dim < 1 or embed_dim < 1:
            raise ValueError(f"degradation_prompt: length, prompt_dim and embed_dim must be >= 1, "
                             f"got {length}, {prompt_dim}, {embed_dim}")
        self.prompt_dim, self.embed_dim = prompt_dim, embed_dim
        self.prompts = nn.Parameter(torch.randn(length, prompt_dim) * 0.02)
        self.weights = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.GELU(),
                                     nn.Linear(embed_dim, length))
        self.mlp = nn.Sequential(nn.Linear(prompt_dim, prompt_dim), nn.GELU(),
                                 nn.Linear(prompt_dim, prompt_dim))

    def example_inputs(self, batch: int = 1, height: int = 8,
                       width: int = 8) -> tuple[torch.Tensor]:
        """A degradation embedding (B, embed_dim) (for generic tests)."""
        return (torch.randn(batch, self.embed_dim),)

    def forward(self, fd: torch.Tensor) -> torch.Tensor:
        w = self.weights(fd).softmax(-1)
        return self.mlp(w @ self.prompts.to(w.dtype))


@register("block", "degradation_aware", aliases=("dam", "degradation_aware_module"))
class DegradationAwareModule(GuidedBlock):
    """Degradation-Aware Module (ClearAIR Eq. 11-14), as in the authors' scaffold.

    x_hat = conv1x1(LN(x)); a cross-attention of the pixels' queries (1x1 of x_hat)
    with the content embedding F_c (Linear 512 -> 2C gives one key and one value per
    head) where the softmax runs over the pixels (a softmax over the single key would
    be constant 1); a degradation mask m_d = sigmoid(MLP(P_d)) per channel from the
    shared degradation prompt P_d modulates x_hat; concat(attention, m_d * x_hat) ->
    1x1 fuse; residual. The softmax over pixels includes the U-Net's padding.

    Args:
        dim: channels C (context). shared: the U-Net's shared modules (context);
            uses ``shared[prompt]`` (a ``degradation_prompt``) or builds its own.
        num_heads: heads of the content attention (4; must divide C).
        source: "prior" reads ``prior.degradation`` and ``prior.content`` (B x 512);
            "learned" replaces both by learnable constants (Table 7 ablation).
        content_dim, degradation_dim: interface sizes (512). bias: of the 1x1 convs.
        norm: the LayerNorm spec (default ``layernorm``).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, dim: Context[int], shared: Context[Optional[dict]] = None,
                 num_heads: int = 4, prompt: str = "degradation_prompt",
                 source: Literal["prior", "learned"] = "prior", content_dim: int = CONTENT_DIM,
                 degradation_dim: int = DEGRADATION_DIM, bias: bool = False,
                 norm: BlockSpec = "layernorm"):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"degradation_aware: num_heads={num_heads} must divide dim={dim}")
        self.dim, self.heads, self.source = dim, num_heads, source
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.content_dim, self.degradation_dim = content_dim, degradation_dim
        gen = shared_or_own(self, "prompt_gen", shared, prompt,
                            {"type": "degradation_prompt", "embed_dim": degradation_dim}, dim=dim)
        self.norm = build(norm, "block", dim=dim)
        self.in_conv = nn.Conv2d(dim, dim, 1, bias=bias)
        self.content_kv = nn.Linear(content_dim, 2 * dim)
        self.q_proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.attn_proj = nn.Conv2d(dim, dim, 1, bias=bias)
        self.mask_mlp = nn.Sequential(nn.Linear(gen.prompt_dim, dim), nn.GELU(),
                                      nn.Linear(dim, dim))
        self.fuse = nn.Conv2d(2 * dim, dim, 1, bias=bias)
        if source == "learned":
            self.learned_content = nn.Parameter(torch.randn(content_dim) * 0.02)
            self.learned_degradation = nn.Parameter(torch.randn(degradation_dim) * 0.02)

    def guidance_io(self):
        return set(), ({"prior.degradation", "prior.content"} if self.source == "prior" else set())

    def embeddings(self, batch: int, guidance: Guidance, like: torch.Tensor):
        if self.source == "learned":
            return (self.learned_content.to(like.dtype).expand(batch, -1),
                    self.learned_degradation.to(like.dtype).expand(batch, -1))
        fc = guidance_vector(guidance, "prior.content", self.content_dim, batch,
                             "degradation_aware", "degradation")
        fd = guidance_vector(guidance, "prior.degradation", self.degradation_dim, batch,
                             "degradation_aware", "degradation")
        return fc.to(like.dtype), fd.to(like.dtype)

    def forward(self, x: torch.Tensor, guidance: Guidance | None = None) -> torch.Tensor:
        check_feature(x, self.dim, "degradation_aware")
        guidance = guidance if guidance is not None else Guidance()
        b, c, h, w = x.shape
        fc, fd = self.embeddings(b, guidance, x)
        x_hat = self.in_conv(self.norm(x))
        k, v = self.content_kv(fc).chunk(2, dim=-1)                        # (B, C) each
        q = self.q_proj(x_hat)
        # per head: logits_i = <q_i, k> * scale over pixels i; softmax over the pixels
        qh = q.reshape(b, self.heads, self.head_dim, h * w) if q.is_contiguous() else \
            q.permute(0, 2, 3, 1).reshape(b, h * w, self.heads, self.head_dim).permute(0, 2, 3, 1)
        logits = (torch.einsum("bhdn,bhd->bhn", qh, k.view(b, self.heads, self.head_dim))
                  * self.scale)
        attn = logits.softmax(-1)                                           # (B, heads, N)
        att = attn.view(b, self.heads, 1, h, w) * v.view(b, self.heads, self.head_dim, 1, 1)
        att = self.attn_proj(att.reshape(b, c, h, w))
        m_d = torch.sigmoid(self.mask_mlp(self.prompt_gen(fd)))[:, :, None, None]
        return x + self.fuse(torch.cat([att, m_d * x_hat], dim=1))
