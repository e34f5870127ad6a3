"""Recipes: loading, extends, whole-recipe validation with file:line, round trips, schema,
checkpoints."""
import re
import textwrap
from pathlib import Path

import jsonschema
import pytest
import torch
import yaml

import irblocks
from irblocks.registry.recipe import RecipeError, deep_merge
from irblocks.registry.schema import recipe_schema


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(src):
    with pytest.raises(RecipeError) as e:
        irblocks.create_model(src)
    return e.value.problems


def test_shipped_recipes_listed_with_wildcards():
    assert ({"restormer", "restormer-tiny", "promptir", "promptir-tiny"}
            <= set(irblocks.list_models()))
    assert (irblocks.list_models("prompt*")
            == [n for n in irblocks.list_models() if n.startswith("prompt")])


def test_extends_maps_merge_lists_replace(tmp_path):
    p = write(tmp_path, "child.yaml", """
        recipe: 1
        extends: restormer
        model:
          width: 8
          blocks: [1, 1, 1, 2]
          block: {ffn: {expansion: 2}}
    """)
    r = irblocks.resolve_recipe(p)
    m = r.data["model"]
    assert m["width"] == 8 and m["blocks"] == [1, 1, 1, 2]
    assert m["block"]["ffn"] == {"type": "gdfn", "expansion": 2, "bias": False}      # merged
    assert m["block"]["mixer"] == {"type": "mdta", "bias": False}                    # inherited
    assert (deep_merge({"a": [1, 2], "b": {"x": 1}}, {"a": [3], "b": {"y": 2}})
            == {"a": [3], "b": {"x": 1, "y": 2}})
    assert (deep_merge({"type": "mdta", "bias": False}, {"type": "other", "k": 1})
            == {"type": "other", "k": 1})


def test_extends_relative_file(tmp_path):
    write(tmp_path, "base.yaml", "recipe: 1\nextends: restormer-tiny\nmodel: {width: 16}\n")
    p = write(tmp_path, "leaf.yaml", "recipe: 1\nextends: base.yaml\nmodel: {refinement: 2}\n")
    m = irblocks.create_model(p)
    assert m.width == 16 and len(m.refinement.blocks) == 2


def test_every_error_reported_at_once_with_file_line_and_path(tmp_path):
    p = write(tmp_path, "bad.yaml", """\
        recipe: 1
        extends: restormer-tiny
        model:
          widht: 8
          block:
            type: transformer_block
            heads: 3
            ffn: {type: gdfnn}
            mixer: {type: mdta, bias: maybe}
        loss:
          - {type: l1x}
    """)
    got = {(pr.line, pr.path): pr.message for pr in problems(p)}
    f = str(p)
    assert all(pr.file == f for pr in problems(p))
    assert "did you mean 'width'" in got[(4, "model.widht")]
    assert "supplied by the container" in got[(7, "model.block.heads")]
    assert "Did you mean 'gdfn'" in got[(8, "model.block.ffn.type")]
    assert "expected bool" in got[(9, "model.block.mixer.bias")]
    assert "Did you mean 'l1'" in got[(11, "loss[0].type")]
    assert len(got) == 5


def test_error_messages_for_common_mistakes(tmp_path):
    # a wrong type names the expected type
    p = write(tmp_path, "t.yaml", "recipe: 1\nextends: restormer-tiny\nmodel: {width: eight}\n")
    (pr,) = problems(p)
    assert (pr.line, pr.path) == (3, "model.width") and "expected int" in pr.message
    # a component mapping without its type
    p = write(tmp_path, "m2.yaml", "recipe: 1\nmodel: {width: 8}\n")
    (pr,) = problems(p)
    assert "needs a 'type' key" in pr.message and pr.path == "model"
    # unknown extends file, with a suggestion for names
    p = write(tmp_path, "e.yaml", "recipe: 1\nextends: restormr\nmodel: {}\n")
    (pr,) = problems(p)
    assert pr.line == 2 and "unknown recipe 'restormr'; did you mean 'restormer'" in pr.message
    p = write(tmp_path, "e2.yaml", "recipe: 1\nextends: nothere.yaml\nmodel: {}\n")
    (pr,) = problems(p)
    assert "recipe file 'nothere.yaml' does not exist" in pr.message
    # YAML that is not a mapping
    p = write(tmp_path, "l.yaml", "- a\n- b\n")
    (pr,) = problems(p)
    assert "must be a YAML mapping" in pr.message
    # unknown top-level key
    p = write(tmp_path, "k.yaml", "recipe: 1\nextends: restormer-tiny\nmodle: {}\n")
    (pr,) = problems(p)
    assert "did you mean 'model'" in pr.message
    # constructor-level check surfaces as a recipe error too
    p = write(tmp_path, "h.yaml",
              "recipe: 1\nextends: restormer-tiny\nmodel: {heads: [1, 3, 4, 8]}\n")
    (pr,) = problems(p)
    assert "heads=3 must divide dim=16" in pr.message


