"""Adapters for DeQA / SAM 2 / DA-CLIP: clear one-line message when missing; wiring with fake backends."""
import pytest
import torch

from irblocks.clearair import adapters
from irblocks.clearair.adapters import MissingBackendError
from irblocks.registry import build

NAMES = {"deqa_quality": "deqa", "sam2_regions": "sam2", "daclip_degradation": "daclip"}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_missing_package_message(name, monkeypatch, tmp_path):
    monkeypatch.setitem(adapters.REQUIRES, NAMES[name], ("irblocks_no_such_package_xyz",))
    with pytest.raises(MissingBackendError) as e:
        build({"type": name, "path": str(tmp_path)}, "prior")
    msg = str(e.value)
    assert "\n" not in msg and "irblocks_no_such_package_xyz" in msg and "path=" in msg and name in msg


@pytest.mark.parametrize("name", sorted(NAMES))
def test_missing_weights_message(name, monkeypatch):
    monkeypatch.setitem(adapters.REQUIRES, NAMES[name], ())
    with pytest.raises(MissingBackendError, match="does not exist; pass path="):
        build({"type": name, "path": "/nonexistent/weights"}, "prior")


@pytest.fixture
def fake_backends(monkeypatch, tmp_path):
    calls = {}

    def deqa(path, device="cpu"):
        calls["deqa"] = path
        return lambda img: img.mean((2, 3)).repeat(1, 1366)[:, :4096]   # (B, 4096)

    def sam2(path, device="cpu", config=""):
        calls["sam2"] = (path, config)

        def fn(img):
            out = []
            for im in img:
                m = torch.zeros(3, im.shape[-2] // 2, im.shape[-1] // 2, dtype=torch.bool)   # half size
                m[0, :2] = True
                m[1, :, :1] = True
                out.append(m)
            return out
        return fn

    def daclip(path, device="cpu", model_name=""):
        calls["daclip"] = model_name
        return lambda img: (img.mean((2, 3)).repeat(1, 171)[:, :512], img.std((2, 3)).repeat(1, 256)[:, :768])

    for k in NAMES.values():
        monkeypatch.setitem(adapters.REQUIRES, k, ())
    monkeypatch.setitem(adapters.LOADERS, "deqa", deqa)
    monkeypatch.setitem(adapters.LOADERS, "sam2", sam2)
    monkeypatch.setitem(adapters.LOADERS, "daclip", daclip)
    return calls, str(tmp_path)


def test_adapters_with_fake_backends(fake_backends):
    calls, path = fake_backends
    x = torch.rand(2, 3, 16, 12)
    q = build({"type": "deqa_quality", "path": path}, "prior")(x)
    assert q["quality"].shape == (2, 256) and calls["deqa"] == path
    m = build({"type": "sam2_regions", "path": path, "k": 5}, "prior")(x)["masks"]
    assert m.shape == (2, 5, 16, 12) and m[:, 3:].sum() == 0 and m[:, 0, :4].all()
    d = build({"type": "daclip_degradation", "path": path}, "prior")(x)
    assert d["degradation"].shape == (2, 512) and d["content"].shape == (2, 512)


def test_model_runs_with_adapter_priors(fake_backends):
    import irblocks
    _, path = fake_backends
    model = irblocks.create_model("clearair-tiny", priors={
        "quality": {"type": "deqa_quality", "path": path},
        "regions": {"type": "sam2_regions", "path": path, "k": 4},
        "degradation": {"type": "daclip_degradation", "path": path}})
    ref = irblocks.create_model("clearair-tiny")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    y = model.eval()(torch.rand(1, 3, 20, 20))
    assert y.shape == (1, 3, 20, 20) and torch.isfinite(y).all()
