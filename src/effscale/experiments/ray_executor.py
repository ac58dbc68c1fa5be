"""Executors other than `studies.run_jobs`' local ones: `run_jobs_ray` trains a list of
`Job`s as Ray tasks, on a local Ray or on a cluster.

Same contract as `run_jobs`: finished run directories are skipped, partial ones resumed, new
ones trained, and the result is {key: "finished" | "skipped" | "failed: ..."}. The difference
is where each run executes and who decides to resume: every run is one Ray task, and the task
itself looks at its run directory (`run_status`) when it starts. So when a worker dies mid-run
(a node lost, the OOM killer, a preempted instance) and Ray retries the task, the retry sees a
partial directory and resumes from the last state.pt instead of refusing to overwrite it or
starting again: the engine's resume is bit-identical, so the run's numbers do not change.

What this needs from a cluster: effscale (same version) and the data on every node, and the
run directories on a filesystem every node sees under the same absolute path (relative paths
are made absolute on the driver, since a Ray worker does not run in the driver's directory).
A cluster with token authentication (Ray >= 2.5x turns it on when ~/.ray/auth_token exists)
needs, as any Ray driver does, RAY_AUTH_MODE=token and the token (RAY_AUTH_TOKEN or
~/.ray/auth_token) in the driver's environment when it connects by HOST:PORT; without them
ray.init keeps retrying and ends with a ConnectionError, reported as it is.
Ray is an optional dependency (`pip install 'effscale[ray]'`); nothing here imports it until
`run_jobs_ray` is called.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .runs import (Job, RunStatus, failure, finished_detail, progress_line, run_cost,
                   run_status, split_jobs)

RAY_MISSING = "the ray executor needs Ray: pip install 'effscale[ray]'"


class MissingExtra(RuntimeError):
    """An optional dependency the chosen feature needs is not installed (the CLI prints the
    message as one line and exits 2, as for any other setup error)."""


def _import_ray():
    try:
        import ray
    except ImportError:
        # one line the CLI can print as it is; the ImportError's traceback helps nobody
        raise MissingExtra(RAY_MISSING) from None
    return ray


def _absolute(config: dict) -> dict:
    """The config with its paths absolute: a Ray worker's working directory is the raylet's,
    not the driver's, so a relative out/data_dir/pretrained would land somewhere else."""
    config = dict(config)
    for key in ("out", "data_dir", "pretrained"):
        if config.get(key):
            config[key] = str(Path(config[key]).expanduser().absolute())
    data = config.get("data")
    if isinstance(data, str) and data.startswith(("imagefolder:", "csv:", "webdataset:")):
        source, path = data.split(":", 1)
        config["data"] = f"{source}:" + str(Path(path).expanduser().absolute())
    return config


def _train_task(config: dict, threads: int) -> dict:
    """One run, inside a Ray worker. Runs on every (re)try of the task, so it decides here,
    not on the driver, whether to resume: a retry after a dead worker finds a partial run."""
    import torch
    # Ray sets OMP_NUM_THREADS from num_cpus only when it starts a worker; a reused worker
    # may have run a task with another count, so set torch's pool explicitly every time
    torch.set_num_threads(threads)
    from ..training.engine import train
    status = run_status(Path(config["out"]))
    t0 = time.time()
    # 'finished' too goes through train(): with resume=True it returns the saved summary
    # (a worker that died after writing summary.json but before Ray heard back)
    resume = status is not RunStatus.NEW
    summary = train(dict(config, resume=resume))
    return {"summary": summary, "resumed": status is RunStatus.PARTIAL, "seconds": time.time() - t0}


def _connect(ray, address: str | None) -> bool:
    """Initialise Ray unless the caller already did; True when this call started it (and so
    must shut it down). None: RAY_ADDRESS if set (how `ray job submit` tells a driver where
    its cluster is), else a new local Ray on this machine only; 'auto' or HOST:PORT: connect
    to that running cluster."""
    if ray.is_initialized():
        return False
    # quiet: workers' stdout stays in Ray's session logs (the runs are quiet anyway, and
    # their errors come back as exceptions); no banner, no usage-stats notice
    kwargs = dict(log_to_driver=False, logging_level=logging.WARNING)
    if address is None and not os.environ.get("RAY_ADDRESS"):
        # "local", not None: None would attach to whatever cluster this machine started last
        # (/tmp/ray/ray_current_cluster), which may be a stale or someone else's one
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", include_dashboard=False, **kwargs)
    else:
        ray.init(address=address, **kwargs)
    return True


def _failure(ray, exc: BaseException) -> str:
    """'failed: Type: first line', like run_jobs; an error raised inside the task is shown as
    itself, not as Ray's wrapper with the remote traceback."""
    if isinstance(exc, ray.exceptions.RayTaskError) and exc.cause is not None:
        exc = exc.cause
    return failure(exc)


