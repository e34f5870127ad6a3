"""Registry: registration, schemas, lookups with suggestions, listing, info, plug-ins."""
import sys
import textwrap
import warnings

import pydantic
import pytest
import torch
from torch import nn

import irblocks
from irblocks import registry
from irblocks.registry import plugins
from irblocks.registry import table as core


@pytest.fixture
def scratch():
    """Register throwaway entries and remove them afterwards."""
    added = []

    def reg(kind, name, **kw):
        def deco(obj):
            out = registry.register(kind, name, **kw)(obj)
            added.append((kind, name, kw.get("aliases", ())))
            return out
        return deco

    yield reg
    for kind, name, aliases in added:
        core._ENTRIES[kind].pop(name, None)
        for a in aliases:
            core._ALIASES[kind].pop(a, None)


def test_builtins_registered_on_import():
    assert {"layernorm", "mdta", "gdfn", "transformer_block", "patch_embed", "downsample",
            "upsample", "prompt_gen", "prompt_interaction"} <= set(registry.list("block"))
    assert "unet_restorer" in registry.list("model")


def test_aliases_and_wildcards():
    assert registry.lookup("block", "channel_layernorm").name == "layernorm"
    assert registry.list("block", "*norm*") == ["layernorm"]
    assert registry.list("block", "prompt_*") == ["prompt_gen", "prompt_interaction"]
    assert registry.list("block", "gated_dconv_ffn") == ["gdfn"]          # alias matches


def test_unknown_name_suggests_nearest():
    with pytest.raises(registry.UnknownNameError,
                       match=r"unknown block 'gdfm'\. Did you mean 'gdfn'"):
        registry.lookup("block", "gdfm")
    with pytest.raises(registry.UnknownNameError, match="Did you mean 'layernorm'"):
        registry.lookup("block", "LayerNorm")


def test_wrong_kind_is_named():
    with pytest.raises(registry.WrongKindError, match="'gdfn' is a block, not a loss"):
        registry.lookup("loss", "gdfn")


def test_duplicate_registration_names_both_files(scratch):
    @scratch("block", "dup_probe")
    class A(nn.Module):
        def __init__(self, dim: registry.Context[int]):
            super().__init__()

    with pytest.raises(registry.DuplicateError) as e:
        @scratch("block", "dup_probe")
        class B(nn.Module):
            def __init__(self, dim: registry.Context[int]):
                super().__init__()
    assert str(e.value).count(__file__) == 2


def test_schema_from_signature_forbids_unknown_keys(scratch):
    @scratch("block", "schema_probe")
    class P(nn.Module):
        def __init__(self, dim: registry.Context[int], k: int = 3, mode: str = "a"):
            super().__init__()

    entry = registry.lookup("block", "schema_probe")
    assert set(entry.schema.model_fields) == {"k", "mode"}          # context excluded
    entry.schema.model_validate({"k": 5})
    with pytest.raises(pydantic.ValidationError):
        entry.schema.model_validate({"kk": 5})
    with pytest.raises(pydantic.ValidationError):
        entry.schema.model_validate({"k": "five"})


def test_annotations_are_required(scratch):
    with pytest.raises(TypeError, match="parameter 'k' .* has no type annotation"):
        @scratch("block", "noann_probe")
        class N(nn.Module):
            def __init__(self, dim: registry.Context[int], k=3):
                super().__init__()


