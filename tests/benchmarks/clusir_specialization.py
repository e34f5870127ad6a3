"""Does ClusIR's routing specialise by degradation? (issue 14, section 4)

    python tests/benchmarks/clusir_specialization.py -o out.json

Trains a small ClusIR (a shipped recipe, default ``clusir-tiny``, with overrides) on a
three-task mix synthesised from scikit-image's bundled photographs -- Gaussian noise
(sigma 25, the registered ``gaussian_noise``), Gaussian blur (``skimage.filters.gaussian``,
sigma uniform in [1.5, 2.5]; no Gaussian blur is registered) and haze (the registered
``haze``) -- on training images disjoint from the held-out ones. Every batch holds the same
number of crops of each task. Then, on fixed held-out crops, for every routed stage
(``prompt.enc0`` .. ``prompt.enc3``):

* ``nmi``: normalised mutual information between the task label and the chosen cluster
  (the most probable one, p(k|x) argmax), I(T; C) / ((H(T) + H(C)) / 2) -- the arithmetic
  normalisation (scikit-learn's default), 0 for independent, 1 for a one-to-one map;
  ``nmi_at_init`` the same before training;
* ``cluster_histogram``: per task, how many held-out crops chose each cluster;
* ``expert_usage``: per task, how often each pool expert ran (every active slot counts);
* ``mean_cluster_posterior``: per task, the mean p(k|x);

and per task the PSNR (dB) of the degraded input and of the restored output. Seeded and
deterministic for a given thread count (``--threads``, default 1). Results go to the JSON
file given by ``-o``. ``run()`` is the importable core (the smoke test calls it with a few
steps). Wall time of the defaults: see README ("Does the routing specialise?").
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch

TASKS = ("noise", "blur", "haze")
TRAIN_IMAGES = ("astronaut", "coffee", "camera", "coins", "moon", "brick", "grass", "clock",
                "immunohistochemistry")
HELD_OUT_IMAGES = ("chelsea", "rocket", "gravel")


def load_images(names) -> list[torch.Tensor]:
    """scikit-image's bundled images as 3 x H x W float32 in [0, 1] (grey -> 3 channels)."""
    from skimage import data
    out = []
    for n in names:
        a = np.asarray(getattr(data, n)(), dtype=np.float32) / 255.0
        a = np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a[..., :3]
        out.append(torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1))
    return out


class GaussianBlur:
    """Isotropic Gaussian blur, sigma uniform in [lo, hi] per image (skimage.filters.gaussian,
    reflect borders), for 3 x H x W or B x 3 x H x W images in [0, 1]."""

    def __init__(self, lo: float = 1.5, hi: float = 2.5):
        self.lo, self.hi = lo, hi

    def __call__(self, img: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from skimage.filters import gaussian
        if img.dim() == 4:
            return torch.stack([self(i, generator) for i in img])
        s = self.lo + (self.hi - self.lo) * float(torch.rand((), generator=generator))
        a = gaussian(img.permute(1, 2, 0).numpy(), sigma=s, channel_axis=-1, mode="reflect",
                     preserve_range=True)
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).permute(2, 0, 1)


def degradations() -> dict:
    from irblocks.registry import build
    return {"noise": build({"type": "gaussian_noise", "sigma": 25}, "degradation"),
            "blur": GaussianBlur(),
            "haze": build({"type": "haze"}, "degradation")}


def crops(images, n: int, size: int, g: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(n):
        im = images[int(torch.randint(len(images), (), generator=g))]
        i = int(torch.randint(im.shape[1] - size + 1, (), generator=g))
        j = int(torch.randint(im.shape[2] - size + 1, (), generator=g))
        out.append(im[:, i:i + size, j:j + size])
    return torch.stack(out)


def task_batch(images, per_task: int, size: int, degs: dict, g: torch.Generator):
    """(clean, degraded, labels): per_task crops for each task, in TASKS order."""
    clean, bad, labels = [], [], []
    for t, name in enumerate(TASKS):
        c = crops(images, per_task, size, g)
        clean.append(c)
        bad.append(degs[name](c, generator=g).clamp(0, 1))
        labels += [t] * per_task
    return torch.cat(clean), torch.cat(bad), torch.tensor(labels)


def nmi(table) -> float:
    """Normalised mutual information of a contingency table (rows: tasks, columns: clusters),
    I / mean(H_rows, H_cols); 1.0 when both partitions are trivial (single class)."""
    n = np.asarray(table, dtype=np.float64)
    total = n.sum()
    if total <= 0:
        raise ValueError("nmi: empty contingency table")
    p = n / total
    pr, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pr, pc)[nz])).sum())
    hr = float(-(pr[pr > 0] * np.log(pr[pr > 0])).sum())
    hc = float(-(pc[pc > 0] * np.log(pc[pc > 0])).sum())
    if hr == 0 and hc == 0:
        return 1.0
    return max(0.0, min(1.0, mi / ((hr + hc) / 2))) if hr + hc > 0 else 0.0