def test_missing_required_field_is_reported(tmp_path):
    from torch import nn

    from irblocks import registry
    from irblocks.registry import table as core

    @registry.register("block", "required_probe")
    class R(nn.Module):
        def __init__(self, dim: registry.Context[int], size: int):
            super().__init__()
    try:
        p = write(tmp_path, "r.yaml",
                  "recipe: 1\nextends: restormer-tiny\nmodel: {block: {ffn: required_probe}}\n")
        (pr,) = problems(p)
        assert pr.path == "model.block.ffn" and "missing required parameter 'size'" in pr.message
    finally:
        core._ENTRIES["block"].pop("required_probe")


def test_safe_loader_only(tmp_path):
    p = write(tmp_path, "evil.yaml",
              "recipe: 1\nmodel: !!python/object/apply:os.system ['echo pwned']\n")
    (pr,) = problems(p)
    assert "not valid YAML" in pr.message


def test_overrides_and_registered_model_names():
    m = irblocks.create_model("restormer-tiny", width=4, refinement=0)
    assert m.width == 4 and len(m.refinement.blocks) == 0
    m = irblocks.create_model("unet_restorer", width=8, blocks=[1, 1, 1, 1], refinement=1)
    assert m.width == 8


@pytest.mark.parametrize("name", irblocks.list_models())
def test_to_recipe_round_trip_on_meta(name):
    with torch.device("meta"):
        m = irblocks.create_model(name)
        again = irblocks.create_model(irblocks.to_recipe(m))
    a = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in again.state_dict().items()}
    assert a == b


def test_to_recipe_of_a_python_built_model():
    from functools import partial

    from irblocks import GDFN, TransformerBlock, UNetRestorer
    m = UNetRestorer(width=8, blocks=[1, 1, 1, 1], refinement=1,
                     block=partial(TransformerBlock, ffn=partial(GDFN, expansion=2.0)))
    r = irblocks.to_recipe(m)
    assert (r["model"]["block"]
            == {"type": "transformer_block", "ffn": {"type": "gdfn", "expansion": 2.0}})
    again = irblocks.create_model(r)
    assert ({k: v.shape for k, v in m.state_dict().items()}
            == {k: v.shape for k, v in again.state_dict().items()})


def _contributing_example() -> dict:
    text = (Path(__file__).resolve().parents[1] / "CONTRIBUTING.md").read_text()
    block = re.search(r"```yaml\n(# recipes/restormer-gated.yaml\n.*?)```", text, re.S)
    assert block, "CONTRIBUTING.md lost its recipe example"
    return yaml.safe_load(block.group(1))


@pytest.fixture(scope="module")
def schema_validator():
    """The recipe schema's validator, the schema checked once against Draft 2020-12's
    metaschema (``jsonschema.validate`` re-checks the whole schema on every call, ~1 s each)."""
    schema = recipe_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator
    return jsonschema.Draft202012Validator(schema)


def test_schema_validates_every_shipped_recipe_file_as_written(schema_validator):
    files = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))
    assert len(files) >= 12
    for f in files:                                  # partial `model:` under `extends` included
        schema_validator.validate(yaml.safe_load(f.read_text()))
    for name in irblocks.list_models():              # and merged
        schema_validator.validate(irblocks.resolve_recipe(name).data)
    example = _contributing_example()
    schema_validator.validate(example)
    from irblocks.api import check_recipe
    assert check_recipe(example) == []


@pytest.mark.parametrize("bad", [
    {"model": {"type": "unet_restorer", "widht": 3}},                              # typo
    {"extends": "restormer-tiny", "model": {"widht": 3}},                         # typo, partial
    {"extends": "restormer-tiny", "model": {"block": {"ffn": {"expanson": 2}}}},  # nested typo
    {"extends": "restormer-tiny", "model": {"block": {"ffn": {"type": "gdfnn"}}}},  # unknown name
    {"extends": "restormer-tiny", "model": {"width": "wide"}},                    # wrong type
    # no type, no extends
    {"model": {"width": 8}},
    {"extends": "restormer-tiny", "optimiser": {"lr": 1}},                        # unknown section
    {"extends": "restormer-tiny", "schedule": {"type": "cosine"}},                # unknown choice
    {"extends": "restormer-tiny", "loss": [{"type": "l1", "weight": -1}]},        # negative weight
])
def test_schema_still_rejects_typos_names_and_types(bad, schema_validator):
    with pytest.raises(jsonschema.ValidationError):
        schema_validator.validate(bad)


def test_checkpoint_round_trip(tmp_path):
    m = irblocks.create_model("promptir-tiny").eval()
    path = irblocks.save(m, tmp_path / "m.safetensors")
    m2 = irblocks.load(path).eval()
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert irblocks.checkpoint.read_recipe(path)["model"]["latent_end"]["prompt_dim"] == 16
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_errors(tmp_path):
    with pytest.raises(irblocks.checkpoint.CheckpointError, match="no such checkpoint"):
        irblocks.load(tmp_path / "none.safetensors")
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(irblocks.checkpoint.CheckpointError, match="without an irblocks recipe"):
        irblocks.load(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(irblocks.checkpoint.CheckpointError, match="not a safetensors file"):
        irblocks.load(tmp_path / "junk.safetensors")