def _announce(ray, todo, cpus_per_run: float, gpus_per_run: float, echo) -> None:
    """Say what the cluster has and how many runs fit at once; warn when none fits now."""
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if cpus < cpus_per_run or gpus < gpus_per_run:
        # not an error: an autoscaling cluster adds nodes for tasks that wait, but on a
        # fixed one they wait forever, so say so now rather than look hung
        echo(f"warning: the Ray cluster has {cpus:g} CPUs and {gpus:g} GPUs now and each "
             f"run asks for {cpus_per_run:g} and {gpus_per_run:g}: runs wait until nodes "
             f"with enough join")
    slots = int(min(cpus // cpus_per_run, gpus // gpus_per_run if gpus_per_run else 1e9))
    echo(f"training {len(todo)} runs ({sum(r for _, r in todo)} to resume) on Ray: "
         f"{cpus:g} CPUs, {gpus:g} GPUs, {max(slots, 0)} at a time ({cpus_per_run:g} CPU"
         + (f", {gpus_per_run:g} GPU" if gpus_per_run else "") + " each)")


def _collect(ray, pending: dict, total: int, echo) -> dict:
    """Wait for every task, printing a progress line as each ends; {key: status}."""
    results, start, done = {}, time.time(), 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                answer = ray.get(ready[0])
                results[job.key] = RunStatus.FINISHED
                detail = finished_detail(answer["summary"])
                took, resumed = answer["seconds"], answer["resumed"]
            except ray.exceptions.RayError as exc:  # one bad run must not lose the others
                results[job.key] = detail = _failure(ray, exc)
                took, resumed = time.time() - start, False
            done += 1
            echo(progress_line(done, total, job, resumed, detail, took, time.time() - start))
    except KeyboardInterrupt:
        # on a shared cluster the tasks would outlive this driver for a while: stop them
        # (each run keeps its last checkpoint, so the next call resumes them)
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    return results


def run_jobs_ray(jobs: list[Job], *, address: str | None = None, cpus_per_run: float = 1,
                 gpus_per_run: float = 0, echo=print, max_retries: int = 3) -> dict:
    """Train every job's run directory as one Ray task each: skip finished, resume partial,
    train new. Returns {key: "finished" | "skipped" | "failed: ..."}, like `run_jobs`.

    address: None starts a local Ray (or joins RAY_ADDRESS), 'auto' or HOST:PORT joins a
    running cluster; a Ray the caller already initialised is used as it is and left running.
    cpus_per_run / gpus_per_run: what Ray reserves per run (fractions allowed, as Ray allows);
    the run trains with max(1, int(cpus_per_run)) torch threads. max_retries: how often Ray
    reruns a task whose worker died (each retry resumes; -1: without limit). An exception
    raised by training itself is not retried: it would fail the same way again.
    """
    if cpus_per_run <= 0:
        raise ValueError(f"cpus_per_run must be > 0, got {cpus_per_run}")
    if gpus_per_run < 0:
        raise ValueError(f"gpus_per_run must be >= 0, got {gpus_per_run}")
    if int(max_retries) != max_retries or max_retries < -1:
        raise ValueError(f"max_retries must be a whole number >= -1, got {max_retries}")
    ray = _import_ray()  # before anything else: a missing Ray fails even with nothing to do

    results, todo = split_jobs(jobs, echo)
    if not todo:
        return results  # no cluster started or joined for nothing
    # longest first: Ray starts tasks roughly in submission order, so the slowest run does
    # not start last and straggle
    todo.sort(key=lambda item: -run_cost(item[0].config))

    started = _connect(ray, address)
    try:
        _announce(ray, todo, cpus_per_run, gpus_per_run, echo)
        # retry_exceptions=False: only system failures (a dead worker or node) are retried;
        # a ValueError or NaN loss raised by train() is the run's answer, not bad luck
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run,
                          max_retries=int(max_retries), retry_exceptions=False)(_train_task)
        threads = max(1, int(cpus_per_run))
        pending = {}
        for job, _ in todo:
            # the name shows in `ray list tasks`, the dashboard and the worker's process title
            ref = task.options(name=f"effscale:{job.key}").remote(
                _absolute(dict(job.config, out=str(job.out))), threads)
            pending[ref] = job
        results.update(_collect(ray, pending, len(todo), echo))
    finally:
        if started:
            ray.shutdown()
    return results


def _measure_task(names: list[str], threads: int, kwargs: dict) -> dict:
    """Measure models inside a Ray worker: the cost a run will pay is the worker's, not the
    driver's (which may have no GPU, or another CPU)."""
    import torch
    torch.set_num_threads(threads)
    from .cost import measure_device, measure_entries
    device = measure_device(kwargs.pop("device"))
    if device is None:
        raise ValueError("the Ray worker has no CUDA GPU to measure on")
    found = measure_entries(names, device=device, **kwargs)
    return {"found": found, "device": device, "pid": os.getpid()}


def measure_on_ray(names: list[str], *, address: str | None, cpus_per_run: float,
                   gpus_per_run: float, **kwargs) -> dict:
    """`measure_entries(names, **kwargs)` run as one Ray task with a run's resources, so that
    `study --match ... --executor ray` sizes the models by what a worker measures. Returns
    {"found": {name: entry}, "device": what the worker measured on, "pid": its process}."""
    ray = _import_ray()
    started = _connect(ray, address)
    try:
        task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=1,
                          retry_exceptions=False)(_measure_task)
        ref = task.options(name="effscale:measure").remote(list(names),
                                                          max(1, int(cpus_per_run)), kwargs)
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the cause, not Ray's wrapper
            raise (exc.cause or exc) from None
    finally:
        if started:
            ray.shutdown()