@torch.no_grad()
def routing_report(model, degraded: torch.Tensor, labels: torch.Tensor, chunk: int = 24) -> dict:
    """Per routed stage: NMI(task, chosen cluster), histograms, expert usage, mean posterior."""
    from irblocks.clusir import ClusterMoE, routing_diagnostics
    was = model.training
    model.eval()
    recs: dict[str, dict[str, list]] = {}
    for i in range(0, len(degraded), chunk):
        for key, r in routing_diagnostics(model, degraded[i:i + chunk]).items():
            for f in ("cluster_posterior", "clusters", "experts"):
                recs.setdefault(key, {}).setdefault(f, []).append(r[f])
    model.train(was)
    moes = {m.prompt_key: m for m in model.modules() if isinstance(m, ClusterMoE)}
    out = {}
    for key in sorted(recs):
        post = torch.cat(recs[key]["cluster_posterior"])
        chosen = torch.cat(recs[key]["clusters"])[:, 0]
        experts = torch.cat(recs[key]["experts"])
        k, pool = post.shape[1], moes[key].pool_size
        hist = torch.zeros(len(TASKS), k, dtype=torch.long)
        hist.index_put_((labels, chosen), torch.ones_like(chosen), accumulate=True)
        usage = torch.zeros(len(TASKS), pool, dtype=torch.long)
        lab = labels.unsqueeze(1).expand_as(experts)
        usage.index_put_((lab.reshape(-1), experts.reshape(-1)),
                         torch.ones(experts.numel(), dtype=torch.long), accumulate=True)
        out[key] = {
            "nmi": nmi(hist.numpy()),
            "cluster_histogram": {t: hist[i].tolist() for i, t in enumerate(TASKS)},
            "expert_usage": {t: usage[i].tolist() for i, t in enumerate(TASKS)},
            "mean_cluster_posterior": {t: [round(v, 4) for v in post[labels == i].mean(0).tolist()]
                                       for i, t in enumerate(TASKS)},
        }
    return out


@torch.no_grad()
def psnr_report(model, clean, degraded, labels, chunk: int = 24) -> dict:
    from irblocks.train.metrics import batch_psnr
    was = model.training
    model.eval()
    restored = torch.cat([model(degraded[i:i + chunk]) for i in range(0, len(degraded), chunk)])
    model.train(was)
    before, after = batch_psnr(degraded, clean), batch_psnr(restored, clean)
    return {t: {"degraded": round(float(before[labels == i].mean()), 3),
                "restored": round(float(after[labels == i].mean()), 3)}
            for i, t in enumerate(TASKS)}


def run(steps: int = 400, per_task: int = 2, crop: int = 32, eval_crops: int = 16,
        recipe: str = "clusir-tiny", width: int = 8, lr: float = 2e-4, clip: float = 1.0,
        seed: int = 0, threads: int = 1, log_every: int = 50,
        overrides: dict | None = None) -> dict:
    """Train (Adam, L1 + the recorded auxiliary losses, gradient norm clipped at ``clip``;
    0 = off) and report (the JSON document); ``eval_crops`` held-out crops per task."""
    import irblocks
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    degs = degradations()
    train_images, held_out = load_images(TRAIN_IMAGES), load_images(HELD_OUT_IMAGES)
    model = irblocks.create_model(recipe, width=width, **(overrides or {})).train()
    g_eval = torch.Generator().manual_seed(seed + 1000)
    ev_clean, ev_bad, ev_labels = task_batch(held_out, eval_crops, crop, degs, g_eval)
    at_init = routing_report(model, ev_bad, ev_labels)

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        clean, bad, _ = task_batch(train_images, per_task, crop, degs, g)
        l1 = (model(bad) - clean).abs().mean()
        loss = l1 + irblocks.total_aux_loss(model)
        opt.zero_grad()
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(l1.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"clusir_specialization: loss {losses[-1]} at step {step}")
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step}: L1 {losses[-1]:.4f} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
    train_s = time.perf_counter() - t0

    stages = routing_report(model, ev_bad, ev_labels)
    for key, rec in stages.items():
        rec["nmi_at_init"] = at_init[key]["nmi"]
    head = max(1, min(20, steps // 5))
    return {
        "config": {"recipe": recipe, "width": width, "overrides": overrides or {}, "steps": steps,
                   "batch": per_task * len(TASKS), "crop": crop, "lr": lr, "clip": clip,
                   "seed": seed, "threads": threads, "tasks": list(TASKS),
                   "train_images": list(TRAIN_IMAGES),
                   "held_out_images": list(HELD_OUT_IMAGES), "eval_crops_per_task": eval_crops},
        "stages": stages,
        "best_nmi": max(r["nmi"] for r in stages.values()),
        "psnr": psnr_report(model, ev_clean, ev_bad, ev_labels),
        "train_l1": {"first": round(sum(losses[:head]) / head, 5),
                     "last": round(sum(losses[-head:]) / head, 5)},
        "seconds": {"train": round(train_s, 1), "total": round(time.perf_counter() - t0, 1),
                    "cpu": round(time.process_time() - c0, 1)},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", required=True, help="JSON file to write")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--per-task", type=int, default=2, help="crops of each task per batch")
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--eval-crops", type=int, default=16, help="held-out crops per task")
    p.add_argument("--recipe", default="clusir-tiny")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    res = run(a.steps, a.per_task, a.crop, a.eval_crops, a.recipe, a.width, a.lr, a.clip, a.seed,
              a.threads)
    from irblocks.atomic import atomic_path
    with atomic_path(a.output) as tmp:    # the file appears whole or not at all
        tmp.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: res[k] for k in ("best_nmi", "psnr", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
