"""The local executor: runs in this process, or worker processes
(`python -m effscale.experiments.local CONFIG_JSON`): one per CPU core, or K per GPU (study
models are tiny: one run leaves a large GPU idle; `default_runs_per_gpu` picks K from the
memory planner).

Workers die with the process that started them (Linux: the parent-death signal, SIGTERM), so
killing a study, even with SIGKILL, leaves no worker training behind; SIGTERM / SIGINT to the
study is passed on to every worker. A worker stopped that way checkpoints where it is and its
run counts as interrupted: the same command resumes it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..io.lock import Stopped, StopSignals, signal_name
from .runs import (Failure, Job, RunStatus, failure, finished_detail, progress_line, run_cost,
                   split_jobs)

PARENT_ENV = "EFFSCALE_PARENT_PID"  # a worker's parent: it exits at once if that one is gone


class WorkerStopped(RuntimeError):
    """A worker ended by a signal (SIGTERM, SIGINT, SIGKILL): its run is interrupted, not
    failed, and resumes from its last checkpoint when the command is re-run."""


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _gpu_count(device: str | None) -> int:
    if device is not None and not str(device).startswith("cuda") and device != "auto":
        return 0
    try:
        import torch
        return torch.cuda.device_count()
    except Exception:  # no torch CUDA build: CPU only
        return 0


def _gpu_memory() -> int | None:
    """Total memory of the first visible GPU (all GPUs of a node are taken to be alike)."""
    try:
        import torch
        return int(torch.cuda.get_device_properties(0).total_memory)
    except Exception:  # noqa: BLE001 - no CUDA after all: the caller falls back to 1 per GPU
        return None


def run_jobs(jobs: list[Job], *, parallel: int | None = 1, device: str | None = None,
             log_dir: Path | None = None, echo=print, runs_per_gpu: int | None = None,
             datasets=None, pickled: bytes | None = None) -> dict:
    """Train every job's run directory: skip finished, resume partial, train new.

    How many runs at once, each in a worker process (`python -m effscale.experiments.local
    CONFIG_JSON`; one worker in all means this process):
    - on CPU, `parallel` workers (None: one per core), the cores split between them so that
      N jobs do not oversubscribe the machine; `runs_per_gpu` does not apply.
    - on GPUs, gpus x K workers, CUDA_VISIBLE_DEVICES pinning each to a GPU that has one of
      its K slots free, so that no GPU carries more than K runs at once, and the CPU cores
      split between all workers. K is `runs_per_gpu` when given (then `parallel` is not
      used: it is the CPU worker count); else, when `parallel` is None (auto), the memory
      planner's choice (`default_runs_per_gpu`); else 1, with `parallel` capping the workers
      as before (min(parallel, gpus); parallel 1: one run at a time in this process).
    Never more workers than runs. datasets: Python datasets every run trains on; `pickled`,
    the same pickled (`given_data.travelling`), lets them reach worker processes (written
    once to a private temporary file; the workers get this process's sys.path to import
    their classes); without it there is one worker, this process. Returns {key: "finished" |
    "skipped" | "failed: ..."}.
    A failed run does not stop the others; the caller reports them.
    """
    check_runs_per_gpu(runs_per_gpu)
    results, todo = split_jobs(jobs, echo)
    if not todo:
        return results
    gpus = _gpu_count(device)
    workers, per_gpu, chosen = _workers(todo, gpus, parallel, runs_per_gpu, echo)
    workers = max(1, min(workers, len(todo)))
    if workers > 1:  # longest first: the slowest run does not start last and straggle
        todo.sort(key=lambda item: -run_cost(item[0].config))
    if datasets is not None and workers > 1 and pickled is None:
        raise ValueError("Python datasets reach worker processes pickled: pass pickled=, or "
                         "parallel=1")
    pool = _Pool(workers, gpu_slots(gpus, per_gpu), len(todo), log_dir, echo, datasets)
    line = (f"training {len(todo)} runs ({sum(r for _, r in todo)} to resume) with "
            f"{pool.workers} worker{'s' if pool.workers > 1 else ''}")
    if gpus and pool.workers > 1:
        line += (f" on {gpus} GPU{'s' if gpus > 1 else ''} (at most {per_gpu} "
                 f"run{'s' if per_gpu > 1 else ''} per GPU{chosen})")
    if pool.workers > 1:
        line += f", {pool.threads} thread{'s' if pool.threads > 1 else ''} each"
    echo(line)
    if pool.workers == 1:
        results.update(pool.one(item) for item in todo)
        return results
    with _datasets_file(pickled if datasets is not None else None) as pool.data_file:
        _run_pool(pool, todo, results)
    return results


@contextlib.contextmanager
def _datasets_file(pickled: bytes | None):
    """The pickled Python datasets in a private temporary directory while the workers run
    (None when there are none); removed afterwards."""
    if pickled is None:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="effscale-datasets-")  # mode 0700: this user's only
    try:
        path = Path(folder) / "datasets.pkl"
        path.write_bytes(pickled)
        yield str(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_pool(pool: "_Pool", todo: list, results: dict) -> None:
    """The worker processes, SIGTERM / SIGINT passed on to each of them (they checkpoint and
    stop); then `Stopped` when a signal came, after every worker has ended."""
    signals = _ForwardSignals(pool)
    signals.install()
    try:
        with ThreadPoolExecutor(pool.workers) as threads:
            results.update(threads.map(pool.one, todo))
    finally:
        signals.restore()
    if signals.requested:
        stopped = [k for k, v in results.items() if str(v).startswith("interrupted")]
        raise Stopped(f"stopped by {signal_name(signals.requested)}: {len(stopped)} run(s) "
                      f"interrupted, each keeps its last checkpoint; re-run the same command to "
                      f"continue", signals.requested)


class _ForwardSignals(StopSignals):
    """SIGTERM / SIGINT to this process: passed on to every worker; no new worker starts."""

    def __init__(self, pool: "_Pool"):
        super().__init__()
        self.pool = pool

    def _handle(self, signum, frame):
        if self.requested and not self.repeated():
            return  # the same stop, delivered twice
        now = signal.SIGKILL if self.requested else signum  # asked twice: stop them now
        if not self.requested:
            self.requested, self.first_at = signum, time.monotonic()
        self.pool.stopping = self.requested
        for proc in list(self.pool.procs):
            if proc.poll() is None:
                proc.send_signal(now)


def _workers(todo: list, gpus: int, parallel: int | None, runs_per_gpu: int | None,
             echo) -> tuple[int, int, str]:
    """(workers, runs per GPU, how K was chosen) for run_jobs (its docstring says the rule)."""
    per_gpu, chosen = 1, ""
    if gpus and runs_per_gpu is not None:
        per_gpu = runs_per_gpu
        workers = gpus * per_gpu
    elif gpus and parallel is None:
        gpu_bytes = _gpu_memory()
        if gpu_bytes:
            per_gpu = default_runs_per_gpu([job.config for job, _ in todo], gpu_bytes,
                                           _cpu_count())
            per_gpu = min(per_gpu, -(-len(todo) // gpus))  # the runs spread over all GPUs
            chosen = " chosen from the memory plan"
        workers = gpus * per_gpu
    elif gpus:
        workers = min(parallel, gpus) if parallel > 1 else 1
    else:
        if runs_per_gpu is not None:
            echo(f"runs_per_gpu {runs_per_gpu} ignored: no GPU")
        # auto: one per core. Tiny models scale far better over processes than over threads,
        # and one thread per process is immune to the OpenMP spin-wait collapse (measured
        # 10x slower) that 2 threads per process suffer on a busy 2-core machine.
        workers = _cpu_count() if parallel is None else parallel
    return workers, per_gpu, chosen


def check_runs_per_gpu(value) -> None:
    """runs_per_gpu is None (choose) or a whole number >= 1; ValueError naming the value."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"runs_per_gpu must be a whole number >= 1, got {value!r}")


