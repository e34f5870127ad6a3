"""Run by torchrun in test_ddp.py: train a tiny model for a few steps, dump this rank's weights."""
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from irblocks.train.datasets import SyntheticDataset  # noqa: E402
from irblocks.train.trainer import Trainer  # noqa: E402
from tests.train._util import tiny_recipe  # noqa: E402


def main(out: str) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 40, 40, generator=g) for _ in range(6)]
    ds = SyntheticDataset(imgs, "gaussian_noise:sigma=25", patch_size=32, augment=True, seed=1)
    recipe = tiny_recipe(loss=[{"type": "l1"}, {"type": "icrm", "weight": 0.1}])
    t = Trainer(recipe, ds, out_dir=out, steps=3, progress=False, device="cpu")
    assert t.distributed and t.world == 2
    t.fit()
    rank = t.rank
    sd = {k: v.detach().clone().contiguous() for k, v in t.model.named_parameters()}
    save_file(sd, os.path.join(out, f"rank{rank}.safetensors"))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
