"""The guidance flow can express the later networks: two toy recipes written in this file.

(1) ClearAIR-shaped: a guidance block after the first floor(n/2) blocks of every encoder,
    latent and decoder level reads priors computed once per image on the padded input and
    shares one trainable module across levels.
(2) ClusIR-shaped: encoder and decoder levels use different block types, each encoder level
    produces a prompt, a latent block consumes all stage prompts with the latent, and each
    decoder level consumes a prompt.
"""
import pytest
import torch

import irblocks
from irblocks.guidance import Guidance, GuidanceError
from irblocks.registry.recipe import RecipeError
from tests._toy_blocks import CALLS, ToyFiLM, ToyPromptProducer

BASE = {"type": "unet_restorer", "width": 8, "blocks": [2, 3, 1, 4], "refinement": 1,
        "heads": [1, 2, 4, 8]}


def test_clearair_shaped_guidance():
    CALLS.update(prior=0, shapes=[])
    m = irblocks.create_model({"recipe": 1, "model": {
        **BASE, "priors": {"colour": "toy_colour_stats"}, "shared": {"adapter": "toy_adapter"},
        "mid_block": "toy_film"}}).train()
    # position: after floor(n/2) blocks in every encoder, latent and decoder level, not in
    # refinement
    for stage, n in [(m.encoders[0], 2), (m.encoders[1], 3), (m.encoders[2], 1), (m.latent, 4),
                     (m.decoders[0], 1), (m.decoders[1], 3), (m.decoders[2], 2)]:
        kinds = [type(b).__name__ for b in stage.blocks]
        assert kinds.index("ToyFiLM") == n // 2 and kinds.count("ToyFiLM") == 1
    assert not any(isinstance(b, ToyFiLM) for b in m.refinement.blocks)
    # one shared trainable module, counted once, outside every block
    films = [b for b in m.modules() if isinstance(b, ToyFiLM)]
    assert len(films) == 7 and all(f._shared[0] is m.shared["adapter"] for f in films)
    assert ([k for k in m.state_dict() if "lin." in k]
            == ["shared.adapter.lin.weight", "shared.adapter.lin.bias"])
    # the prior runs once per forward, on the padded input, outside the state_dict
    y = m(torch.rand(2, 3, 13, 21))
    assert CALLS["prior"] == 1 and CALLS["shapes"] == [(2, 3, 16, 24)] and y.shape == (2, 3, 13, 21)
    assert not any(k.startswith("_priors") for k in m.state_dict())
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.shared.parameters())
    assert all(f.to_scale.weight.grad is not None for f in films)


def test_clusir_shaped_guidance():
    spec = {**BASE,
            "encoder_block": {"type": "transformer_block",
                              "ffn": {"type": "gdfn", "expansion": 1.0}},
            "decoder_block": {"type": "transformer_block",
                              "mixer": {"type": "mdta", "project": False}},
            "encoder_end": "toy_prompt_producer", "latent_end": "toy_prompt_fuser",
            "decoder_end": "toy_prompt_consumer"}
    m = irblocks.create_model({"recipe": 1, "model": spec})
    assert (m.encoders[0].blocks[0].ffn.hidden == 8
            and m.decoders[0].blocks[0].attn.project_out is None)
    assert ([b.key for b in m.modules() if isinstance(b, ToyPromptProducer)]
            == ["prompt.enc0", "prompt.enc1", "prompt.enc2"])
    assert [b.key for b in m.decoder_ends] == ["prompt.dec2", "prompt.dec1", "prompt.dec0"]
    g = Guidance()
    y = m(torch.rand(1, 3, 16, 16), g)
    assert ({f"prompt.enc{l}" for l in range(3)} | {f"prompt.dec{l}" for l in range(3)}
            <= set(g.fields))
    y.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_consumer_without_producer_is_rejected_before_running():
    spec = {**BASE, "decoder_end": "toy_prompt_consumer"}
    with pytest.raises(RecipeError,
                       match=r"ToyPromptConsumer reads guidance \['prompt.dec2'\] but nothing "
                             r"before it writes it"):
        irblocks.create_model({"recipe": 1, "model": spec})
    with pytest.raises(RecipeError, match=r"reads guidance \['prior.stats'\]"):
        irblocks.create_model({"recipe": 1, "model": {**BASE, "shared": {"adapter": "toy_adapter"},
                                                      "mid_block": "toy_film"}})


def test_reading_an_unwritten_field_names_what_exists():
    g = Guidance({"prior.a": torch.zeros(1)})
    with pytest.raises(GuidanceError,
                       match=r"'prompt.x' was read before any producer wrote it \(written so far: "
                             r"prior.a\)"):
        g.get("prompt.x")