# -- how many runs share a GPU, and which GPU a worker takes ---------------------------------

CONTEXT_BYTES = 2 * 2 ** 30   # per process: CUDA context, cuDNN / cuBLAS handles, workspaces
MAX_RUNS_PER_GPU = 16


def job_memory(config: dict) -> int:
    """The memory planner's peak estimate of one training step of a job on a GPU: its model
    at its batch size (else the recipe's, an upper bound: the engine only halves it for small
    data) and precision (auto is bf16 on CUDA), capped by its memory_budget if it sets one
    (the engine then splits the batch into micro-batches that fit)."""
    from ..data.sources import BUILTIN
    from ..model.memory import estimate, parse_bytes
    from ..training.recipes import get_recipe
    recipe = get_recipe(config.get("recipe") or "fast")
    precision = config.get("precision") or "auto"
    ema_decay = config.get("ema_decay")
    classes, chans = BUILTIN.get(str(config.get("data", "")), (1000, 3))
    need = estimate(config["model"], int(config.get("batch_size") or recipe["batch_size"]),
                    precision="bf16" if precision == "auto" else precision,
                    grad_checkpointing=bool(config.get("grad_checkpointing")),
                    optimizer=config.get("optimizer") or recipe["optimizer"],
                    ema=(recipe["ema_decay"] if ema_decay is None else ema_decay) > 0,
                    num_classes=classes, stem_stride=int(config.get("stem_stride", 2)),
                    in_chans=int(config.get("in_chans") or chans))
    budget = parse_bytes(config.get("memory_budget"))
    return min(need, budget) if budget else need


