"""One validator: a recipe problem is found by the same code through every door
(``irblocks check``, ``create_model``, direct construction in Python, ``irblocks train``)."""
import math
from pathlib import Path

import pytest
import torch

import irblocks
from irblocks.api import check_recipe
from irblocks.cli import main
from irblocks.registry import ConfigError
from irblocks.registry.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[1]


def _one_line(e) -> str:
    msg = str(e)
    assert "\n" not in msg.strip(), msg
    return msg


# --------------------------------------------------------------------------- loss sections
def test_negative_loss_weight_is_found_by_check_and_by_training(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: restormer-tiny\nloss: [{type: l1, weight: -1}]\n")
    problems = [str(p) for p in check_recipe(str(bad))]
    assert problems == [f"{bad}:2: loss[0].weight: expected a finite number >= 0, got -1"]
    assert main(["check", str(bad)]) == 1
    assert "loss[0].weight: expected a finite number >= 0, got -1" in capsys.readouterr().err
    from irblocks.train.config import parse_sections
    with pytest.raises(ValueError,
                       match=r"loss\[0\].weight: expected a finite number >= 0, got -1"):
        parse_sections(irblocks.resolve_recipe("restormer-tiny").data
                       | {"loss": [{"type": "l1", "weight": -1}]})


def test_loss_terms_are_checked_like_model_components():
    problems = [str(p) for p in check_recipe({"extends": str(ROOT / "recipes/restormer-tiny.yaml"),
                                              "loss": [{"type": "charbonnier", "epsilon": 1},
                                                       {"type": "l11"},
                                                       {"type": "fft", "norm": "Ortho"}]})]
    assert any("loss[0].epsilon: unknown parameter of charbonnier" in p for p in problems), problems
    assert any("loss[1].type: unknown loss 'l11'" in p for p in problems), problems
    assert any("loss[2].norm" in p for p in problems), problems


def test_registry_never_imports_the_trainer():
    import ast
    for f in (ROOT / "registry").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("irblocks.train") for n in names), (f.name, node.lineno)


def test_training_sections_are_registered_not_hardwired():
    from irblocks.registry.sections import sections
    assert {"loss", "optimizer", "schedule", "train", "eval"} <= set(sections())
    problems = [str(p) for p in check_recipe({"extends": str(ROOT / "recipes/restormer-tiny.yaml"),
                                              "optimizer": {"type": "sgd"}, "trian": {}})]
    assert any("optimizer.type" in p for p in problems), problems
    assert any("trian: unknown top-level key; did you mean 'train'?" in p
               for p in problems), problems


# --------------------------------------------------------------------------- direct construction
def test_direct_construction_checks_literal_choices():
    from irblocks import ChannelLayerNorm, SemanticCrossAttention
    with pytest.raises(ConfigError) as e:
        ChannelLayerNorm(8, variant="withbias")
    assert _one_line(e.value).startswith("layernorm.variant: expected 'with_bias' | 'bias_free'")
    assert "did you mean 'with_bias'?" in str(e.value)
    with pytest.raises(ConfigError,
                       match=r"\.mode: expected 'pattern' \| 'dense', got 'Dense'; did you mean"):
        SemanticCrossAttention(dim=8, mode="Dense")
    assert ChannelLayerNorm(8, variant="bias_free").variant == "bias_free"


def test_same_message_from_a_recipe():
    with pytest.raises(RecipeError) as e:
        irblocks.create_model("restormer-tiny",
                              **{"block.norm": {"type": "layernorm", "variant": "withbias"}})
    assert "model.block.norm.variant: expected 'with_bias' | 'bias_free'" in str(e.value)
    assert "did you mean 'with_bias'?" in str(e.value)


def test_non_positive_sizes_are_one_line_value_errors():
    with pytest.raises(ValueError) as e:
        irblocks.TransformerBlock(dim=-4, heads=1)
    assert _one_line(e.value) == "transformer_block.dim: expected a positive integer, got -4"
    with pytest.raises(ValueError, match="heads: expected a positive integer, got 0"):
        irblocks.MDTA(dim=8, heads=0)
    with pytest.raises(ValueError, match="gdfn.dim: expected a positive integer, got 0"):
        irblocks.GDFN(dim=0)
    with pytest.raises(ValueError, match="model.width: expected"):
        irblocks.create_model("restormer-tiny", width=-8)


def test_build_checks_once_and_keeps_the_path():
    from irblocks import registry
    with pytest.raises(ConfigError, match=r"^gdfn\.expansion: expected float > 0, got .x."):
        registry.build({"type": "transformer_block", "ffn": {"type": "gdfn", "expansion": "x"}},
                       "block", path="stage", dim=8, heads=1)
    m = registry.build({"type": "gdfn", "expansion": 2}, "block", dim=8)
    assert registry.spec_of(m) == {"type": "gdfn", "dim": 8, "expansion": 2}


