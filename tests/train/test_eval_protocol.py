"""irblocks eval's protocol: whole images by default, the papers' centre crop to a multiple of
16 as an option and as the default of the recipes whose paper uses it, both settings in the
JSON and the table, one line when a whole image does not fit in memory."""

import json

import pytest
import torch
import yaml
from torch import nn

import irblocks
from irblocks.cli import main
from irblocks.train.evaluate import (
    EvalError,
    crop_to_multiple,
    evaluate,
    format_table,
    recipe_crop_multiple,
)

from ._util import paired_folder, tiny_recipe


class GlobalMean(nn.Module):
    """Output depends on the whole image (like pooled prompts and gates): x + mean(x) - 0.5."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return x + x.mean(dim=(1, 2, 3), keepdim=True) - 0.5


class Pairs:
    def __init__(self, *pairs):
        self.pairs = pairs

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return {"input": self.pairs[i][0], "target": self.pairs[i][1]}


def _pair(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(3, h, w, generator=g)
    return (y + 0.1 * torch.randn(3, h, w, generator=g)).clamp(0, 1), y


def test_whole_image_by_default():
    # 96 x 560: the old default tiled every side over 512
    x, y = _pair(96, 560)
    m = GlobalMean()
    res = evaluate(m, {"t": Pairs((x, y))})
    assert m.seen == [(96, 560)]
    assert res["convention"]["tile"] is None and res["convention"]["crop_multiple"] == 1
    want = irblocks.train.metrics.batch_psnr(m(x[None]).clamp(0, 1), y[None])[0]
    assert res["tasks"]["t"]["psnr"] == pytest.approx(float(want), abs=1e-9)
    m.seen.clear()
    tiled = evaluate(m, {"t": Pairs((x, y))}, tile=256)
    assert len(m.seen) > 1 and tiled["tasks"]["t"]["psnr"] != res["tasks"]["t"]["psnr"]


def test_crop_to_multiple_is_the_papers_crop_img():
    # crop_img(base=16): rows [r // 2, H - r + r // 2) with r = H % 16, columns alike
    x = torch.arange(37 * 50, dtype=torch.float32).view(1, 1, 37, 50)
    c = crop_to_multiple(x, 16)
    assert c.shape[-2:] == (32, 48)
    assert torch.equal(c, x[..., 2:34, 1:49])
    assert crop_to_multiple(x, 1) is x
    with pytest.raises(EvalError, match="no 64x64 crop"):
        crop_to_multiple(x, 64)


def test_crop_multiple_recorded_in_json_and_table():
    x, y = _pair(37, 50)
    m = GlobalMean()
    res = evaluate(m, {"t": Pairs((x, y))}, crop_multiple=16)
    assert m.seen == [(32, 48)]
    assert res["convention"]["crop_multiple"] == 16 and res["convention"]["tile"] is None
    assert "protocol: whole image, centre-cropped to a multiple of 16" in format_table(res)
    assert "protocol: tiled 16x16 (overlap 4), no crop" in format_table(
        evaluate(m, {"t": Pairs((x, y))}, tile=16, overlap=4)
    )


def test_out_of_memory_is_one_line_suggesting_tiles():
    class Oom(nn.Module):
        def forward(self, x):
            raise RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
            )

    with pytest.raises(
        EvalError, match=r"image 0 \(40x48\) does not fit in memory whole; pass --tile 512"
    ):
        evaluate(Oom(), {"t": Pairs(_pair(40, 48))})


def test_recipes_state_their_papers_protocol():
    assert {
        n: recipe_crop_multiple(irblocks.resolve_recipe(n).data)
        for n in ("restormer", "promptir", "anyir", "anyir-tiny", "clearair")
    } == {"restormer": 1, "promptir": 16, "anyir": 16, "anyir-tiny": 16, "clearair": 16}
    from irblocks.train.config import validate_sections

    assert validate_sections({"eval": {"crop_multiple": 0}})[0].startswith("eval.crop_multiple")
    assert "unknown key" in validate_sections({"eval": {"crop_multple": 16}})[0]


@pytest.mark.parametrize(
    "recipe_eval,flag,want",
    [
        ({"crop_multiple": 16}, [], 16),
        ({"crop_multiple": 16}, ["--crop-multiple", "1"], 1),
        (None, [], 1),
    ],
)
def test_cli_eval_uses_the_recipes_protocol(tmp_path, capsys, recipe_eval, flag, want):
    rec = tiny_recipe(**({"eval": recipe_eval} if recipe_eval else {}))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rec))
    model = irblocks.create_model(str(tmp_path / "r.yaml"))
    ck = irblocks.save(model, tmp_path / "m.safetensors")
    paired_folder(tmp_path / "data" / "denoise", n=1, h=37, w=50)
    js = tmp_path / "e.json"
    assert (
        main(
            ["eval", str(ck), "--data", str(tmp_path / "data"), "--json", str(js), "--quiet", *flag]
        )
        == 0
    )
    conv = json.loads(js.read_text())["convention"]
    assert conv["crop_multiple"] == want and conv["tile"] is None
    crop = "centre-cropped to a multiple of 16" if want == 16 else "no crop"
    assert f"protocol: whole image, {crop}" in capsys.readouterr().out
