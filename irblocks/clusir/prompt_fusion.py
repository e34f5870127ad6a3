"""ClusIR's multi-scale prompt fusion: stage prompts x latent -> semantic prompts per decoder
level."""
from __future__ import annotations

from typing import Annotated, List

import torch
import torch.nn.functional as F
from annotated_types import Ge
from torch import nn

from irblocks.clusir.dafmm import semantic_channels
from irblocks.errors import InputError, check_feature
from irblocks.guidance import Guidance, GuidedBlock, call
from irblocks.registry import BlockSpec, Context, build, register

__all__ = ["PromptFusion"]


@register("block", "clusir_prompt_fusion", aliases=("multiscale_prompt_fusion",))
class PromptFusion(GuidedBlock):
    """Fuses the encoder's stage prompts with the latent by multi-head cross-attention.

    Runs at the latent (the U-Net's ``latent_end``). Optionally first runs
    ``stage`` -- the latent stage's own routed MoE (ClusIR's 4th encoder stage),
    which writes the last stage prompt. Then reads the stage prompts
    ``prompt_key`` for levels 0..stages-1 (each B x D_l), projects each to
    ``fusion_width * d`` (one Linear per stage, + LayerNorm) as key/value tokens;
    the latent pixels (LayerNorm + Linear) are the queries; multi-head attention
    + output Linear gives a fused map at the latent resolution; a 1x1 conv per
    decoder level l makes the semantic prompt (B, round(semantic_width[l] * d),
    h, w), written to ``semantic_key`` (default ``prompt.sem{l}``) for that
    level's DAFMM. Returns the latent (after ``stage``; 1x1-reduced when the
    container asks for a different ``out_dim``).

    Choices where the paper is silent: latent pixels as queries and the stage
    prompts as keys/values (the semantic prompts keep the latent's spatial
    layout); widths scale with d (default fusion 8d; semantic widths PromptIR's
    320/128/64 at d = 48, i.e. [4/3, 8/3, 20/3] d for decoder levels 0, 1, 2).

    Args: dim, width, out_dim, heads, level (context; heads and level go to
        ``stage``); stage: block run first (routed MoE); stages: number of stage
        prompts; stage_prompt_dims: their widths (empty: d * 2^l, the MoE default
        prompt_dim = dim); fusion_width (multiple of d), attention_heads;
        semantic_width: per decoder level 0..L-1; prompt_key, semantic_key.

    Shapes: (B, dim, h, w) -> (B, out_dim, h, w).
    """

    def __init__(self, dim: Context[int], width: Context[int] = 0, out_dim: Context[int] = 0,
                 heads: Context[int] = 1, level: Context[int] = 3,
                 stage: BlockSpec = None, stages: Annotated[int, Ge(1)] = 4,
                 stage_prompt_dims: List[int] = (),
                 fusion_width: float = 8.0, attention_heads: int = 8,
                 semantic_width: List[float] = (4 / 3, 8 / 3, 20 / 3),
                 prompt_key: str = "prompt.enc{level}", semantic_key: str = "prompt.sem{level}",
                 bias: bool = True):
        super().__init__()
        d = width or dim // 8
        out_dim = out_dim or dim
        dims = list(stage_prompt_dims) or [d * 2 ** i for i in range(stages)]
        if len(dims) != stages:
            raise ValueError(f"clusir_prompt_fusion: stage_prompt_dims needs {stages} entries, got "
                             f"{dims}")
        fdim = max(1, int(round(fusion_width * d)))
        if attention_heads < 1 or fdim % attention_heads:
            raise ValueError(f"clusir_prompt_fusion: attention_heads={attention_heads} must divide "
                             f"the fusion width {fdim}")
        if not semantic_width:
            raise ValueError("clusir_prompt_fusion: semantic_width needs one entry per decoder "
                             "level")
        self.dim, self.heads, self.fdim = dim, attention_heads, fdim
        self.stage = build(stage, "block", dim=dim, level=level, heads=heads, width=d) \
            if stage is not None else None
        self.prompt_keys = [prompt_key.format(level=i) for i in range(stages)]
        self.semantic_keys = [semantic_key.format(level=i) for i in range(len(semantic_width))]
        self.stage_dims = dims
        self.token_proj = nn.ModuleList([nn.Linear(di, fdim, bias=bias) for di in dims])
        self.token_norm = nn.LayerNorm(fdim)
        self.latent_norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, fdim, bias=bias)
        self.kv = nn.Linear(fdim, 2 * fdim, bias=bias)
        self.out = nn.Linear(fdim, fdim, bias=bias)
        self.semantic = nn.ModuleList([nn.Conv2d(fdim, semantic_channels(s, d), 1, bias=bias)
                                       for s in semantic_width])
        self.reduce = nn.Conv2d(dim, out_dim, 1, bias=False) if out_dim != dim else None

    def guidance_io(self) -> tuple[set[str], set[str]]:
        inner = self.stage.guidance_io()[0] if getattr(self.stage, "guided", False) else set()
        return set(self.semantic_keys) | inner, set(self.prompt_keys) - inner

    def forward(self, x: torch.Tensor, guidance: Guidance) -> torch.Tensor:
        check_feature(x, self.dim, "clusir_prompt_fusion input")
        if self.stage is not None:
            x = call(self.stage, x, guidance)
        b, c, h, w = x.shape
        toks = []
        for key, proj, di in zip(self.prompt_keys, self.token_proj, self.stage_dims):
            p = guidance.get(key)
            if p.dim() != 2 or p.shape != (b, di):
                raise InputError(f"clusir_prompt_fusion: stage prompt {key!r} must be {b} x {di}, "
                                 f"got {tuple(p.shape)}")
            toks.append(proj(p))
        t = self.token_norm(torch.stack(toks, dim=1))                       # B, S, F
        hd = self.fdim // self.heads
        q = self.q(self.latent_norm(x.permute(0, 2, 3, 1)))
        q = q.reshape(b, h * w, self.heads, hd).transpose(1, 2)
        k, v = self.kv(t).reshape(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        fused = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, self.fdim)
        fused = self.out(fused).permute(0, 3, 1, 2)  # B, F, h, w (channels_last)
        for key, conv in zip(self.semantic_keys, self.semantic):
            guidance.put(key, conv(fused))
        return self.reduce(x) if self.reduce is not None else x
