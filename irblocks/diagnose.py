"""Look inside a network on one image: :func:`diagnose` collects the tensors worth seeing.

For any network: the input, the output and ``|output - input|``. Then, for the networks
it recognises (by their blocks; several can apply):

* ClusIR (``clusir_moe`` blocks): per routed stage the per-pixel prototype affinity
  maps, the cluster posterior and the chosen experts with their weights
  (:mod:`irblocks.clusir.diagnostics`);
* ClearAIR (``semantic_cross_attention`` reading region masks): the region masks, the
  quality and degradation prior vectors, each region's attention weight and the
  attention map per level (:mod:`irblocks.clearair.diagnostics`);
* AnyIR (``sf_fusion`` blocks): per level the log-magnitude spectra of the attention and
  gated branches and the learned fusion weights (:mod:`irblocks.anyir.diagnostics`).

The model runs in eval mode (deterministic routing, no mask dropout) and is put back in
its previous mode. Pictures and the JSON of the numbers are written by
:func:`irblocks.visualize.render_diagnosis` (``irblocks diagnose``). With random weights
the pictures show the structure (what is computed where), not what training learns.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

__all__ = ["Diagnosis", "diagnose", "level_of", "network_kinds"]


def level_of(path: str) -> str:
    """U-Net level of a module path: 'encoders.1.blocks.0' -> 'encoders.1', 'latent' -> 'latent'."""
    parts = path.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


@dataclasses.dataclass
class Diagnosis:
    """What :func:`diagnose` found, for one image (batch of 1).

    Attributes:
        images: name -> (3, H, W) in [0, 1]: ``input``, ``output``, ``difference``.
        maps: figure name -> {panel title: (H, W) tensor}: colour-mapped panels.
        vectors: figure name -> {panel title: (values (N,), bar labels or None)}: bar charts.
        numbers: everything as JSON-ready numbers and lists (written to diagnosis.json).
    """

    networks: list[str]
    images: dict[str, torch.Tensor]
    maps: dict[str, dict[str, torch.Tensor]]
    vectors: dict[str, dict[str, tuple[torch.Tensor, list[str] | None]]]
    numbers: dict[str, Any]


def network_kinds(model: nn.Module) -> list[str]:
    """Which of clusir / clearair / anyir diagnostics apply to ``model`` (by its blocks)."""
    from irblocks.anyir.sf_fusion import SpatialFrequencyFusion
    from irblocks.clearair.sca import SemanticCrossAttention
    from irblocks.clusir.moe import ClusterMoE

    kinds = []
    mods = list(model.modules())
    if any(isinstance(m, ClusterMoE) for m in mods):
        kinds.append("clusir")
    if any(isinstance(m, SemanticCrossAttention) and m.source == "prior" for m in mods):
        kinds.append("clearair")
    if any(isinstance(m, SpatialFrequencyFusion) for m in mods):
        kinds.append("anyir")
    return kinds


def _list(t: torch.Tensor) -> Any:
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).tolist()


def _clusir(model, x, d: Diagnosis) -> None:
    from irblocks.clusir.diagnostics import prototype_affinity_maps, routing_diagnostics

    routing = routing_diagnostics(model, x)
    aff = prototype_affinity_maps(model, x)
    out, post = {}, {}
    for stage, a in aff.items():
        r = routing.get(stage, {})
        d.maps[f"clusir_affinity_{stage.replace('prompt.', '')}"] = {
            f"{stage} prototype {k}": a[0, k] for k in range(a.shape[1])
        }
        if "cluster_posterior" in r:
            experts = ", ".join(
                f"{int(e)}:{float(w):.2f}" for e, w in zip(r["experts"][0], r["weights"][0])
            )
            post[f"{stage} experts {experts}"] = (
                r["cluster_posterior"][0],
                [f"c{k}" for k in range(r["cluster_posterior"].shape[1])],
            )
        out[stage] = {
            "affinity_mean": _list(a[0].mean(dim=(-2, -1))),
            "affinity_shape": list(a.shape[1:]),
            **{k: _list(v[0]) for k, v in r.items() if isinstance(v, torch.Tensor)},
        }
    if post:
        d.vectors["clusir_cluster_posterior"] = post
    d.numbers["clusir"] = {"stages": out}


def _clearair(model, x, d: Diagnosis) -> None:
    from irblocks.clearair.diagnostics import guidance_diagnostics

    g = guidance_diagnostics(model, x)
    pri = g["priors"]
    nums: dict[str, Any] = {"priors": {}, "attention": {}}
    if "masks" in pri:
        m = pri["masks"][0]
        d.maps["clearair_masks"] = {
            f"region {k} ({float(m[k].mean()):.0%})": m[k] for k in range(m.shape[0])
        }
        nums["priors"]["mask_area"] = _list(m.mean(dim=(-2, -1)))
    vec = {}
    for key, v in pri.items():
        if key != "masks" and v.dim() == 2:
            nums["priors"][key] = _list(v[0])
            vec[f"prior {key} ({v.shape[1]})"] = (v[0], None)
    if vec:
        d.vectors["clearair_priors"] = vec
    att = {}
    for lvl, a in g["attention"].items():
        nums["attention"][lvl] = {
            "regions": _list(a["regions"][0]),
            "uncovered": float(a["uncovered"][0]),
        }
        k = a["regions"].shape[1]
        att[lvl] = (
            torch.cat([a["regions"][0], a["uncovered"][:1]]),
            [f"r{i}" for i in range(k)] + ["none"],
        )
    d.vectors["clearair_region_attention"] = att
    d.maps["clearair_attention_maps"] = {
        f"{lvl} attention received": a["map"][0] for lvl, a in g["attention"].items()
    }
    d.numbers["clearair"] = nums


def _anyir(model, x, d: Diagnosis) -> None:
    from irblocks.anyir.diagnostics import branch_spectra

    s = branch_spectra(model, x)
    panels, nums = {}, {}
    for lvl, v in s.items():
        lam = sum(v["lam"]) / len(v["lam"])
        panels[f"{lvl} attention (lam {lam:.2f})"] = v["attention"]
        panels[f"{lvl} gated (1-lam {1 - lam:.2f})"] = v["gated"]
        nums[lvl] = {
            "lam": v["lam"],
            "blocks": v["blocks"],
            "spectrum_shape": list(v["attention"].shape),
            "attention_mean_log_magnitude": float(v["attention"].mean()),
            "gated_mean_log_magnitude": float(v["gated"].mean()),
        }
    d.maps["anyir_spectra"] = panels
    d.numbers["anyir"] = {"levels": nums}


_COLLECTORS = {"clusir": _clusir, "clearair": _clearair, "anyir": _anyir}


@torch.no_grad()
def diagnose(model: nn.Module, image: torch.Tensor) -> Diagnosis:
    """Diagnose ``model`` on one image, (3, H, W) or (1, 3, H, W) in [0, 1] (see the module
    docstring)."""
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(
            f"diagnose: expected one image (3, H, W) or (1, 3, H, W), got {tuple(image.shape)}"
        )
    p = next(iter(model.parameters()), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    was = model.training
    model.eval()
    try:
        y = model(x)
        if not isinstance(y, torch.Tensor):
            raise ValueError(
                f"diagnose: the model returned {type(y).__name__}; expected an image tensor"
            )
        y = y.float().clamp(0, 1)
        xi = x.float()
        diff = (y - xi).abs()
        kinds = network_kinds(model)
        d = Diagnosis(
            networks=kinds,
            maps={},
            vectors={},
            numbers={},
            images={"input": xi[0].cpu(), "output": y[0].cpu(), "difference": diff[0].cpu()},
        )
        d.numbers["image"] = {
            "size": list(x.shape[-2:]),
            "networks": kinds,
            "mean_abs_difference": float(diff.mean()),
            "max_abs_difference": float(diff.max()),
        }
        for k in kinds:
            _COLLECTORS[k](model, x, d)
    finally:
        model.train(was)
    d.maps = {k: {t: v.detach().float().cpu() for t, v in m.items()} for k, m in d.maps.items()}
    return d
