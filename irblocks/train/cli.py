"""``irblocks train | eval | restore | demo`` (listed in ``irblocks.cli.COMMANDS``).

Each ``setup_<command>`` adds that command's arguments; heavy modules are imported
inside the ``cmd_*`` functions only. Errors are raised as exceptions with one-line
messages; the main CLI prints ``irblocks: error: <message>`` and exits 1.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["setup_train", "setup_eval", "setup_restore", "setup_demo"]

_DATA_HELP = ("[TASK=]PATH[@DEGRADATION]: a folder with a paired layout (input/target, "
              "degraded/clean, lq/gt, rainy/gt, hazy/clear, low/high ...; searched recursively, "
              "one task per pair), or clean images degraded on the fly "
              "(PATH@gaussian_noise:sigma=25, or --degrade for all entries); 'skimage' = the "
              "images shipped with scikit-image. Repeatable: several entries make an all-in-one "
              "mix.")


def _common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", action="append", default=[], metavar="[TASK=]PATH[@DEG]",
                   help=_DATA_HELP)
    p.add_argument("--degrade", default=None, metavar="SPEC",
                   help="synthesize inputs from clean images: a degradation name with options, "
                        "e.g. gaussian_noise:sigma=25, haze, rain, low_light, "
                        "cdd11:combo=low_haze_rain")
    p.add_argument("--seed", type=int, default=None, help="seed (data, weights, losses)")


def setup_train(p: argparse.ArgumentParser) -> None:
    p.description = ("Train a recipe's model. Under torchrun every process trains its shard "
                     "(DistributedDataParallel; gloo on CPU, nccl on GPUs).")
    p.add_argument("recipe", help="recipe name or YAML path")
    _common_data(p)
    p.add_argument("--repeat", action="append", default=[], metavar="TASK=N",
                   help="repeat factor of a task in the all-in-one mix (also train.tasks in the "
                        "recipe)")
    p.add_argument("-o", "--out", default=None,
                   help="run folder (checkpoints; default runs/<recipe>)")
    p.add_argument("--steps", type=int, default=None,
                   help="optimizer steps (default: recipe schedule epochs)")
    p.add_argument("--epochs", type=float, default=None, help="epochs (instead of --steps)")
    p.add_argument("--batch-size", type=int, default=None, help="per-process batch size")
    p.add_argument("--patch-size", type=int, default=None, help="training crop size")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--workers", type=int, default=None, help="DataLoader worker processes")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep an EMA of the weights")
    p.add_argument("--grad-clip", type=float, default=None, metavar="NORM")
    p.add_argument("--amp", choices=("auto", "off", "bf16", "fp16"), default=None)
    p.add_argument("--save-every", type=int, default=0, metavar="STEPS")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEP",
                   help="stop (with a checkpoint) at this global step; continue later with "
                        "--resume")
    p.add_argument("--resume", default=None, metavar="RUN", help="continue the run in this folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model argument of the recipe (YAML value), e.g. --set width=16")
    p.add_argument("--eval-data", action="append", default=[], metavar="[TASK=]PATH[@DEG]",
                   help="evaluate on this data during training, into train_log.jsonl "
                        "(same form as --data)")
    p.add_argument("--eval-every", type=int, default=0, metavar="STEPS",
                   help="evaluation period with --eval-data (default: only at the end)")
    p.add_argument("--eval-limit", type=int, default=None, metavar="N",
                   help="at most N images per eval task")
    p.add_argument("--log-every", type=int, default=10, metavar="STEPS",
                   help="train_log.jsonl record period (and progress lines off a terminal)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard scalars and sample images to RUN/tensorboard "
                        "(pip install 'irblocks[tensorboard]')")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def setup_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a .safetensors checkpoint or a training folder")
    _common_data(p)
    p.add_argument("--recipe", default=None,
                   help="refuse the checkpoint unless it was built by this recipe")
    p.add_argument("--json", default=None,
                   help="write the results here (default <checkpoint>.eval.json)")
    p.add_argument("--tile", type=int, default=0,
                   help="tiled inference with this tile size "
                        "(default 0: whole images, the papers' protocol)")
    p.add_argument("--overlap", type=int, default=None,
                   help="tile overlap (default min(32, tile/4))")
    p.add_argument("--crop-multiple", type=int, default=None, metavar="N",
                   help="centre-crop test images to a multiple of N, as the PromptIR/AnyIR "
                        "test loaders (16); default: the recipe's eval.crop_multiple, else 1 (no "
                        "crop)")
    p.add_argument("--ssim", choices=("uniform", "gaussian"), default="uniform",
                   help="uniform: scikit-image default (the all-in-one papers); gaussian: BasicSR")
    p.add_argument("--y-channel", action="store_true", help="measure on the BT.601 Y channel")
    p.add_argument("--crop-border", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="at most this many images per task")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def setup_restore(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a .safetensors checkpoint or a training folder")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    p.add_argument("-o", "--out", required=True,
                   help="output folder (or file name for one input file)")
    p.add_argument("--recipe", default=None,
                   help="refuse the checkpoint unless it was built by this recipe")
    p.add_argument("--tile", type=int, default=512,
                   help="tile size for large images (0: never tile)")
    p.add_argument("--overlap", type=int, default=None,
                   help="tile overlap (default min(32, tile/4))")
    p.add_argument("--no-overwrite", action="store_true",
                   help="refuse to replace existing output files (default: replace them)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_restore)


def setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--out", default="irblocks-demo",
                   help="output folder (default irblocks-demo)")
    p.add_argument("--seconds", type=float, default=120.0, help="training time budget")
    p.add_argument("--steps", type=int, default=None,
                   help="train this many steps instead of a time budget")
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=48)
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: the cores not already busy, at least 1)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)


def _overlap(args) -> int:
    if args.overlap is not None:
        return args.overlap
    return min(32, (args.tile or 0) // 4)


def _parse_sets(items):
    """``KEY=VALUE`` overrides; values are YAML read by the recipe loader's bounded safe parser
    (a tag such as ``!!python/...``, an alias bomb or deep nesting is a one-line error)."""
    from irblocks.registry.recipe import parse_yaml
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--set expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip()] = parse_yaml(v, "--set", k.strip())
    return out


def _repeats(items, recipe_tasks):
    rep = dict(recipe_tasks or {})
    for it in items:
        if "=" not in it:
            raise ValueError(f"--repeat expects TASK=N, got {it!r}")
        k, v = it.split("=", 1)
        try:
            rep[k.strip()] = int(v)
        except ValueError:
            raise ValueError(f"--repeat {it!r}: N must be an integer") from None
    return rep


def cmd_train(args) -> int:
    import irblocks
    from irblocks.train.config import parse_sections
    from irblocks.train.datasets import AllInOne
    from irblocks.train.evaluate import build_eval_data
    from irblocks.train.trainer import Trainer

    overrides = _parse_sets(args.set)
    resolved = irblocks.resolve_recipe(args.recipe, **overrides).data
    _, _, tcfg = parse_sections(resolved)
    seed = args.seed if args.seed is not None else tcfg.seed
    patch = args.patch_size or tcfg.patch_size
    datasets = build_eval_data(args.data, args.degrade, seed=seed, patch_size=patch, augment=True)
    reps = _repeats(args.repeat, tcfg.tasks)
    unknown = sorted(set(reps) - set(datasets))
    if unknown and args.repeat:
        raise ValueError(f"--repeat names unknown task {unknown[0]!r}; tasks are "
                         f"{', '.join(datasets)}")
    data = AllInOne(list(datasets.values()), [reps.get(t, 1) for t in datasets])
    out = args.out or str(Path("runs") / Path(str(args.recipe)).stem)
    if args.resume is None and (Path(out) / "train_state.json").exists():
        raise ValueError(f"{out} already holds a training run; continue it with --resume {out} "
                         "or choose another folder with -o")
    trainer = Trainer(args.recipe, data, out_dir=out, steps=args.steps, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed, workers=args.workers,
                      ema=args.ema, grad_clip=args.grad_clip, amp=args.amp,
                      model_overrides=overrides, save_every=args.save_every, resume=args.resume,
                      progress=not args.quiet, device=args.device, log_every=args.log_every,
                      tensorboard=args.tensorboard,
                      eval_data=(build_eval_data(args.eval_data, args.degrade, seed=seed)
                                 if args.eval_data else None), eval_every=args.eval_every,
                      eval_limit=args.eval_limit)
    if trainer.rank == 0:
        mix = ", ".join(f"{t} x{reps.get(t, 1)}" for t in datasets)
        world = f", world size {trainer.world}" if trainer.world > 1 else ""
        print(f"training {trainer.recipe_name}: {len(data)} items/epoch ({mix}), "
              f"{trainer.total_steps} steps, loss {trainer.loss_fn.describe()}, "
              f"{trainer.opt_cfg.type} lr {trainer.opt_cfg.lr:g}, "
              f"schedule {trainer.sched_cfg.type}{world}", file=sys.stderr)
    summary = trainer.fit(stop_after=args.stop_after)
    if trainer.rank == 0:
        print(f"done: step {summary['steps']}, loss {summary['loss']:.4f}, "
              f"{summary['seconds']:.1f} s; checkpoint {Path(out) / 'last.safetensors'}")
    if trainer.distributed:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


def cmd_eval(args) -> int:
    from irblocks.train.evaluate import (
        build_eval_data,
        evaluate,
        format_table,
        recipe_crop_multiple,
        write_json,
    )
    from irblocks.train.trainer import load_model
    if args.crop_multiple is not None and args.crop_multiple < 1:
        raise ValueError(f"--crop-multiple must be >= 1, got {args.crop_multiple}")
    datasets = build_eval_data(args.data, args.degrade, seed=args.seed or 0)
    model = load_model(args.checkpoint, recipe=args.recipe, device=args.device)
    crop = args.crop_multiple if args.crop_multiple is not None else recipe_crop_multiple(model)
    res = evaluate(model, datasets, tile=args.tile or None, overlap=_overlap(args),
                   device=args.device, ssim_mode=args.ssim, y_channel=args.y_channel,
                   crop_border=args.crop_border, progress=not args.quiet, limit=args.limit,
                   crop_multiple=crop)
    res["checkpoint"] = str(args.checkpoint)
    print(format_table(res))
    ck = Path(args.checkpoint)
    dest = (Path(args.json) if args.json
            else (ck / "eval.json" if ck.is_dir() else ck.with_suffix(".eval.json")))
    write_json(res, dest)
    print(f"wrote {dest}")
    return 0


def cmd_restore(args) -> int:
    from irblocks.train.restore import collect_inputs, restore_files
    from irblocks.train.trainer import load_model
    collect_inputs(args.inputs, decode=False)   # headers: fail before the model is loaded
    # (restore_files decodes every input completely before writing anything)
    model = load_model(args.checkpoint, recipe=args.recipe, device=args.device)
    written = restore_files(model, args.inputs, args.out, tile=args.tile or None,
                            overlap=_overlap(args), device=args.device, progress=not args.quiet,
                            overwrite=not args.no_overwrite)
    if not args.quiet:
        print(f"restored {len(written)} image(s) into {Path(args.out)}")
    return 0


def cmd_demo(args) -> int:
    from irblocks.train.demo import run_demo
    r = run_demo(args.out, seconds=args.seconds, steps=args.steps, sigma=args.sigma, seed=args.seed,
                 batch_size=args.batch_size, patch_size=args.patch_size, quiet=args.quiet,
                 threads=args.threads)
    print(f"held-out image '{r['held_out']}' at sigma {r['sigma']:g}: "
          f"noisy {r['psnr_noisy']:.2f} dB -> restored {r['psnr_restored']:.2f} dB "
          f"(gain {r['gain']:+.2f} dB, SSIM {r['ssim_noisy']:.3f} -> {r['ssim_restored']:.3f}) "
          f"after {r['steps']} steps, {r['seconds']:.0f} s in total")
    print(f"before/after (noisy | restored | clean): {r['image']}")
    print(f"checkpoint: {r['checkpoint']}")
    return 0
