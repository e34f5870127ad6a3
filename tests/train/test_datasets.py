"""Datasets: pairing rules, layouts, bad inputs, synthesis, mixing, sampler resumption and
sharding."""
import pytest
import torch

from irblocks.train.datasets import (
    AllInOne,
    DataError,
    EpochBatchSampler,
    PairedFolder,
    SyntheticDataset,
    find_paired,
    make_loader,
    random_crop_flip,
)
from irblocks.train.imageio import ImageError, read_image

from ._util import paired_folder, write_png


def test_paired_folder_and_layouts(tmp_path):
    root = paired_folder(tmp_path / "derain" / "Rain100L", n=2)
    paired_folder(tmp_path / "dehaze", n=2, layout=("hazy", "clear"))
    found = find_paired(tmp_path, patch_size=16, augment=True)
    assert sorted(found) == ["dehaze", "derain/Rain100L"]
    ds = found["derain/Rain100L"]
    it = ds[0]
    assert (it["input"].shape == (3, 16, 16) and it["task"] == "derain/Rain100L"
            and it["name"] == "img0.png")
    full = PairedFolder(root / "input", root / "target")[1]
    assert torch.equal(full["target"], read_image(root / "target" / "img1.png"))


def test_cdd11_and_reside_layouts(tmp_path):
    for t in ("low", "haze_rain", "clear"):
        for i in range(2):
            write_png(tmp_path / "CDD-11_test" / t / f"{i:03d}.png", seed=i)
    found = find_paired(tmp_path)
    assert sorted(found) == ["CDD-11_test/haze_rain", "CDD-11_test/low"]
    assert len(found["CDD-11_test/low"]) == 2
    # RESIDE-style training folders: hazy images in part1..N subfolders, clean ones by id
    write_png(tmp_path / "Dehaze" / "synthetic" / "part1" / "0025_0.8_0.1.png")
    write_png(tmp_path / "Dehaze" / "synthetic" / "part2" / "0026_0.9_0.2.png")
    write_png(tmp_path / "Dehaze" / "original" / "0025.png")
    write_png(tmp_path / "Dehaze" / "original" / "0026.png")
    ds = find_paired(tmp_path / "Dehaze")["Dehaze"]
    assert [c.name for _, c in ds.pairs] == ["0025.png", "0026.png"]


def test_benchmark_naming_schemes(tmp_path):
    write_png(tmp_path / "rainy" / "rain-12.png")
    write_png(tmp_path / "gt" / "norain-12.png")
    write_png(tmp_path / "hazy" / "0001_0.8_0.2.png")
    write_png(tmp_path / "clear" / "0001.png")
    assert PairedFolder(tmp_path / "rainy", tmp_path / "gt").pairs[0][1].name == "norain-12.png"
    assert PairedFolder(tmp_path / "hazy", tmp_path / "clear").pairs[0][1].name == "0001.png"
    write_png(tmp_path / "hazy" / "0002_0.8_0.2.png")
    with pytest.raises(DataError, match="no clean image for .*0002_0.8_0.2.png"):
        PairedFolder(tmp_path / "hazy", tmp_path / "clear")


def test_bad_inputs(tmp_path):
    paired_folder(tmp_path / "a", n=1)
    write_png(tmp_path / "a" / "input" / "img1.png", 40, 48)
    write_png(tmp_path / "a" / "target" / "img1.png", 40, 50)
    with pytest.raises(DataError,
                       match=r"pair size mismatch: .*img1.png is 40x48 but .*img1.png is 40x50"):
        PairedFolder(tmp_path / "a" / "input", tmp_path / "a" / "target")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="no images found in .*empty"):
        SyntheticDataset(tmp_path / "empty", "gaussian_noise")
    with pytest.raises(DataError, match="no paired data found"):
        find_paired(tmp_path / "empty")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="cannot read image .*bad.png"):
        read_image(bad)


def test_synthetic_deterministic_and_epoch_dependent(tmp_path):
    imgs = [torch.rand(3, 40, 50) for _ in range(3)]
    ds = SyntheticDataset(imgs, "gaussian_noise:sigma=25", patch_size=24, augment=True, seed=3)
    a, b = ds[(0, 1)], ds[(0, 1)]
    assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
    c = ds[(1, 1)]
    assert not torch.equal(a["input"], c["input"])
    assert a["task"] == "gaussian_noise" and a["input"].shape == (3, 24, 24)
    # whole images when no patch size: the noisy input keeps the clean image's size
    full = SyntheticDataset(imgs, "haze")[0]
    assert full["input"].shape == (3, 40, 50) and torch.equal(full["target"], imgs[0])


def test_crop_flip_same_for_pair_and_pads_small():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(3 * 20 * 30, dtype=torch.float32).view(3, 20, 30)
    a, b = random_crop_flip([x, x.clone()], 16, True, g)
    assert torch.equal(a, b) and a.shape == (3, 16, 16)
    small, = random_crop_flip([torch.rand(3, 10, 12)], 16, False, g)
    assert small.shape == (3, 16, 16)


def test_all_in_one_repeats():
    d1 = SyntheticDataset([torch.rand(3, 32, 32)], "gaussian_noise", task="noise")
    d2 = SyntheticDataset([torch.rand(3, 32, 32)] * 2, "haze", task="haze")
    mix = AllInOne([d1, d2], [3, 1])
    assert len(mix) == 5
    tasks = [mix[(0, i)]["task"] for i in range(5)]
    assert tasks == ["noise"] * 3 + ["haze"] * 2
    # repeated copies get different random draws
    assert not torch.equal(mix[(0, 0)]["input"], mix[(0, 1)]["input"])
    with pytest.raises(DataError, match="repeat factor"):
        AllInOne([d1, d2], [1])


def test_sampler_resume_and_shards():
    full = list(EpochBatchSampler(10, 3, seed=1, steps=9))
    assert len(full) == 9 and all(len(b) == 3 for b in full)
    assert list(EpochBatchSampler(10, 3, seed=1, start_step=4, steps=9)) == full[4:]
    e0 = [k for b in full[:3] for k in b]
    assert len({i for _, i in e0}) == 9 and {e for e, _ in e0} == {0}
    # two ranks see disjoint halves of each epoch
    r0 = [i for b in EpochBatchSampler(10, 2, seed=1, rank=0, world=2, steps=2) for _, i in b]
    r1 = [i for b in EpochBatchSampler(10, 2, seed=1, rank=1, world=2, steps=2) for _, i in b]
    assert not set(r0) & set(r1)
    # a set smaller than a batch still yields full batches
    assert len(next(iter(EpochBatchSampler(1, 4, steps=1)))) == 4


def test_loader_workers_give_the_same_batches():
    ds = SyntheticDataset([torch.rand(3, 40, 40) for _ in range(4)], "gaussian_noise",
                          patch_size=16, augment=True)
    a = [b["input"] for b in make_loader(ds, 2, workers=0, seed=5, steps=3)]
    b = [b["input"] for b in make_loader(ds, 2, workers=2, seed=5, steps=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == 3