def default_runs_per_gpu(job_configs: list[dict], gpu_bytes: int, cpus: int) -> int:
    """How many runs share one GPU when the caller does not say: as many as fit in
    `gpu_bytes` at the largest job's planner estimate plus CONTEXT_BYTES each, at most
    MAX_RUNS_PER_GPU, `cpus` (each worker needs a core to launch its kernels) and the number
    of jobs; 1 when a job's estimate exceeds half the GPU. Jobs whose memory cannot be
    estimated (an unknown model: the run itself will fail and say why) are left out."""
    needs = []
    for config in job_configs:
        try:
            needs.append(job_memory(config))
        except (KeyError, TypeError, ValueError):
            continue
    if not needs:
        return 1
    largest = max(needs)
    if largest > gpu_bytes / 2:
        return 1
    fit = int(gpu_bytes // (largest + CONTEXT_BYTES))
    return max(1, min(fit, MAX_RUNS_PER_GPU, cpus, len(job_configs)))


def gpu_slots(gpus: int, per_gpu: int) -> list[int]:
    """The free-slot pool: each GPU index `per_gpu` times ([0, 0, 1, 1] for 2 x 2)."""
    return [gpu for gpu in range(gpus) for _ in range(per_gpu)]


def take_slot(pool: list[int]) -> int:
    """Remove and return a slot of the GPU with the most free slots (the lowest index on a
    tie), so that runs spread over the GPUs before any GPU takes a second one. Give it back
    with pool.append(gpu). The caller holds the lock."""
    gpu = max(set(pool), key=lambda g: (pool.count(g), -g))
    pool.remove(gpu)
    return gpu


def _visible_device(gpu: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry for the worker on GPU index `gpu` of this process:
    the parent's own list, when it has one, maps indices to devices."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
               if d.strip()]
    return visible[gpu] if gpu < len(visible) else str(gpu)


class _Pool:
    """The state the local executor's threads share: free GPU slots, the finished count,
    timing."""

    def __init__(self, workers: int, slots: list[int], total: int, log_dir: Path | None, echo,
                 datasets=None):
        self.workers, self.total, self.log_dir, self.echo = workers, total, log_dir, echo
        self.datasets = datasets  # Python datasets, or None
        self.data_file = None     # the same pickled, for worker processes (run_jobs)
        self.threads = max(1, _cpu_count() // workers)
        self.slots = list(slots)
        self.lock = threading.Lock()
        self.done, self.start = 0, time.time()
        self.procs: set = set()   # the running worker processes (signals are passed on)
        self.stopping = 0         # the signal that stops the pool, 0 while none came

    def one(self, item: tuple[Job, bool]) -> tuple[str, str]:
        """Train one run (in this process, or a worker process); (key, status)."""
        job, resume = item
        config = dict(job.config, out=str(job.out), resume=resume)
        t0 = time.time()
        try:
            status, detail = RunStatus.FINISHED, finished_detail(self._train(config, job.key))
        except KeyboardInterrupt:
            raise
        except WorkerStopped as exc:  # resumes next time
            status = detail = Failure(f"interrupted: {exc}")
        except Exception as exc:  # keep going: one bad run must not lose the others
            status = detail = failure(exc)
        with self.lock:
            self.done += 1
            self.echo(progress_line(self.done, self.total, job, resume, detail,
                                    time.time() - t0, time.time() - self.start))
        return job.key, status

    def _train(self, config: dict, key: str) -> dict:
        if self.workers == 1:
            from ..training.engine import train
            return train(config) if self.datasets is None else train(config,
                                                                     data=self.datasets)
        if self.stopping:
            raise WorkerStopped(f"not started: stopping on {signal_name(self.stopping)}")
        with self.lock:
            gpu = take_slot(self.slots) if self.slots else None
        try:
            return _run_worker(config, self.threads, gpu, self.log_dir, key, self.procs,
                               self.data_file)
        finally:
            if gpu is not None:
                with self.lock:
                    self.slots.append(gpu)


def _run_worker(config: dict, threads: int, gpu: int | None, log_dir: Path | None,
                key: str, procs: set | None = None, data_file: str | None = None) -> dict:
    """Train one run in a worker process (its output in LOG_DIR/KEY.log); its summary.
    WorkerStopped when a signal ended it, RuntimeError when it failed. data_file: pickled
    Python datasets to train on."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               EFFSCALE_THREADS=str(threads), **{PARENT_ENV: str(os.getpid())})
    if data_file:  # the datasets' classes import in the worker as they do here
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = _visible_device(gpu)
    log_path = Path(log_dir or config["out"]) / f"{key}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    procs = set() if procs is None else procs
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "effscale.experiments.local",
                                 json.dumps(config), *([data_file] if data_file else [])],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        procs.add(proc)
        try:
            proc.wait()
        finally:
            procs.discard(proc)
    code = proc.returncode
    if code != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        signum = -code if code < 0 else code - 128 if code in (130, 143) else 0
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            raise WorkerStopped(f"worker stopped by {signal_name(signum)} (log: {log_path})")
        raise RuntimeError(f"worker exited with {code}: {tail[0]} (log: {log_path})")
    return json.loads((Path(config["out"]) / "summary.json").read_text())


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent dies (prctl PR_SET_PDEATHSIG), and exit
    now if the parent is already gone. Set here, in the worker, rather than in a preexec_fn,
    which is unsafe in a threaded parent (run_jobs starts workers from threads)."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    parent = os.environ.get(PARENT_ENV)
    if parent and parent.isdigit() and os.getppid() != int(parent):
        sys.exit(128 + signal.SIGTERM)  # the study died before this worker got going


def _worker_main(argv: list[str]) -> int:
    import torch
    torch.set_num_threads(int(os.environ.get("EFFSCALE_THREADS", "1")))
    from ..training.engine import train
    given = {}
    if len(argv) > 1:  # Python datasets, pickled by this worker's parent (run_jobs)
        import pickle
        with open(argv[1], "rb") as f:
            given["data"] = pickle.load(f)
    try:
        train(json.loads(argv[0]), **given)
    except Stopped as exc:  # checkpointed: one line in the log, the signal's exit status
        print(f"effscale: {exc}", file=sys.stderr, flush=True)
        return exc.code
    return 0


if __name__ == "__main__":  # worker process of run_jobs
    die_with_parent()
    sys.exit(_worker_main(sys.argv[1:]))
