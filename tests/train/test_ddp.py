"""Two CPU processes (gloo) under torchrun end with identical weights."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not torch.distributed.is_available()
                    or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gloo_ranks_agree(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "train" / "ddp_worker.py"), str(tmp_path)]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_file(tmp_path / "rank0.safetensors")
    b = load_file(tmp_path / "rank1.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    # training happened (weights moved away from the seeded initialisation) and rank 0 wrote the
    # checkpoint
    import irblocks
    m = irblocks.load(tmp_path / "last.safetensors")
    sd = dict(m.named_parameters())
    assert all(torch.equal(sd[k].detach(), a[k]) for k in a)
    from tests.train._util import tiny_recipe
    torch.manual_seed(0)
    init = irblocks.create_model(tiny_recipe())
    assert any(not torch.equal(p.detach(), a[k]) for k, p in init.named_parameters())