def test_explicit_schema(scratch):
    class Cfg(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        k: int = 1

    @scratch("block", "explicit_probe", schema=Cfg)
    class E(nn.Module):
        def __init__(self, dim: registry.Context[int], k: int = 1):
            super().__init__()

    assert registry.lookup("block", "explicit_probe").schema is Cfg


def test_info_has_signature_schema_source_doc():
    d = registry.info("gdfn")
    assert d["kind"] == "block" and d["name"] == "gdfn"
    assert "expansion" in d["signature"] and d["context"] == ["dim"]
    assert d["schema"]["properties"]["expansion"]
    assert d["source"].endswith("gdfn.py")
    assert "gelu" in d["doc"]


def test_build_passes_only_declared_context_and_rejects_context_in_spec():
    m = registry.build({"type": "gdfn", "expansion": 2}, "block", dim=8, heads=2, level=1)
    assert m.project_out.out_channels == 8
    with pytest.raises(registry.ConfigError, match=r"'dim' is supplied by the container"):
        registry.build({"type": "gdfn", "dim": 4}, "block", dim=8)
    with pytest.raises(registry.ConfigError, match=r"gdfn\.expansion: .*float"):
        registry.build({"type": "gdfn", "expansion": "big"}, "block", dim=8)


def test_per_level_values_are_indexed_by_level():
    m = registry.build({"type": "gdfn", "expansion": [1, 2, 3, 4]}, "block", dim=8, level=2)
    assert m.hidden == 24


def _write_plugin(tmp_path, body, name="irb_probe_plugin"):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    dist = tmp_path / f"{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[irblocks.plugins]\n{name} = {name}\n")
    return name


def test_plugin_package_registers_a_block_usable_in_recipes(tmp_path, monkeypatch):
    name = _write_plugin(tmp_path, """
        import torch
        from torch import nn
        from irblocks.registry import Context, register

        @register("block", "probe_plugin_mixer")
        class ProbeMixer(nn.Module):
            '''Plug-in mixer: 1x1 conv. (B, C, H, W) -> (B, C, H, W).'''
            def __init__(self, dim: Context[int], scale: float = 1.0):
                super().__init__()
                self.conv = nn.Conv2d(dim, dim, 1)
                self.scale = scale
            def forward(self, x):
                return self.conv(x) * self.scale
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("IRBLOCKS_NO_PLUGINS", raising=False)
    try:
        assert name in plugins.load_plugins(force=True)
        m = irblocks.create_model("restormer-tiny",
                                  block={"mixer": {"type": "probe_plugin_mixer", "scale": 0.5}})
        assert type(m.encoders[0].blocks[0].attn).__name__ == "ProbeMixer"
        assert m(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    finally:
        core._ENTRIES["block"].pop("probe_plugin_mixer", None)
        sys.modules.pop(name, None)


def test_broken_plugin_is_a_warning(tmp_path, monkeypatch):
    name = _write_plugin(tmp_path, "raise ImportError('missing dependency xyz')\n",
                         name="irb_broken_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(RuntimeWarning, match="irb_broken_plugin.*missing dependency xyz"):
        loaded = plugins.load_plugins(force=True)
    assert name not in loaded
    assert "gdfn" in registry.list("block")          # the library still works


def test_no_plugins_env_turns_autoloading_off(tmp_path, monkeypatch):
    _write_plugin(tmp_path, "raise RuntimeError('must not be imported')\n", name="irb_off_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("IRBLOCKS_NO_PLUGINS", "1")
    monkeypatch.setattr(plugins, "_PLUGINS_LOADED", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plugins.load_plugins() == []


def test_kernels_are_registered_with_their_entry_points():
    from irblocks.kernels.layernorm import channel_layer_norm
    assert {"channel_layer_norm", "gelu_gate", "channel_attention", "anyir_fusion",
            "gated_da_modulate", "haar_dwt", "haar_idwt", "fsb_filter",
            "pattern_attention"} <= set(registry.list("kernel"))
    assert registry.lookup("kernel", "channel_layer_norm").obj is channel_layer_norm
    d = registry.info("channel_layer_norm")
    assert d["kind"] == "kernel" and "impl: str | null = None" in d["signature"]


def test_accepts_reads_names_mappings_and_factories():
    from functools import partial

    from irblocks import GDFN, PromptInteraction
    assert registry.accepts("prompt_interaction", "block", "out_dim")
    assert registry.accepts({"type": "prompt_interaction", "prompt_dim": 8}, "block", "out_dim")
    assert not registry.accepts("gdfn", "block", "out_dim")
    assert registry.accepts(partial(PromptInteraction, prompt_dim=8), "block", "out_dim")
    assert not registry.accepts(partial(GDFN, expansion=2.0), "block", "out_dim")
