"""diagnose(): per-network numbers consistent with the tensors; rendered PNGs decode, have the
expected size and are not blank."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import irblocks
from irblocks.diagnose import diagnose, level_of
from irblocks.visualize import render_diagnosis

H, W = 24, 32


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    return (
        torch.stack([xx, yy, (xx + yy) / 2]) * 0.8 + 0.2 * torch.rand(3, H, W, generator=g)
    ).clamp(0, 1)


def _model(name):
    torch.manual_seed(0)
    return irblocks.create_model(name).eval()


def _png_ok(path):
    with Image.open(path) as im:
        im.load()
        a = np.asarray(im.convert("RGB")).astype(float)
    assert a.shape[0] > 100 and a.shape[1] > 200
    assert a.std() > 10  # not blank
    return a.shape


def test_level_of():
    assert level_of("encoders.1.blocks.0.attn.fusion") == "encoders.1"
    assert (
        level_of("latent.blocks.2.sca") == "latent" and level_of("latent_end.stage") == "latent_end"
    )


def test_clusir(tmp_path, image):
    from irblocks.clusir.diagnostics import prototype_affinity_maps, routing_diagnostics

    m = _model("clusir-tiny")
    d = diagnose(m, image)
    assert d.networks == ["clusir"] and not m.training
    routing = routing_diagnostics(m, image[None])
    aff = prototype_affinity_maps(m, image[None])
    res = render_diagnosis(d, tmp_path, "clusir-tiny")
    js = json.loads((tmp_path / "diagnosis.json").read_text())
    assert js == json.loads(json.dumps(res))
    assert set(js["clusir"]["stages"]) == set(routing) == set(aff)
    for stage, s in js["clusir"]["stages"].items():
        assert s["cluster_posterior"] == pytest.approx(
            routing[stage]["cluster_posterior"][0].tolist(), abs=1e-6
        )
        assert s["experts"] == routing[stage]["experts"][0].tolist()
        assert all(isinstance(e, int) for e in s["experts"])
        assert s["affinity_mean"] == pytest.approx(
            aff[stage][0].mean(dim=(-2, -1)).tolist(), abs=1e-6
        )
        assert sum(s["cluster_posterior"]) == pytest.approx(1, abs=1e-5)
        assert s["affinity_shape"] == list(aff[stage].shape[1:])
    assert js["files"][0] == "images.png" and "clusir_cluster_posterior.png" in js["files"]
    for f in js["files"]:
        _png_ok(tmp_path / f)


def test_clearair(tmp_path, image):
    from irblocks.guidance import Guidance

    m = _model("clearair-tiny")
    d = diagnose(m, image)
    assert d.networks == ["clearair"]
    g = Guidance()
    with torch.no_grad():
        m(image[None], g)
    res = render_diagnosis(d, tmp_path, "clearair-tiny")
    pri = res["clearair"]["priors"]
    masks = g.get("prior.masks")[0] > 0.5
    assert pri["mask_area"] == pytest.approx(masks.float().mean(dim=(-2, -1)).tolist(), abs=1e-6)
    assert pri["quality"] == pytest.approx(g.get("prior.quality")[0].tolist(), abs=1e-6)
    assert len(pri["degradation"]) == g.get("prior.degradation").shape[1]
    att = res["clearair"]["attention"]
    assert set(att) == {
        "encoders.0",
        "encoders.1",
        "encoders.2",
        "latent",
        "decoders.0",
        "decoders.1",
        "decoders.2",
    }
    for lvl, a in att.items():
        assert len(a["regions"]) == masks.shape[0] and min(a["regions"]) > 0
        # weights of pixels in exactly one region add up with the uncovered ones to at most 1
        assert a["uncovered"] >= 0
        amap = d.maps["clearair_attention_maps"][f"{lvl} attention received"]
        assert float(amap.sum()) == pytest.approx(1.0, abs=1e-4)
    for f in res["files"]:
        _png_ok(tmp_path / f)


def test_clearair_region_weights_against_dense_attention():
    """The pattern-token weights equal the dense (HW)^2 softmax summed over each mask's pixels."""
    from irblocks.clearair.diagnostics import region_attention
    from irblocks.clearair.mask_pool import mask_average_pool
    from irblocks.clearair.sca import SemanticCrossAttention
    from irblocks.guidance import Guidance

    torch.manual_seed(0)
    sca = SemanticCrossAttention(8, num_heads=2, mask_dropout=0.0).eval()
    x = torch.randn(1, 8, 6, 7)
    masks = torch.zeros(1, 3, 6, 7)
    masks[0, 0, :3] = 1
    masks[0, 1, :, :4] = 1
    masks[0, 2, 4:, 5:] = 1
    g = Guidance({"prior.masks": masks})
    r = region_attention(sca, x, g)
    q = sca._split(sca.q_proj(sca.norm(x)))
    k = sca._split(sca.k_proj(sca.sem_proj(mask_average_pool(x, masks > 0.5))))
    attn = (q @ k.transpose(-2, -1) * sca.scale).softmax(-1).mean(dim=(1, 2))[0]  # (N,)
    flat = masks[0].reshape(3, -1)
    torch.testing.assert_close(r["regions"][0], flat @ attn, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r["map"][0].reshape(-1), attn, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        r["uncovered"][0], attn[flat.sum(0) == 0].sum(), rtol=1e-4, atol=1e-6
    )


def test_anyir_and_any_network(tmp_path, image):
    m = _model("anyir-tiny")
    with torch.no_grad():
        m.encoders[0].blocks[0].attn.fusion.lam.fill_(0.25)
    d = diagnose(m, image)
    assert d.networks == ["anyir"]
    res = render_diagnosis(d, tmp_path, "anyir-tiny")
    lv = res["anyir"]["levels"]
    assert lv["encoders.0"]["lam"] == [0.25] and lv["latent"]["lam"] == [0.5]
    assert lv["encoders.0"]["spectrum_shape"] == [H, W] and lv["encoders.1"]["spectrum_shape"] == [
        H // 2,
        W // 2,
    ]
    with torch.no_grad():
        out = m(image[None]).clamp(0, 1)[0]
    torch.testing.assert_close(d.images["difference"], (out - image).abs())
    assert res["image"]["mean_abs_difference"] == pytest.approx(
        float((out - image).abs().mean()), abs=1e-6
    )
    assert res["files"] == ["images.png", "anyir_spectra.png"]
    for f in res["files"]:
        _png_ok(tmp_path / f)
    # a network none of the three: input, output and difference only
    r = render_diagnosis(diagnose(_model("restormer-tiny"), image), tmp_path / "plain")
    assert r["files"] == ["images.png"] and r["image"]["networks"] == []


def test_readme_pictures():
    """One committed diagnose picture per network: small, decodable, not blank, in the README."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    for net in ("clusir", "clearair", "anyir"):
        p = root / "docs" / "diagnose" / f"{net}.png"
        assert f"](docs/diagnose/{net}.png)" in readme and "irblocks diagnose $n-tiny" in readme
        assert p.stat().st_size < 100_000
        _png_ok(p)
