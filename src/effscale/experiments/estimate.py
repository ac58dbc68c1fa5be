"""How long an experiment will take, before it trains: `study --dry-run` and `search
--dry-run` time a few real training steps of each planned model and add them up.

Each model is timed as its runs will train it (`model.measure.measure`): the run's fitted
batch, channels-last and precision, on the experiment's device, with the threads one worker
will have. A run's time is its epochs x (steps x step time + the images scored after each
epoch at the measured inference speed); the runs are then dealt to the workers longest
first, as the local executor deals them, and the estimate is the busiest worker's total.
What it leaves out: data loading and decoding (small for in-memory datasets, not for image
folders), the batched augmentation and resize, EMA updates, checkpoints, process start-up,
and runs that share a GPU slowing each other down. Measured on this project's CPU
(BENCHMARKS.md, `benchmarks/estimate_check.py`): Fashion-MNIST runs of 24 epochs took
0.74-1.26x their estimate (median 0.99); the quick digits study's runs (10 steps an epoch,
where what is left out weighs most) 1.2-3.2x (median 1.6).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .runs import RunStatus, run_status

# rounds timed after warm-up ones: the first steps build oneDNN / cuDNN kernels
ROUNDS, WARMUP = 3, 2
BN_IMAGES = 1024  # EMA weights are scored after BatchNorm statistics on this many images


def run_seconds(*, epochs: int, train_size: int, val_size: int, batch: int,
                train_img_s: float, infer_img_s: float) -> float:
    """One run's wall time from its model's measured speeds. Pure."""
    steps = max(1, train_size // batch)  # a last partial batch is dropped
    scored = val_size + min(BN_IMAGES, train_size)
    return epochs * (steps * batch / train_img_s + scored / infer_img_s)


def busiest(seconds: list[float], workers: int) -> float:
    """The wall time of runs dealt longest first to the least loaded of `workers`. Pure."""
    loads = [0.0] * max(1, workers)
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(loads)


def worker_count(jobs: int | None, runs: int) -> tuple[int, int]:
    """(workers, threads each) the local executor will use on a CPU: `jobs`, or one per core,
    never more than runs; the cores split between them."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    workers = max(1, min(jobs or cores, runs))
    return workers, max(1, cores // workers)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return "{} h {:02d} min".format(*divmod(minutes, 60))


def estimate_plan(result: dict, datasets=None, echo=print, *,
                  finished: bool = False) -> dict | None:
    """The wall-time estimate of what `study(..., dry_run=True)` or `search(..., dry_run=True)`
    returned (`effscale study/search --dry-run` print it). datasets: the Python datasets the
    experiment was planned on. Runs already finished are left out (finished=True: counted,
    to compare the estimate with them). Prints one line; returns {"seconds", "workers",
    "threads", "speeds": {(model, batch): {"train_img_s", "infer_img_s"}}}, or None (and
    says why) when it cannot estimate."""
    records = result.get("studies") or [result["plan"]]  # a budgets study: every budget
    cfg = result["plan"]["config"]
    runs = {f"{i}/{k}": r for i, rec in enumerate(records) for k, r in rec["runs"].items()
            if finished or run_status(Path(rec["config"]["out"]) / "runs" / k)
            != RunStatus.FINISHED}
    if not runs:
        echo("no time estimate: every run has finished")
        return None
    train_size, val_size = data_sizes(cfg, datasets)
    if not train_size or not val_size:
        echo("no time estimate: the dataset is not here to count its images")
        return None
    from .cost import measure_device
    device = measure_device(cfg.get("device"))
    if device is None:
        echo(f"no time estimate: {cfg.get('device')} requested but no CUDA GPU here")
        return None
    return _estimate(runs, cfg, device, records[0], train_size, val_size, echo)


def data_sizes(cfg: dict, datasets=None) -> tuple[int | None, int | None]:
    """(train, val) images a run of an experiment config sees, or (None, None) when the
    data is not here (a dry run downloads nothing)."""
    from ..data import load_data
    try:
        data = load_data(cfg["data"] if datasets is None else datasets,
                         data_dir=cfg.get("data_dir"), download=False,
                         subset=cfg.get("subset"), val_subset=cfg.get("val_subset"),
                         val_fraction=(cfg.get("train") or {}).get("val_fraction", 0.1))
    except (OSError, ValueError, RuntimeError):
        return None, None
    if hasattr(data.train, "pool"):
        data.train.pool.close()
    return len(data.train), len(data.val)


def _estimate(runs: dict, cfg: dict, device: str, record: dict, train_size: int,
              val_size: int, echo) -> dict:
    from ..training.config import fit_to_data, make_config
    fitted = {key: fit_to_data(make_config(r["train"]), train_size) for key, r in runs.items()}
    workers, threads = (worker_count(cfg.get("jobs"), len(runs)) if device == "cpu"
                        else (1, None))
    t0, speeds, groups = time.time(), {}, {}
    for key, c in fitted.items():  # one timing per model and training setting
        groups.setdefault((c.batch_size, c.channels_last, c.precision), []).append(
            runs[key]["model"])
    for (batch, channels_last, precision), names in groups.items():
        speeds.update({(m.name, batch): m for m in _timed(
            list(dict.fromkeys(names)), device, batch, threads, record["num_classes"],
            record["in_chans"], cfg["stem_stride"], precision, channels_last)})
    seconds = []
    for key, c in fitted.items():
        speed = speeds[runs[key]["model"], c.batch_size]
        seconds.append(run_seconds(epochs=c.epochs, train_size=train_size, val_size=val_size,
                                   batch=c.batch_size, train_img_s=speed.train_img_s,
                                   infer_img_s=speed.infer_img_s))
    total = busiest(seconds, workers)
    where = (f"{workers} worker{'s' if workers > 1 else ''} of {threads} thread"
             f"{'s' if threads > 1 else ''} on the CPU" if device == "cpu"
             else f"one run at a time on {device}")
    count = f"{len(runs)} run{'s' if len(runs) > 1 else ''}"
    echo(f"estimated wall time: about {format_duration(total)} ({count}, {where}; "
         f"{ROUNDS} training steps of each model timed in {time.time() - t0:.0f} s; "
         f"not counted: augmentation, data loading, checkpoints, which add most on small "
         f"datasets)")
    return {"seconds": total, "workers": workers, "threads": threads,
            "speeds": {key: {"train_img_s": m.train_img_s, "infer_img_s": m.infer_img_s}
                       for key, m in speeds.items()}}


def _timed(names, device, batch, threads, num_classes, in_chans, stem_stride, precision,
           channels_last):
    import torch

    from ..model.measure import measure
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return measure(names, device=device, batch=batch, num_classes=num_classes,
                       in_chans=in_chans, stem_stride=stem_stride, rounds=ROUNDS,
                       warmup=WARMUP, precision=precision, channels_last=channels_last)
    finally:
        torch.set_num_threads(before)
