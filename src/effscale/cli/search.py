"""`effscale search`: grid search of the compound coefficients alpha, beta, gamma."""

from __future__ import annotations


def _grid(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def add_parser(sub):
    # the defaults in the help come from SearchConfig itself, so they cannot drift from it
    from ..experiments.search import SearchConfig
    d = SearchConfig()
    p = sub.add_parser(
        "search", help="grid-search the compound coefficients (the paper's step 1)",
        description="For each (alpha, beta) on the grid derive gamma so that "
                    "alpha*beta^2*gamma^2 = 2 (all >= 1), train BASE@phi=1 with those "
                    "coefficients on a proxy budget over seeds, rank by top-1, and rank the "
                    "paper's 1.2/1.1/1.15 on the same budget. Resumable like a study.")
    p.add_argument("--base", help=f"base model (default {d.base}: a tiny B0, 16 px with "
                                  f"--stem-stride 1)")
    p.add_argument("--data", help=f"digits, fashion-mnist, cifar10, ..., imagefolder:PATH, "
                                  f"csv:FILE (default {d.data})")
    p.add_argument("--data-dir")
    p.add_argument("--recipe", help=f"training recipe (default {d.recipe})")
    p.add_argument("--alphas", help=f"grid: 1.0,1.1,1.2 or START:STOP:STEP, inclusive (default "
                                    f"{_grid(d.alphas)}; a wider one: 1.0:1.4:0.1)")
    p.add_argument("--betas", help=f"grid (default {_grid(d.betas)}; a wider one: 1.0:1.2:0.05)")
    p.add_argument("--tolerance", type=float,
                   help=f"allowed |alpha*beta^2*gamma^2/2 - 1| after rounding (default "
                        f"{d.tolerance:g})")
    p.add_argument("--seeds", type=int, help=f"seeds per candidate (default {d.seeds})")
    p.add_argument("--epochs", type=int,
                   help=f"proxy budget: epochs per candidate (default {d.epochs})")
    p.add_argument("--subset", type=int, help="proxy budget: training images")
    p.add_argument("--val-subset", type=int)
    p.add_argument("--stem-stride", type=int, choices=(1, 2),
                   help=f"default {d.stem_stride}")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--jobs", type=int)
    from .study import add_executor_flags
    add_executor_flags(p)
    p.add_argument("--device")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--no-paper", action="store_true",
                   help="do not train the paper's 1.2/1.1/1.15 for comparison")
    p.add_argument("--out", help=f"search directory (default {d.out})")
    p.add_argument("--dry-run", action="store_true",
                   help="print the candidates and their runs; train and write nothing")
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
    result = search(values, command=command_line("search", args, KEYS + ("no_paper",)),
                    dry_run=args.dry_run)
    if result["failed"]:
        print(f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])}")
        return 1
    return 0
