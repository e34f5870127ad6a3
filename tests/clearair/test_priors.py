"""Built-in priors: real (input-dependent), deterministic, parameter-free, fixed interface sizes."""
import pytest
import torch
from torch import nn

import irblocks
from irblocks.clearair.priors_common import GuidancePrior, PriorOutputError
from irblocks.errors import InputError
from irblocks.guidance import Guidance
from irblocks.registry import build, register

PRIORS = {"nss_quality": {"quality": (256,)},
          "kmeans_regions": {"masks": None},
          "classical_degradation": {"degradation": (512,), "content": (512,)}}


@pytest.mark.parametrize("name", sorted(PRIORS))
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 37, 53), (1, 3, 1, 6)])
def test_shapes_deterministic_finite(name, shape):
    p = build(name, "prior")
    assert p.provides() == set(PRIORS[name])
    assert list(p.parameters()) == []
    x = torch.rand(shape)
    a, b = p(x), p(x.clone())
    for key, tail in PRIORS[name].items():
        t = a[key]
        want = (shape[0], *(tail if tail is not None else (16, *shape[-2:])))
        assert tuple(t.shape) == want, key
        assert torch.isfinite(t).all() and not t.requires_grad
        torch.testing.assert_close(t, b[key])


@pytest.mark.parametrize("name", ["nss_quality", "classical_degradation"])
def test_embeddings_depend_on_the_image(name):
    p = build(name, "prior")
    torch.manual_seed(0)
    clean = torch.rand(1, 3, 48, 48).clamp(0.2, 0.8)
    noisy = (clean + 0.2 * torch.randn_like(clean)).clamp(0, 1)
    dark = clean * 0.1
    outs = [p(x) for x in (clean, noisy, dark)]
    for key in outs[0]:
        assert not torch.allclose(outs[0][key], outs[1][key], atol=1e-3)
        assert not torch.allclose(outs[0][key], outs[2][key], atol=1e-3)


def test_noise_and_haze_estimates_track_the_degradation():
    from irblocks.clearair.priors_degradation import degradation_features
    torch.manual_seed(0)
    base = torch.full((1, 3, 64, 64), 0.5)
    f0 = degradation_features(base)
    grey_noise = 0.1 * torch.randn(1, 1, 64, 64)      # same noise in R, G, B: luma sigma 0.1
    f1 = degradation_features(base + grey_noise)
    # wavelet MAD noise sigma
    assert abs(f1[0, 0].item() - 0.1) < 0.03 and f0[0, 0].item() < 1e-4
    hazy = 0.6 * torch.rand(1, 3, 64, 64) + 0.4
    # dark channel mean
    assert degradation_features(hazy)[0, 2] > degradation_features(hazy - 0.4)[0, 2]


def test_kmeans_masks_partition_and_k_configurable():
    x = torch.rand(2, 3, 40, 24)
    for k in (0, 1, 5):
        m = build({"type": "kmeans_regions", "k": k}, "prior")(x)["masks"]
        assert m.shape == (2, k, 40, 24)
        if k:
            assert set(m.unique().tolist()) <= {0.0, 1.0}
            assert (m.sum(1) == 1).all()


def test_kmeans_follows_colour_regions():
    x = torch.zeros(1, 3, 16, 16)
    x[..., :, 8:] = 1.0
    m = build({"type": "kmeans_regions", "k": 2, "position_weight": 0.0}, "prior")(x)["masks"][0]
    left, right = m[:, :, :8], m[:, :, 8:]
    assert all(((mm == 1).all() or (mm == 0).all()) for mm in (left[0], right[0]))
    assert not torch.equal(left[0, 0, 0], right[0, 0, 0])


def test_priors_frozen_outside_state_dict_and_no_grad():
    model = irblocks.create_model("clearair-tiny")
    assert not any(k.startswith("prior") or "_priors" in k for k in model.state_dict())
    for p in model.priors.values():
        assert all(not t.requires_grad for t in p.parameters())
    g = Guidance()
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    model.run_priors(x, g)
    for key in ("prior.quality", "prior.masks", "prior.degradation", "prior.content"):
        assert not g.get(key).requires_grad


def test_prior_with_wrong_shape_names_prior_and_shape():
    class Bad(GuidancePrior):
        OUTPUTS = {"quality": (256,)}
        name = "bad_quality"

        def compute(self, img):
            return {"quality": img.new_zeros(img.shape[0], 128)}

    with pytest.raises(PriorOutputError, match=r"'bad_quality'.*expected shape 2 x 256, got 2x128"):
        Bad()(torch.rand(2, 3, 8, 8))


def test_plain_user_prior_with_wrong_shape_fails_in_the_block():
    @register("prior", "_test_plain_bad_quality")
    class PlainBad(nn.Module):
        def __init__(self):
            super().__init__()

        def provides(self):
            return {"quality"}

        def forward(self, img):
            return {"quality": img.new_zeros(img.shape[0], 100)}

    model = irblocks.create_model("clearair-tiny",
                                  priors={"quality": {"type": "_test_plain_bad_quality"}})
    with pytest.raises(InputError,
                       match=r"prior.quality.*quality prior must be 1 x 256.*got 1x100"):
        model(torch.rand(1, 3, 16, 16))


def test_bad_input_to_prior():
    with pytest.raises(InputError, match="expected 3 channels"):
        build("nss_quality", "prior")(torch.rand(1, 1, 8, 8))
