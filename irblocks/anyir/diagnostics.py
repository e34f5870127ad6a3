"""AnyIR diagnostics: what each level's two branches carry in frequency, and how they are fused.

The Degradation Adaptation mixer splits the channels into an attention path and a gated
path and fuses them with :class:`~irblocks.anyir.sf_fusion.SpatialFrequencyFusion`
(F = lam * F_s + (1 - lam) * F_f). :func:`branch_spectra` records, at the fusion input of
every block, the centred log-magnitude spectrum ``log(1 + |fft2|)`` (DC removed) of both paths (mean
over batch and channels) and the block's learned ``lam``, grouped per U-Net level.
"""

from __future__ import annotations

import torch
from torch import nn

from irblocks.anyir.sf_fusion import SpatialFrequencyFusion
from irblocks.diagnose import level_of

__all__ = ["branch_spectra", "log_spectrum"]


def log_spectrum(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (H, W): mean over B and C of log(1 + |FFT2|) of each channel minus its
    mean (the DC term would swamp the picture), zero frequency centred."""
    t = t.detach().float()
    t = t - t.mean(dim=(-2, -1), keepdim=True)
    f = torch.fft.fftshift(torch.fft.fft2(t, norm="ortho"), dim=(-2, -1))
    return torch.log1p(f.abs()).mean(dim=(0, 1))


@torch.no_grad()
def branch_spectra(model: nn.Module, x: torch.Tensor) -> dict[str, dict]:
    """Run ``model`` on ``x`` and return, per level (keys in execution order):
    ``attention`` and ``gated`` (H_l, W_l) log-magnitude spectra (mean over the level's
    blocks), ``lam`` (list of each block's fusion weight on the spatial branch) and
    ``blocks`` (their module paths). Uses the model's current train/eval mode."""
    found: dict[str, dict] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, SpatialFrequencyFusion):

            def hook(mod, args, _name=name):
                att, gate = args[0], args[1]
                d = found.setdefault(
                    level_of(_name), {"attention": [], "gated": [], "lam": [], "blocks": []}
                )
                d["attention"].append(log_spectrum(att))
                d["gated"].append(log_spectrum(gate))
                d["lam"].append(float(mod.lam))
                d["blocks"].append(_name)

            hooks.append(m.register_forward_pre_hook(hook))
    if not hooks:
        raise ValueError(
            f"branch_spectra: {type(model).__name__} has no sf_fusion block (not an AnyIR network)"
        )
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return {
        lvl: {
            "attention": torch.stack(d["attention"]).mean(0),
            "gated": torch.stack(d["gated"]).mean(0),
            "lam": d["lam"],
            "blocks": d["blocks"],
        }
        for lvl, d in found.items()
    }
