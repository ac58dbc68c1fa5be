"""How close `study --dry-run`'s wall-time estimate comes to the runs it estimates.

    python benchmarks/estimate_check.py STUDY_DIR [--jobs N]

Re-plans a trained study directory as a dry run would (its record's config), times its models
now, on this machine (`experiments.estimate`), and prints each run's estimated and actual
training time (summary.json's wall time) and their ratio; then the whole study's estimate
against the wall time its record keeps. Run it on the machine and with the worker count
(`--jobs`, default the study's) the study trained with, with nothing else running.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from effscale.experiments.estimate import data_sizes, estimate_plan, run_seconds
from effscale.training.config import fit_to_data, make_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path)
    parser.add_argument("--jobs", type=int, default=None)
    args = parser.parse_args()
    record = json.loads((args.study_dir / "study.json").read_text())
    if args.jobs is not None:
        record["config"]["jobs"] = args.jobs
    found = estimate_plan({"plan": record}, finished=True)
    if found is None:
        return
    train_size, val_size = data_sizes(record["config"])
    ratios = []
    print(f"{'run':28} {'estimated s':>12} {'actual s':>10} {'actual/est':>10}")
    for key, run in record["runs"].items():
        summary = args.study_dir / "runs" / key / "summary.json"
        if not summary.is_file():
            continue
        actual = json.loads(summary.read_text()).get("wall_time_s")
        cfg = fit_to_data(make_config(run["train"]), train_size)
        speed = found["speeds"][run["model"], cfg.batch_size]
        est = run_seconds(epochs=cfg.epochs, train_size=train_size, val_size=val_size,
                          batch=cfg.batch_size, train_img_s=speed["train_img_s"],
                          infer_img_s=speed["infer_img_s"])
        ratios.append(actual / est)
        print(f"{key:28} {est:12.0f} {actual:10.0f} {actual / est:10.2f}")
    if ratios:
        print(f"median actual/estimated over {len(ratios)} runs: "
              f"{statistics.median(ratios):.2f} (min {min(ratios):.2f}, max {max(ratios):.2f})")
    if record.get("wall_time_s"):
        print(f"whole study: estimated {found['seconds']:.0f} s, its record says "
              f"{record['wall_time_s']:.0f} s ({record['wall_time_s'] / found['seconds']:.2f}x)")


if __name__ == "__main__":
    main()
