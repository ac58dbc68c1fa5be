"""`effscale study`: compound scaling against one dimension at a time, at matched FLOPs, over
seeds (the paper's Table 7 / Figure 8 experiment), resumable and parallel.

Three layers, each with one job:
- config and plan (`experiments.plan`): the config merged and validated, every model
  matched in MACs and every run known before anything trains;
- runner (`experiments.executors`): trains the run directories, skipping finished ones and
  resuming interrupted ones, in-process, in worker processes or on Ray; `effscale search`
  reuses it;
- this module: `study` (one budget, or several through `experiments.budgets`) and
  `plan_differences`, which re-plans a finished study with the current code.

The study directory holds `study.json` (the plan + environment + commands),
`runs/<strategy>-L<level>-s<seed>/` (one training run each), `logs/`, `results.csv`,
`results.md`, `plots/` and, from `effscale report`, `report.html` / `report.md`.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from ..data.objects import name_datasets
from ..io.lock import experiment_lock
from ..io.readback import read_json
from ..io.records import load_study
from ..training.config import RUNTIME_FIELDS
from .budgets import SUB, budget_study, sub_config
from .cost import measure_records
from .executors import train_recorded
from .given_data import check_datasets_executor
from .plan import (SCOPE, StudyConfig, plan_runs, prepare, replan_models, resolve_config,
                   train_config, train_set_size)


# Study-config keys that change no run: where the study is, and whether it measures cost.
_NEUTRAL = frozenset({"out", "measure"})


def plan_differences(study_dir: str | Path) -> list[str]:
    """Re-plan a finished study directory with the current code, training nothing; one line per
    model, MACs or setting that differs from what its runs were trained with.

    Checks the planned models (names, MACs, params, d/w/r), the run list, each run's training
    config in study.json, and each run's resolved config.json (recipe values, the fitted batch
    and lr) against what the current code would resolve. Empty when the committed results are
    what the code that ships them would produce. A study at several budgets is checked budget
    by budget. Needs no dataset files when the record keeps the training-set size."""
    study_dir = Path(study_dir)
    record = load_study(study_dir)
    if record.get("kind") == "budgets":
        return budget_differences(study_dir, record)
    config = resolve_config(dict(record["config"], out=str(study_dir)))
    models = replan_models(config, record)  # a cost-matched plan replays its measurements
    out = []
    now = {(m.strategy, m.level): dict(asdict(m), ratio=round(m.ratio, 4)) for m in models}
    then = {(m["strategy"], m["level"]): m for m in record["models"]}
    for key in sorted(set(now) | set(then)):
        a, b = then.get(key), now.get(key)
        if a is None or b is None:
            gone = "not run" if a is None else "no longer planned"
            out.append(f"{key[0]} at level {key[1]}: {gone}")
            continue
        out += [f"{key[0]} at level {key[1]}: {k} was {a.get(k)!r}, now {b[k]!r}"
                for k in b if a.get(k) != b[k]]
    planned = {r.key: r for r in plan_runs(models, config.seeds)}
    if set(planned) != set(record["runs"]):
        out.append(f"runs differ: now {sorted(planned)}, then {sorted(record['runs'])}")
    train_size = record.get("train_size")
    for key in sorted(set(planned) & set(record["runs"])):
        cfg = train_config(config, planned[key])
        out += _config_differences(key, record["runs"][key]["train"], cfg)
        saved = study_dir / "runs" / key / "config.json"
        if saved.is_file():
            if train_size is None:  # an older record: count the images
                train_size = train_set_size(config)
            from ..training.config import fit_to_data, make_config
            resolved = fit_to_data(make_config(cfg, out=str(study_dir / "runs" / key)),
                                   train_size)
            out += _config_differences(key, read_json(saved, "run config"),
                                       resolved.as_dict())
    return out


def _config_differences(key: str, then: dict, now: dict) -> list[str]:
    # a key added to Config after a run was saved had, in effect, its default then
    from ..training.config import Config
    defaults = Config().as_dict()
    return [f"{key}: {k} was {then.get(k)!r}, now {now.get(k)!r}"
            for k in sorted((set(then) | set(now)) - RUNTIME_FIELDS) if then.get(k) != now.get(k)
            and not (k not in then and k in defaults and now.get(k) == defaults[k])]


def study(config: StudyConfig | dict | None = None, *, command: str | None = None,
          dry_run: bool = False, report: bool = True, echo=print, wait: bool | None = None,
          **overrides) -> dict:
    """Plan, train (resumably) and summarise a scaling study; returns a summary dict with
    `out`, `conclusion`, `results` (rows) and `failed` (keys of runs that failed). With
    several epochs (`epochs=(12, 24, 48)`) one sub-study per budget, reported together
    (`experiments.budgets`).

    `data` may be Python datasets (a map-style Dataset, or a (train, val) pair): the record
    names them `python:<class>` and keeps their sizes; they reach worker processes pickled,
    or, if they cannot, the runs train in this process (`given_data.travelling`); re-running
    the study needs the same datasets passed again.

    The study directory is locked for the whole call (a dry run excepted): another process
    on it is refused with one line naming it, or, with wait=True, waited for."""
    values = config.as_dict() if isinstance(config, StudyConfig) else dict(config or {})
    values, in_values = name_datasets(values)
    overrides, datasets = name_datasets(overrides)
    config = resolve_config(values, overrides)
    datasets = datasets if datasets is not None else in_values
    check_datasets_executor(config, datasets)
    if dry_run:
        return _study(config, command, dry_run, report, echo, datasets)
    with experiment_lock(config.out, wait=wait, log=echo):
        return _study(config, command, dry_run, report, echo, datasets)


def _study(config: StudyConfig, command: str | None, dry_run: bool, report: bool,
           echo, datasets=None) -> dict:
    if isinstance(config.epochs, tuple):
        return budget_study(config, command=command, dry_run=dry_run, report=report,
                            echo=echo, datasets=datasets)
    planned = prepare(config, command, echo, datasets)
    if dry_run:
        return {"out": str(planned.out), "plan": planned.record, "results": [],
                "conclusion": None, "failed": []}
    if planned.config.measure:  # once per model: a re-run finds them in study.json
        measure_records([planned.record], device=planned.config.device, echo=echo)
    planned.write()  # the record, with the training-set size when the data is here
    statuses = train_recorded(planned.out / "study.json", planned.record, planned.old,
                              planned.jobs, planned.config, echo=echo, datasets=datasets)
    summary = planned.finish(statuses, report=report, echo=echo)
    scope_note(config, echo)
    return summary


def scope_note(config: StudyConfig, echo) -> None:
    """What a study on this dataset can show, after its results."""
    if config.data in SCOPE:
        echo(f"note: {SCOPE[config.data]}")


def budget_differences(study_dir: Path, record: dict) -> list[str]:
    """plan_differences of a budgets directory: the budgets themselves, then each budget's
    sub-study against what the top-level config plans for it."""
    config = resolve_config(dict(record["config"], out=str(study_dir)))
    out = []
    if list(config.epochs) != record["budgets"]:
        out.append(f"budgets were {record['budgets']}, now {list(config.epochs)}")
    for epochs in config.epochs:
        sub = study_dir / SUB.format(epochs)
        if not (sub / "study.json").is_file():
            out.append(f"{sub.name}: not planned")
            continue
        then = load_study(sub)["config"]
        now = sub_config(config, epochs).as_dict()
        out += [f"{sub.name}: {k} was {then.get(k)!r}, now {now[k]!r}"
                for k in now if k not in _NEUTRAL and then.get(k) != now[k]]
        out += [f"{sub.name}: {line}" for line in plan_differences(sub)]
    return out
