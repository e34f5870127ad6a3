"""Official parity and sizes: Restormer and PromptIR (../shared/parity)."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

import irblocks
from irblocks.convert import ConversionError, from_official
from tests._shared import manifest, shared_path

FILES = {"restormer_tiny": "restormer", "restormer_biasfree_tiny": "restormer",
         "promptir_tiny": "promptir"}


def read(name):
    p = shared_path("parity", f"{name}.safetensors")
    with safe_open(str(p), "pt") as h:
        cfg = json.loads(h.metadata()["config"])
    sd = load_file(str(p))
    return cfg, sd, sd.pop("__input__"), sd.pop("__output__")


@pytest.mark.parametrize("name", FILES)
def test_official_output_reproduced(name):
    cfg, sd, x, y = read(name)
    m = from_official(FILES[name], sd, cfg).eval()
    with torch.no_grad():
        out = m(x)
    # README of ../shared/parity: relative to max|out| because the perturbed weights make outputs
    # large
    assert (out - y).abs().max().item() <= 1e-5 * y.abs().max().item()


def test_promptir_dead_layers_omitted_and_every_key_used():
    cfg, sd, _, _ = read("promptir_tiny")
    m = from_official("promptir", sd, cfg)
    dead = sum(v.numel() for k, v in sd.items() if k.startswith(irblocks.convert.PROMPTIR_DEAD))
    assert sum(p.numel() for p in m.parameters()) == sum(v.numel() for v in sd.values()) - dead


@pytest.mark.parametrize("name,exact", [("restormer", 0), ("promptir", 215_296)])
def test_full_size_params_and_flops_on_meta(name, exact):
    full = manifest()["full_models"][name]
    with torch.device("meta"):
        m = irblocks.create_model(name).eval()
        assert sum(p.numel() for p in m.parameters()) == full["total_params"] - exact
        with FlopCounterMode(display=False) as fc:
            m(torch.empty(1, 3, 224, 224))
    want = full["flops"]["flop_counter_mode_total"]
    assert abs(fc.get_total_flops() - want) / want <= 0.01
    # fvcore-style GMACs (118.6 / 132.2) within 1%
    gmacs = fc.get_total_flops() / 2e9
    assert (abs(gmacs - full["flops"]["fvcore_total"] / 1e9) / (full["flops"]["fvcore_total"] / 1e9)
            <= 0.01)


def test_converter_errors_are_one_line():
    cfg, sd, _, _ = read("restormer_tiny")
    with pytest.raises(ConversionError,
                       match="no converter for 'restormr'; did you mean 'restormer'"):
        from_official("restormr", sd, cfg)
    with pytest.raises(ConversionError, match="unknown official constructor argument 'dims'"):
        from_official("restormer", sd, {**cfg, "dims": 3})
    with pytest.raises(ConversionError, match=r"official shape .* != ours|state_dict mismatch"):
        from_official("restormer", sd, {**cfg, "dim": 24})
    with pytest.raises(ConversionError, match="have no place in our model"):
        from_official("restormer", {**sd, "extra_head.weight": torch.zeros(1)}, cfg)


def test_convert_cli_from_torch_file_and_refusing_pickles(tmp_path, capsys):
    from irblocks.cli import main
    cfg, sd, x, y = read("restormer_tiny")
    src = tmp_path / "official.pth"
    torch.save({"params": sd}, src)                      # a weights-only loadable checkpoint
    dst = tmp_path / "ours.safetensors"
    assert main(["convert", "restormer", str(src), str(dst), "--config", json.dumps(cfg)]) == 0
    m = irblocks.load(dst).eval()
    with torch.no_grad():
        assert (m(x) - y).abs().max().item() <= 1e-5 * y.abs().max().item()
    evil = tmp_path / "evil.pth"
    torch.save({"params": sd, "payload": NotATensor()}, evil)   # needs arbitrary unpickling
    assert main(["convert", "restormer", str(evil), str(tmp_path / "x.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "weights_only=True" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


class NotATensor:
    """An arbitrary object: loading it needs full unpickling, which irblocks refuses."""
