"""`effscale study`: compound vs single-dimension scaling at matched FLOPs, over seeds."""

from __future__ import annotations

import json
from pathlib import Path

from ..experiments.executors import EXECUTORS
from ..experiments.match_cost import COSTS
from ..experiments.plan import PRESETS
from ..model.profile import STRATEGIES

EXECUTOR_KEYS = ("executor", "address", "cpus_per_run", "gpus_per_run")


def add_executor_flags(p) -> None:
    """Where the runs of a study or search execute (shared by both commands)."""
    p.add_argument("--executor", choices=EXECUTORS,
                   help="local (default): this machine, --jobs processes; ray: one Ray task "
                        "per run, on a local Ray or a cluster (pip install 'effscale[ray]'; "
                        "the output directory must be on a filesystem every node sees)")
    p.add_argument("--address", help="ray: HOST:PORT or auto to join a running cluster "
                                     "(default: start a local Ray)")
    p.add_argument("--cpus-per-run", type=float,
                   help="ray: CPUs reserved per run, also its torch threads (default 1)")
    p.add_argument("--gpus-per-run", type=float,
                   help="ray: GPUs reserved per run (default 1 with --device cuda, else 0)")


def add_match_flags(p) -> None:
    """What the models are matched on, and how close they must get."""
    p.add_argument("--match", choices=COSTS,
                   help="what the depth-, width-, resolution-only and fast models are matched "
                        "on: macs (default) or the compound model's measured train-time (ms "
                        "per training image), latency (batch 1) or memory (peak MiB of a "
                        "training step), measured on --device at the study's batch when "
                        "planned and recorded in study.json; with --executor ray it is "
                        "measured on a Ray worker with a run's resources")
    p.add_argument("--max-mismatch", type=float,
                   help="refuse models whose MACs (or, with --match, measured cost) miss "
                        "their level by more than this fraction (default 0.02; measured "
                        "ratios vary by a few percent: 0.1 suits time)")


def add_parser(sub):
    p = sub.add_parser(
        "study", help="compound vs depth/width/resolution/fast scaling at matched FLOPs",
        description="Train the baseline and, at each FLOPs level, the compound model and the "
                    "depth-, width-, resolution-only and fast compound (dWr) models matched to "
                    "the same MACs, over "
                    "seeds; write results.csv/.md, plots and report.html. Re-running the same "
                    "command skips finished runs and resumes interrupted ones. With no flags: "
                    "a quick study on the bundled digits data (a few minutes on CPU).")
    p.add_argument("--config", metavar="FILE",
                   help="study config JSON (keys as the flags, e.g. {\"levels\": [2, 4]}); "
                        "flags override it")
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="seed: the CIFAR-10 study's setup (B0, recipe seed, 35 epochs, "
                        "compound at B2's MACs) with FLOPs matched and >= 2 seeds")
    p.add_argument("--base", help="base model name (default per dataset)")
    p.add_argument("--data", help="digits (default), fashion-mnist, cifar10, cifar100, "
                                  "imagefolder:PATH, csv:FILE (README: Your own data)")
    p.add_argument("--data-dir")
    p.add_argument("--recipe", help="training recipe: fast, seed, paper")
    levels = p.add_mutually_exclusive_group()
    levels.add_argument("--levels", help="FLOPs levels as multiples of the base's MACs, "
                                         "e.g. 2,4")
    levels.add_argument("--phis", help="FLOPs levels as compound phi values, e.g. 1,2")
    p.add_argument("--strategies", help=f"comma list from {','.join(STRATEGIES)} (default all)")
    p.add_argument("--seeds", type=int, help="seeds per model (default 2; 3 with --data "
                                             "fashion-mnist; 1 gives no error bars)")
    p.add_argument("--epochs", help="training epochs; several (e.g. 12,24,48) run the study "
                                     "at each budget under one directory, reported together")
    p.add_argument("--stem-stride", type=int, choices=(1, 2))
    p.add_argument("--subset", type=int, help="train on this many images (stratified)")
    p.add_argument("--val-subset", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--jobs", type=int, help="runs in parallel: one per GPU, or N CPU processes")
    add_executor_flags(p)
    p.add_argument("--runs-per-gpu", type=int,
                   help="local executor: worker processes sharing each GPU (default: chosen "
                        "from the memory planner's estimate, 1 for large models)")
    p.add_argument("--fast-alpha", type=float,
                   help="alpha of the fast compound strategy, in [1/3, 1] (default 0.8, "
                        "Dollar et al.'s dWr)")
    p.add_argument("--coefficients", metavar="A,B,G",
                   help="compound coefficients alpha,beta,gamma (e.g. from effscale search)")
    add_match_flags(p)
    p.add_argument("--device")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--out", help="study directory (default runs/study)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the matched plan and exit without training")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--no-measure", action="store_true",
                   help="do not measure each model's training and inference speed, batch-1 "
                        "latency and peak memory (measured once per model on the study's "
                        "device and kept in study.json; changes no result)")
    return p


FLAG_KEYS = ("preset", "base", "data", "data_dir", "recipe", "levels", "phis", "strategies",
             "seeds", "epochs", "stem_stride", "subset", "val_subset", "batch_size", "lr",
             "jobs", "runs_per_gpu", "coefficients", "fast_alpha", "max_mismatch", "match",
             "device", "precision", "out") + EXECUTOR_KEYS


def command_line(name: str, args, keys) -> str:
    """The command as typed, rebuilt from the parsed flags (sys.argv is not ours when main()
    is called in-process), so the report can say exactly how to reproduce the study."""
    import shlex
    argv = ["effscale", name]
    for key in keys:
        value = getattr(args, key, None)
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return shlex.join(argv)


def run(args) -> int:
    from ..experiments.study import study
    file_values = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"no such study config: {path}")
        try:
            file_values = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"cannot parse study config {path}: {exc}") from None
        if not isinstance(file_values, dict):
            raise ValueError(f"study config {path} must hold a JSON object")
        file_values = {k.replace("-", "_"): v for k, v in file_values.items()}
    flags = {k: getattr(args, k) for k in FLAG_KEYS}
    result = study(file_values, dry_run=args.dry_run, report=not args.no_report,
                   command=command_line("study", args, ("config",) + FLAG_KEYS
                                        + ("no_measure",)),
                   measure=False if args.no_measure else None, **flags)
    if args.dry_run:
        return 0
    print()
    print(result["conclusion"])
    if result["failed"]:
        print(f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])}; "
              f"see {result['out']}/logs or re-run to retry")
        return 1
    return 0
