"""Which executor trains a study's or a search's runs: the choice, the checks both
experiments share, the dispatch."""

from __future__ import annotations

import time
from pathlib import Path

from ..data.sources import BUILTIN, DATASETS
from ..data.splits import DECODED_PREFIXES
from ..io.files import write_json
from ..model.names import parse_name
from .given_data import travelling
from .local import check_runs_per_gpu, run_jobs
from .runs import Job, RunStatus


EXECUTORS = ("local", "ray")  # local: in-process or a process pool; ray: one Ray task per run


def check_experiment(config) -> None:
    """The checks a study and a search share: base model, budget, dataset, executor."""
    parse_name(config.base)  # raises ValueError naming the problem
    if int(config.seeds) != config.seeds or config.seeds < 1:
        raise ValueError(f"seeds must be a whole number >= 1, got {config.seeds}")
    budgets = config.epochs if isinstance(config.epochs, tuple) else (config.epochs,)
    for epochs in budgets:  # a study may train at several budgets
        if isinstance(epochs, bool) or int(epochs) != epochs or epochs < 1:
            raise ValueError(f"epochs must be a whole number >= 1, got {epochs}")
    if config.jobs is not None and config.jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {config.jobs}")
    if config.stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {config.stem_stride}")
    if not isinstance(config.data, str):  # study() and search() name Python datasets
        raise ValueError(f"data must be a dataset name, got {type(config.data).__name__}")
    if config.data not in BUILTIN and not config.data.startswith(DECODED_PREFIXES):
        raise ValueError(f"unknown dataset {config.data!r}; choose from {', '.join(DATASETS)}")
    check_train_section(config.train)
    check_executor(config)


def check_train_section(train) -> None:
    """The training keys an experiment passes to every run: known and of their types when the
    experiment is planned (a dry run too), not when every run fails on them."""
    if not isinstance(train, dict):
        raise ValueError(f"train must be a table of training keys, got {type(train).__name__}")
    per_run = sorted(set(train) & {"out", "resume", "overwrite"})
    if per_run:
        raise ValueError(f"train section: {per_run[0]!r} is set per run by the experiment; "
                         f"remove it")
    from ..training.config import make_config
    make_config(train)


def check_executor(config) -> None:
    """The executor settings of a study or search config, checked before anything runs."""
    if config.executor not in EXECUTORS:
        raise ValueError(f"unknown executor {config.executor!r}; choose from "
                         f"{', '.join(EXECUTORS)}")
    ray_only = [k for k in ("address", "cpus_per_run", "gpus_per_run")
                if getattr(config, k) is not None]
    if config.executor != "ray" and ray_only:
        raise ValueError(f"--{ray_only[0].replace('_', '-')} needs --executor ray")
    if config.cpus_per_run is not None and config.cpus_per_run <= 0:
        raise ValueError(f"cpus_per_run must be > 0, got {config.cpus_per_run}")
    if config.gpus_per_run is not None and config.gpus_per_run < 0:
        raise ValueError(f"gpus_per_run must be >= 0, got {config.gpus_per_run}")
    runs_per_gpu = getattr(config, "runs_per_gpu", None)
    check_runs_per_gpu(runs_per_gpu)  # None or a whole number >= 1
    if runs_per_gpu is not None and config.executor == "ray":
        raise ValueError("--runs-per-gpu needs --executor local; with Ray, a fractional "
                         "--gpus-per-run is the same thing (--gpus-per-run 0.25 puts 4 runs "
                         "on a GPU)")


def ray_resources(config) -> tuple[float, float]:
    """(CPUs, GPUs) Ray reserves for one run (or one measurement) of a study or search."""
    gpus = config.gpus_per_run
    if gpus is None:  # Ray hides the GPUs from a task that reserved none
        gpus = 1 if str(config.device or "").startswith("cuda") else 0
    return config.cpus_per_run or 1, gpus


def execute(jobs: list[Job], config, *, log_dir: Path, echo=print, datasets=None) -> dict:
    """Train the jobs with the config's executor (a study's or a search's: both carry jobs,
    device and the executor fields). Same answer from either: {key: status}. datasets:
    Python datasets every run trains on (pickled for the worker processes when they can be,
    else trained in this process, one run at a time: `given_data.travelling`)."""
    if datasets is not None:  # local only: given_data.check_datasets_executor refused Ray
        pickled = travelling(datasets, echo) if config.jobs != 1 else None
        return run_jobs(jobs, parallel=config.jobs if pickled else 1, device=config.device,
                        log_dir=log_dir, echo=echo, datasets=datasets, pickled=pickled,
                        runs_per_gpu=getattr(config, "runs_per_gpu", None) if pickled else None)
    if config.executor == "ray":
        from .ray_executor import run_jobs_ray
        cpus, gpus = ray_resources(config)
        return run_jobs_ray(jobs, address=config.address, cpus_per_run=cpus, gpus_per_run=gpus,
                            echo=echo)
    # jobs None is auto: one worker per CPU core, or K per GPU with K from the memory plan
    # unless runs_per_gpu says (see run_jobs)
    return run_jobs(jobs, parallel=config.jobs, device=config.device, log_dir=log_dir,
                    echo=echo, runs_per_gpu=getattr(config, "runs_per_gpu", None))


# -- the lifecycle study and search share: plan -> record -> execute -> record -> tables ------

def record_time(record: dict, old: dict, statuses: dict, seconds: float) -> None:
    """What a record keeps after a call: the wall time of this call's pool added to what
    earlier calls took; when nothing trained, the machine and time that made the results."""
    if old and all(s is RunStatus.SKIPPED for s in statuses.values()):
        record.update(environment=old.get("environment"), wall_time_s=old.get("wall_time_s"))
    else:
        record["wall_time_s"] = round((old.get("wall_time_s") or 0) + seconds, 1)


def train_recorded(path: Path, record: dict, old: dict, jobs: list[Job], config, *,
                   echo=print, datasets=None) -> dict:
    """The middle of every experiment: its record written before anything trains (so an
    interrupted call leaves it behind), the jobs executed (`execute`), the record's time
    updated (`record_time`) and written again. Returns {key: status}. datasets: see
    `execute`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, record)
    t0 = time.time()
    statuses = execute(jobs, config, log_dir=path.parent / "logs", echo=echo,
                       datasets=datasets)
    record_time(record, old, statuses, time.time() - t0)
    write_json(path, record)
    return statuses