# --------------------------------------------------------------------------- schedule
def test_schedule_honours_min_lr():
    from irblocks.train.config import ScheduleConfig, lr_factor
    s = ScheduleConfig(type="warmup_cosine", warmup_epochs=1, epochs=10, min_lr=1e-6)
    assert lr_factor(s, 10.0, lr=1e-4) == pytest.approx(1e-2)            # ends at min_lr
    assert lr_factor(s, 0.5, lr=1e-4) == pytest.approx(0.5)              # warm-up from 0
    mid = 1e-2 + (1 - 1e-2) * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert lr_factor(s, 5.5, lr=1e-4) == pytest.approx(mid)
    h = ScheduleConfig(type="halve_at_mid", epochs=10, min_lr=8e-5)
    assert lr_factor(h, 9.0, lr=1e-4) == pytest.approx(0.8)             # a floor


def test_trainer_ends_at_min_lr(tmp_path):
    from irblocks.train import SyntheticDataset, Trainer
    rec = irblocks.resolve_recipe("restormer-tiny").data
    rec["optimizer"] = {"type": "adamw", "lr": 1e-3}
    rec["schedule"] = {"type": "warmup_cosine", "warmup_epochs": 0, "epochs": 1, "min_lr": 1e-4}
    rec["train"] = {"batch_size": 1, "patch_size": 16}
    imgs = [torch.rand(3, 32, 32) for _ in range(2)]
    data = SyntheticDataset(imgs, "gaussian_noise:sigma=25", patch_size=16, seed=0)
    t = Trainer(rec, data, out_dir=tmp_path / "run", steps=4, progress=False)
    assert t.lr_at(t.total_steps - 1) == pytest.approx(1e-4)


def test_unused_config_keys_are_gone():
    from irblocks.losses import AuxLoss
    from irblocks.train.config import TrainConfig
    assert "sigmas" not in TrainConfig.model_fields
    assert not hasattr(AuxLoss, "needs_model")
    problems = check_recipe({"extends": str(ROOT / "recipes/restormer-tiny.yaml"),
                             "train": {"sigmas": [15]}})
    assert any("train.sigmas: unknown key" in str(p) for p in problems), problems


def test_annotated_ranges_replace_hand_written_checks():
    from irblocks import GatedDegradationAdaptation, MaskAveragePool
    for make, msg in [(lambda: irblocks.GDFN(8, expansion=0),
                       "gdfn.expansion: expected float > 0, got 0"),
                      (lambda: MaskAveragePool(mask_dropout=1.0),
                       "mask_dropout: expected float >= 0 and < 1"),
                      (lambda: GatedDegradationAdaptation(dim=0),
                       "gated_da.dim: expected a positive integer"),
                      (lambda: irblocks.SemanticCrossAttention(8, mask_dropout=-0.1),
                       "mask_dropout: expected")]:
        with pytest.raises(ConfigError, match=msg):
            make()
    assert "expansion: float > 0 = 2.66" in irblocks.registry.info("gdfn")["signature"]


@pytest.mark.parametrize("module, name, args, kw, field", [
    ("irblocks.clusir.wavelet_block", "WaveAttention", (16,), {"sr": 0}, "wave_attention.sr"),
    ("irblocks.clusir.dafmm", "DAFMM", (16,), {"prompt_width": 0}, "dafmm.prompt_width"),
    ("irblocks.clusir.dafmm", "DAFMM", (16,), {"fft_norm": "orth"}, "dafmm.fft_norm"),
    ("irblocks.clusir.prompt_fusion", "PromptFusion", (16,), {"stages": 0},
     "clusir_prompt_fusion.stages"),
    ("irblocks.clearair.priors_quality", "NSSQualityPrior", (), {"scales": 0},
     "nss_quality.scales"),
    ("irblocks.clearair.priors_degradation", "ClassicalDegradationPrior", (), {"scales": 0},
     "classical_degradation.scales"),
])
def test_single_value_ranges_are_annotations(module, name, args, kw, field):
    """Ranges once hand-written in the blocks now come from their annotations: direct
    construction gets the validator's one line (a ValueError naming block.field)."""
    import importlib
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ValueError, match=rf"^{field}: expected ") as e:
        cls(*args, **kw)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("module, name, kw, field", [
    ("irblocks.clusir.prototypes", "PrototypeBank", {"count": 0}, "prototype_bank.count"),
    ("irblocks.clusir.prototypes", "PrototypeBank", {"weight": -1.0}, "prototype_bank.weight"),
    ("irblocks.clusir.prototypes", "PrototypeBank", {"init": "ortho"}, "prototype_bank.init"),
    ("irblocks.prompt", "PromptGenBlock", {"length": 0}, "prompt_gen.length"),
    ("irblocks.prompt", "PromptGenBlock", {"size": 0}, "prompt_gen.size"),
])
def test_bank_and_prompt_ranges_are_annotations(module, name, kw, field):
    import importlib
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(ValueError, match=rf"^{field}: expected "):
        cls(16, **kw)
