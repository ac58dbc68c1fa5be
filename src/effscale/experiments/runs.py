"""A training run as the experiments see it: a Job (key, run directory, training config), its
status on disk, and what every executor prints and sorts by. Executors (local.py,
ray_executor.py) share these so that skip, resume and progress mean the same everywhere."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from ..model.names import model_spec
from ..model.profile import profile


class RunStatus(str, Enum):
    """Where a run stands: on disk (NEW, PARTIAL, FINISHED) and after an executor (FINISHED,
    SKIPPED: finished before, or a Failure). A str, so records and tests read it as text."""
    NEW = "new"
    PARTIAL = "partial"
    FINISHED = "finished"
    SKIPPED = "skipped"

    __hash__ = str.__hash__  # hash like its text, so {"finished"} == {RunStatus.FINISHED}

    def __str__(self) -> str:
        return self.value


class Failure(str):
    """A failed run's status, 'failed: Type: first line of the message': text for the user,
    a type for the code (`isinstance(status, Failure)`)."""


def failed_keys(statuses: dict) -> list[str]:
    """The keys of the runs that failed."""
    return [key for key, status in statuses.items() if isinstance(status, Failure)]


@dataclass(frozen=True)
class Job:
    key: str
    out: Path          # the run directory
    config: dict       # training-engine config, without out / resume


def run_status(out: Path) -> str:
    """'finished', 'partial' (something to resume) or 'new'."""
    summary = Path(out) / "summary.json"
    if summary.is_file():
        try:
            if json.loads(summary.read_text()).get("status") == "finished":
                return RunStatus.FINISHED
        except (OSError, ValueError):
            pass
    if Path(out).is_dir() and any(Path(out).iterdir()):
        return RunStatus.PARTIAL
    return RunStatus.NEW


def split_jobs(jobs: list[Job], echo=print) -> tuple[dict, list[tuple[Job, bool]]]:
    """({key: "skipped"} for finished runs, [(job, resume?)] for the rest); says how many were
    skipped. Every executor starts here, so skip and resume mean the same everywhere."""
    results, todo = {}, []
    for job in jobs:
        status = run_status(job.out)
        if status is RunStatus.FINISHED:
            results[job.key] = RunStatus.SKIPPED
        else:
            todo.append((job, status is RunStatus.PARTIAL))
    if results:
        echo(f"{len(results)} of {len(jobs)} runs already finished: skipped")
    return results, todo


def progress_line(done: int, total: int, job: Job, resumed: bool, detail: str, took: float,
                  elapsed: float) -> str:
    eta = elapsed / done * (total - done)
    return (f"[{done}/{total}] {job.key} ({job.config.get('model')})"
            f"{' resumed' if resumed else ''}: {detail} in {took:.0f}s"
            f" | elapsed {elapsed:.0f}s, eta {eta:.0f}s")


def run_cost(config: dict) -> float:
    """A run's rough length, to start the longest first (a study at several budgets pools
    runs of different lengths): epochs x (MACs per image in millions + blocks). MACs stand
    for the arithmetic; blocks for the per-layer launch and Python overhead that rules tiny
    models on a GPU (on the H200 the 29-block depth model of the Fashion-MNIST study trained
    2.8x slower than its 7-block rivals at equal MACs; BENCHMARKS.md)."""
    from ..data.sources import BUILTIN
    classes, chans = BUILTIN.get(str(config.get("data", "")), (1000, 3))
    try:
        spec = model_spec(config["model"], stem_stride=config.get("stem_stride", 2))
        macs = profile(spec, num_classes=classes, stem_stride=config.get("stem_stride", 2),
                       in_chans=config.get("in_chans") or chans).macs
    except (KeyError, TypeError, ValueError):
        return 0.0
    epochs = config.get("epochs")
    epochs = epochs if isinstance(epochs, (int, float)) and epochs > 0 else 1
    return epochs * (macs / 1e6 + spec.num_blocks)


# Settings a study or search passes through to each run when set (the rest are the engine's)
PASSED = ("data_dir", "recipe", "subset", "val_subset", "batch_size", "lr", "device", "precision")


def engine_config(config, model: str, seed: int) -> dict:
    """The training-engine config of one run of a study or search (without out/resume): its
    `train` pass-through keys, then the model, seed and the experiment's own settings."""
    cfg = dict(config.train)
    cfg.update(model=model, data=config.data, seed=seed, epochs=config.epochs,
               stem_stride=config.stem_stride, quiet=True)
    cfg.update({k: getattr(config, k) for k in PASSED
                if getattr(config, k, None) is not None})
    return cfg


def finished_detail(summary) -> str:
    """What a progress line says about a finished run."""
    top1 = summary.get("final_top1") if isinstance(summary, dict) else None
    return f"top-1 {top1:.2f}" if isinstance(top1, (int, float)) else ""


def failure(exc: BaseException) -> Failure:
    """A failed run's status: 'failed: Type: first line of the message'."""
    text = str(exc).strip()
    return Failure(f"failed: {type(exc).__name__}: {text.splitlines()[0] if text else ''}")
