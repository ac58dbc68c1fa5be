"""`effscale search`: grid search of the compound coefficients alpha, beta, gamma."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "search", help="grid-search the compound coefficients (the paper's step 1)",
        description="For each (alpha, beta) on the grid derive gamma so that "
                    "alpha*beta^2*gamma^2 = 2 (all >= 1), train BASE@phi=1 with those "
                    "coefficients on a proxy budget over seeds, rank by top-1, and rank the "
                    "paper's 1.2/1.1/1.15 on the same budget. Resumable like a study.")
    p.add_argument("--base", help="base model (default: a tiny B0 at 16 px)")
    p.add_argument("--data", help="digits (default), fashion-mnist, cifar10, ...")
    p.add_argument("--data-dir")
    p.add_argument("--recipe")
    p.add_argument("--alphas", help="grid: 1.0,1.1,1.2 or START:STOP:STEP (default 1.0:1.4:0.1)")
    p.add_argument("--betas", help="grid (default 1.0:1.2:0.05)")
    p.add_argument("--tolerance", type=float,
                   help="allowed |alpha*beta^2*gamma^2/2 - 1| after rounding (default 0.02)")
    p.add_argument("--seeds", type=int, help="seeds per candidate (default 2)")
    p.add_argument("--epochs", type=int, help="proxy budget: epochs per candidate (default 2)")
    p.add_argument("--subset", type=int, help="proxy budget: training images")
    p.add_argument("--val-subset", type=int)
    p.add_argument("--stem-stride", type=int, choices=(1, 2))
    p.add_argument("--batch-size", type=int)
    p.add_argument("--jobs", type=int)
    from .study import add_executor_flags
    add_executor_flags(p)
    p.add_argument("--device")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--no-paper", action="store_true",
                   help="do not train the paper's 1.2/1.1/1.15 for comparison")
    p.add_argument("--out", help="search directory (default runs/search)")
    return p


KEYS = ("base", "data", "data_dir", "recipe", "alphas", "betas", "tolerance", "seeds", "epochs",
        "subset", "val_subset", "stem_stride", "batch_size", "jobs", "device", "precision",
        "out", "executor", "address", "cpus_per_run", "gpus_per_run")


def run(args) -> int:
    from ..experiments.search import search
    values = {k: getattr(args, k) for k in KEYS}
    if args.no_paper:
        values["paper"] = False
    from .study import command_line
    result = search(values, command=command_line("search", args, KEYS + ("no_paper",)))
    if result["failed"]:
        print(f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])}")
        return 1
    return 0
