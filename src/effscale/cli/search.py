"""`effscale search`: grid search of the compound coefficients alpha, beta, gamma."""

from __future__ import annotations


def add_parser(sub):
    from ..experiments.configs import SearchConfig, add_flags
    p = sub.add_parser(
        "search", help="grid-search the compound coefficients (the paper's step 1)",
        description="For each (alpha, beta) on the grid derive gamma so that "
                    "alpha*beta^2*gamma^2 = 2 (all >= 1), train BASE@phi=1 with those "
                    "coefficients on a proxy budget over seeds, rank by top-1, and rank the "
                    "paper's 1.2/1.1/1.15 on the same budget. Resumable like a study.")
    add_flags(p, SearchConfig)  # every flag a SearchConfig field: its help states its default
    p.add_argument("--dry-run", action="store_true",
                   help="print the candidates and their runs, and an estimated wall time "
                        "(a few training steps of each model timed); train and write nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help="with --dry-run: do not time the models for a wall-time estimate")
    return p


def run(args) -> int:
    from ..experiments.configs import SearchConfig, given_flags
    from ..experiments.search import search
    from .study import command_line
    result = search(given_flags(args, SearchConfig),
                    command=command_line("search", args, SearchConfig), dry_run=args.dry_run)
    if args.dry_run and not args.no_estimate:
        from ..experiments.estimate import estimate_plan
        estimate_plan(result)
    if result["failed"]:
        print(f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])}")
        return 1
    return 0
