"""The one configurable U-Net restorer: Restormer, PromptIR, AnyIR, ClearAIR and ClusIR by
recipe."""
from __future__ import annotations

from typing import Annotated, List, Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from annotated_types import Ge, Gt
from torch import nn

from irblocks.errors import check_feature
from irblocks.guidance import Guidance, call, check_wiring
from irblocks.registry import BlockMap, BlockSpec, PriorMap, accepts, build, register

__all__ = ["UNetRestorer", "pad_to_multiple"]

LEVELS = 4


def _reflect_index(n, size, device) -> torch.Tensor:
    """Source index of each of ``size`` positions when ``n`` are reflect-padded (size < 2n)."""
    i = torch.arange(size, device=device)
    return torch.where(i < n, i, 2 * (n - 1) - i)


def crop(x: torch.Tensor, h, w) -> torch.Tensor:
    """``x[..., :h, :w]``; while exporting a gather, since "h <= padded height" is not a fact
    the exporter can derive for a floor-divided size."""
    if torch.compiler.is_exporting():
        return x.index_select(-2, torch.arange(h, device=x.device)).index_select(
            -1, torch.arange(w, device=x.device))
    return x[..., :h, :w]


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at the bottom/right to a multiple (reflect; replicate where the
    input is too small to reflect). Returns the padded tensor and the original (H, W)."""
    h, w = x.shape[-2:]
    if torch.compiler.is_exporting():
        # one graph for every size >= multiple (the exporter's minimum, where eager reflects
        # too): reflect padding as a gather, so neither the pad amount nor "pad < size" is a
        # size guard; padded sizes written as multiples so the 2x downsamplings need none
        hp = (h + multiple - 1) // multiple * multiple
        wp = (w + multiple - 1) // multiple * multiple
        rows, cols = _reflect_index(h, hp, x.device), _reflect_index(w, wp, x.device)
        return x.index_select(-2, rows).index_select(-1, cols), (h, w)
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    mode = "reflect" if (ph < h and pw < w) else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


class _Stage(nn.Module):
    """A run of blocks; passes guidance to guided ones. With ``checkpoint`` each block's
    activations are recomputed in backward (training with gradients only)."""

    def __init__(self, blocks: list[nn.Module], checkpoint: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.checkpoint = checkpoint

    def forward(self, x: torch.Tensor, guidance: Guidance | None) -> torch.Tensor:
        ckpt = self.checkpoint and self.training and torch.is_grad_enabled()
        for b in self.blocks:
            if ckpt:
                x = torch.utils.checkpoint.checkpoint(call, b, x, guidance, use_reentrant=False)
            else:
                x = call(b, x, guidance)
        return x


@register("model", "unet_restorer", aliases=("unet",))
class UNetRestorer(nn.Module):
    """Four-level U-Net restorer (the Restormer skeleton) with pluggable blocks.

    Levels run at d, 2d, 4d, 8d (level 3 is the latent). Encoder level l: blocks;
    downsample. Latent: blocks, optional ``latent_end`` (PromptIR's latent prompt),
    optional 1x1 reduction 8d -> 4d (``latent_reduce``). Decoder level l = 2, 1, 0:
    upsample, concat the skip, 1x1 reduce (levels 2 and 1; level 0 keeps 2d),
    blocks, optional ``decoder_end[l]``. Then ``refinement`` blocks at 2d, conv3x3
    2d -> out_channels, plus the input (global residual).

    Every block is built from a spec with the context ``dim``, ``level``,
    ``heads`` (heads[l]), ``stage`` ("encoder" | "latent" | "decoder" |
    "refinement"), ``index`` (position in its level), ``shared`` (the modules of
    ``shared``) and ``out_dim`` (ends that change width); each block takes what
    its constructor declares.

    Guidance: ``priors`` run once per forward on the padded input (frozen, under
    ``no_grad``, outside the state_dict) and fill ``prior.<name>``; guided blocks
    read and write named fields. Construction fails if a block reads a field
    that nothing before it writes.

    Any input size: the input is padded to a multiple of ``pad_multiple``
    (reflect, or replicate where it is too small) and the output cropped back.

    Args:
        in_channels, out_channels: image channels (3).
        width: d. blocks: blocks per level [enc1, enc2, enc3, latent]; the decoder
            mirrors the first three unless ``decoder_blocks`` ([level 0, 1, 2]) says
            otherwise (0 = the level is upsample, skip, reduce and its ``decoder_end``
            only). refinement: blocks after decoder level 1.
        heads: heads per level.
        block: default block spec; ``encoder_block``, ``latent_block``,
            ``decoder_block``, ``refinement_block`` override it per stage.
        mid_block: inserted after the first floor(n/2) blocks of every encoder,
            latent and decoder level (ClearAIR's guidance).
        encoder_end: after each encoder level's blocks (a single spec or a
            per-level list; ClusIR's routed MoE). latent_end: after the latent
            blocks (PromptIR's latent prompt; gets ``out_dim`` = 4d when
            ``latent_reduce`` and takes over the reduction if it accepts
            ``out_dim``). decoder_end: after each decoder level's blocks (spec or
            list indexed by level 0..2; PromptIR's prompts, ClusIR's DAFMM).
        latent_reduce: reduce the latent 8d -> 4d before upsampling (PromptIR, AnyIR).
        priors: name -> prior spec; outputs land in guidance as ``prior.<key>``.
        shared: name -> block spec built once, handed to blocks via ``shared``.
        bias: bias of the skeleton's 1x1 reductions and output conv.
        global_residual: add the input to the output.
        pad_multiple: 8 for three 2x downsamplings.
        channels_last: run in channels_last memory format (fast on CPU).
        check_finite: reject NaN/Inf inputs with an InputError. When False (default) a
            non-finite input gets a one-time RuntimeWarning naming check_finite instead
            (the same one pass over the input, until it has warned; not while compiling).
        checkpoint: activation checkpointing of every encoder/latent/decoder/refinement
            block while training (recompute in backward; memory for compute).

    Shapes: (B, in_channels, H, W) float -> (B, out_channels, H, W), any H, W.
    """

    execution = "fast"

    def __init__(self, in_channels: Annotated[int, Gt(0)] = 3,
                 out_channels: Annotated[int, Gt(0)] = 3, width: Annotated[int, Gt(0)] = 48,
                 blocks: List[int] = (4, 6, 6, 8), decoder_blocks: Optional[List[int]] = None,
                 refinement: Annotated[int, Ge(0)] = 4, heads: List[int] = (1, 2, 4, 8),
                 block: BlockSpec = "transformer_block", encoder_block: BlockSpec = None,
                 latent_block: BlockSpec = None, decoder_block: BlockSpec = None,
                 refinement_block: BlockSpec = None, mid_block: BlockSpec = None,
                 encoder_end: BlockSpec = None, latent_end: BlockSpec = None,
                 decoder_end: BlockSpec = None, latent_reduce: bool = False,
                 priors: PriorMap = None, shared: BlockMap = None, bias: bool = False,
                 global_residual: bool = True, pad_multiple: Annotated[int, Gt(0)] = 8,
                 channels_last: bool = True, check_finite: bool = False, checkpoint: bool = False):
        super().__init__()
        blocks, heads = list(blocks), list(heads)
        if len(blocks) != LEVELS or any(n < 0 for n in blocks):
            raise ValueError(f"unet_restorer: blocks must list {LEVELS} non-negative counts "
                             f"[enc1, enc2, enc3, latent], got {blocks}")
        dec_blocks = list(blocks[:3]) if decoder_blocks is None else list(decoder_blocks)
        if len(dec_blocks) != LEVELS - 1 or any(n < 0 for n in dec_blocks):
            raise ValueError(f"unet_restorer: decoder_blocks must list {LEVELS - 1} non-negative "
                             f"counts [level 0, level 1, level 2], got {decoder_blocks}")
        if len(heads) != LEVELS or any(h < 1 for h in heads):
            raise ValueError(f"unet_restorer: heads must list {LEVELS} positive counts, got "
                             f"{heads}")
        if global_residual and in_channels != out_channels:
            raise ValueError("unet_restorer: global_residual needs in_channels == out_channels "
                             f"({in_channels} != {out_channels})")
        if pad_multiple % 8:
            raise ValueError("unet_restorer: pad_multiple must be a multiple of 8, got "
                             f"{pad_multiple}")
        d = width
        self.in_channels, self.out_channels, self.width = in_channels, out_channels, width
        self.global_residual, self.pad_multiple = global_residual, pad_multiple
        self.channels_last, self.check_finite = channels_last, check_finite

        self.shared = nn.ModuleDict({k: build(v, "block", path=f"shared.{k}", dim=d)
                                     for k, v in (shared or {}).items()})
        # priors: frozen, outside the state_dict (kept in a plain dict; moved in _apply)
        self._priors: dict[str, nn.Module] = {}
        for k, v in (priors or {}).items():
            p = build(v, "prior", path=f"priors.{k}")
            for t in p.parameters():
                t.requires_grad_(False)
            self._priors[k] = p.eval()

        def ctx(stage, level, dim, index=0, **extra):
            return dict(dim=dim, level=level, heads=heads[level], stage=stage, index=index,
                        shared=self.shared, width=d, **extra)

        def per_level(spec, level):
            if isinstance(spec, (list, tuple)):
                if len(spec) <= level:
                    raise ValueError(f"unet_restorer: per-level spec list {spec!r} has no entry "
                                     f"for level {level}")
                return spec[level]
            return spec

        def level_blocks(stage, level, dim, n, spec):
            out, half = [], n // 2
            for i in range(n):
                if mid_block is not None and i == half and stage != "refinement":
                    out.append(build(per_level(mid_block, level), "block",
                                     **ctx(stage, level, dim, i)))
                out.append(build(per_level(spec, level), "block", **ctx(stage, level, dim, i)))
            if mid_block is not None and n == 0 and stage != "refinement":
                out.append(build(per_level(mid_block, level), "block", **ctx(stage, level, dim, 0)))
            return out

        enc_spec = encoder_block or block
        dec_spec = decoder_block or block
        self.patch_embed = build({"type": "patch_embed", "in_channels": in_channels}, "block",
                                 dim=d)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for lvl in range(3):
            dim = d * 2 ** lvl
            stage = level_blocks("encoder", lvl, dim, blocks[lvl], enc_spec)
            end = per_level(encoder_end, lvl)
            if end is not None:
                stage.append(build(end, "block", **ctx("encoder", lvl, dim, blocks[lvl])))
            self.encoders.append(_Stage(stage, checkpoint))
            self.downs.append(build("downsample", "block", dim=dim))
        dim8 = d * 8
        lat = level_blocks("latent", 3, dim8, blocks[3], latent_block or block)
        self.latent = _Stage(lat, checkpoint)
        out_lat = d * 4 if latent_reduce else dim8
        self.latent_end = None
        reduce_needed = latent_reduce
        if latent_end is not None:
            takes_out = accepts(latent_end, "block", "out_dim")
            out_kw = {"out_dim": out_lat} if takes_out else {}
            self.latent_end = build(latent_end, "block", **ctx("latent", 3, dim8, blocks[3],
                                                               **out_kw))
            reduce_needed = latent_reduce and not takes_out
        self.latent_reduce = nn.Conv2d(dim8, d * 4, 1, bias=bias) if reduce_needed else None

        self.ups = nn.ModuleList()
        self.reduces = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.decoder_ends = nn.ModuleList()
        up_in = out_lat
        for lvl in (2, 1, 0):
            skip = d * 2 ** lvl
            self.ups.append(build("upsample", "block", dim=up_in))
            cat = up_in // 2 + skip
            if lvl > 0:
                self.reduces.append(nn.Conv2d(cat, skip, 1, bias=bias))
                dim = skip
            else:
                self.reduces.append(nn.Identity())
                dim = cat
            n_dec = dec_blocks[lvl]
            self.decoders.append(_Stage(level_blocks("decoder", lvl, dim, n_dec, dec_spec),
                                        checkpoint))
            end = per_level(decoder_end, lvl)
            self.decoder_ends.append(build(end, "block", **ctx("decoder", lvl, dim, n_dec))
                                     if end is not None else nn.Identity())
            up_in = dim
        self.refinement = _Stage(level_blocks("refinement", 0, up_in, refinement,
                                              refinement_block or block),
                                 checkpoint)
        self.output = nn.Conv2d(up_in, out_channels, 3, padding=1, bias=bias)

        provided = set()
        for k, p in self._priors.items():
            provided |= ({f"prior.{k}"}
                         | {f"prior.{f}" for f in getattr(p, "provides", lambda: ())()})
        check_wiring(self._execution_order(), provided, where="unet_restorer")

    # ------------------------------------------------------------------ helpers
    def _execution_order(self) -> list[nn.Module]:
        order: list[nn.Module] = [self.patch_embed]
        for enc, down in zip(self.encoders, self.downs):
            order += [enc, down]
        order.append(self.latent)
        if self.latent_end is not None:
            order.append(self.latent_end)
        for up, red, dec, end in zip(self.ups, self.reduces, self.decoders, self.decoder_ends):
            order += [up, red, dec, end]
        return order + [self.refinement, self.output]

    @property
    def priors(self) -> dict[str, nn.Module]:
        """The frozen priors (not part of the state_dict)."""
        return dict(self._priors)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        for p in self._priors.values():
            p._apply(fn, *args, **kwargs)
        return self

    def run_priors(self, x: torch.Tensor, guidance: Guidance) -> None:
        """Fill ``prior.*`` guidance fields from the padded input (no_grad)."""
        with torch.no_grad():
            for k, p in self._priors.items():
                out = p(x)
                if isinstance(out, dict):
                    for f, t in out.items():
                        guidance.put(f"prior.{f}", t)
                else:
                    guidance.put(f"prior.{k}", out)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, guidance: Guidance | None = None) -> torch.Tensor:
        check_feature(x, self.in_channels, "unet_restorer input", finite=self.check_finite,
                      dtype=self.patch_embed.proj.weight.dtype, warn_nonfinite=True)
        fmt = (torch.channels_last if (self.channels_last and self.execution == "fast")
               else torch.contiguous_format)
        inp = x
        x, (h, w) = pad_to_multiple(x, self.pad_multiple)
        x = x.contiguous(memory_format=fmt)
        if guidance is None:
            guidance = Guidance()
        if self._priors:
            self.run_priors(x, guidance)

        feat = self.patch_embed(x)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            feat = enc(feat, guidance)
            skips.append(feat)
            feat = down(feat)
        feat = self.latent(feat, guidance)
        if self.latent_end is not None:
            feat = call(self.latent_end, feat, guidance)
        if self.latent_reduce is not None:
            feat = self.latent_reduce(feat)
        for up, red, dec, end, skip in zip(self.ups, self.reduces, self.decoders, self.decoder_ends,
                                           reversed(skips)):
            feat = red(torch.cat([up(feat), skip], dim=1))
            feat = dec(feat, guidance)
            feat = call(end, feat, guidance)
        feat = self.refinement(feat, guidance)
        out = self.output(feat)
        if self.global_residual:
            out = out + x
        out = crop(out, h, w)
        return out.contiguous(memory_format=torch.channels_last) if inp.is_contiguous(
            memory_format=torch.channels_last) and not inp.is_contiguous() else out.contiguous()

