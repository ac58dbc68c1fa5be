"""A study at several training budgets: `effscale study --epochs 12,24,48`.

Bello et al. ("Revisiting ResNets", NeurIPS 2021) found that the best scaling strategy depends
on how long the models train, and a verdict on models still far from their plateau is not a
verdict on trained networks. So one command plans the same study at each budget as its own
sub-study (`DIR/epochs-E/`, an ordinary study directory: its own study.json, runs, tables and
report), trains the runs of all budgets in one pool (longest first, so that many small runs
share the GPUs or cores without a straggler per budget), and reports them together in
`DIR/results.md`, `DIR/results.csv`, `DIR/plots/accuracy_vs_epochs.*` and `DIR/report.html`
(`report.budgets`). `DIR/study.json` (kind "budgets") records the budgets and the commands;
re-running the command skips finished runs and resumes interrupted ones, as a study does.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from ..io.files import write_json
from ..io.records import api_command, command_history, environment, load_study
from .cost import measure_records
from .executors import execute, record_time
from .plan import SCOPE, prepare
from .runs import Job, failed_keys

SUB = "epochs-{}"  # a budget's sub-study directory


def sub_config(config, epochs: int):
    """The single-budget study of `config` at `epochs`, in its own directory."""
    return replace(config, epochs=epochs, out=str(Path(config.out) / SUB.format(epochs)))


def budget_study(config, *, command: str | None, dry_run: bool, report: bool, echo,
                 datasets=None) -> dict:
    """Plan every budget, train all their runs in one pool, write each budget's results and
    the combined ones. Returns the combined summary (`out`, `conclusion`, `rows`, `failed`)."""
    out = Path(config.out)
    old = load_study(out) if (out / "study.json").is_file() else {}
    if old and old.get("kind") != "budgets":
        raise ValueError(f"{out} holds a study at one budget; give the budgets study its own "
                         f"--out")
    command = command or api_command("study", config.as_dict())
    planned = [prepare(sub_config(config, epochs), command, echo, datasets)
               for epochs in config.epochs]
    record = {
        "kind": "budgets",
        "config": config.as_dict(),
        "budgets": list(config.epochs),
        "studies": {str(e): SUB.format(e) for e in config.epochs},
        "commands": command_history(old, command),
        "environment": environment(config.device),
        "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    total = sum(len(p.jobs) for p in planned)
    echo(f"{len(planned)} budgets ({', '.join(map(str, config.epochs))} epochs): {total} runs, "
         f"trained in one pool")
    if dry_run:
        return {"out": str(out), "plan": record, "studies": [p.record for p in planned],
                "results": [], "conclusion": None, "failed": []}
    if config.measure:  # each model once, shared by every budget
        measure_records([p.record for p in planned], device=config.device, echo=echo)
    out.mkdir(parents=True, exist_ok=True)
    for p in planned:
        p.write()
    write_json(out / "study.json", record)
    # one pool: keys are unique across budgets as "epochs-E/<run key>"
    jobs = [Job(f"{p.out.name}/{job.key}", job.out, job.config)
            for p in planned for job in p.jobs]
    t0 = time.time()
    statuses = execute(jobs, config, log_dir=out / "logs", echo=echo, datasets=datasets)
    seconds = time.time() - t0
    record_time(record, old, statuses, seconds)
    write_json(out / "study.json", record)
    for p in planned:
        prefix = f"{p.out.name}/"
        mine = {k[len(prefix):]: v for k, v in statuses.items() if k.startswith(prefix)}
        record_time(p.record, p.old, mine, seconds)
        p.record["wall_time_shared"] = True  # its wall time is the pool's, shared by all
        p.finish(mine, report=report, echo=echo)
    from ..reporting.budgets import budget_report, write_budget_results
    summary = write_budget_results(out)
    if report:
        budget_report(out, summary, echo=echo)
    summary.update(out=str(out), failed=failed_keys(statuses),
                   wall_time_s=record["wall_time_s"])
    if config.data in SCOPE:
        echo(f"note: {SCOPE[config.data]}")
    return summary
