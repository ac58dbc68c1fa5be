"""The local executor: runs in this process, or one worker process per GPU / CPU core
(`python -m effscale.experiments.local CONFIG_JSON`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .runs import (Job, RunStatus, failure, finished_detail, progress_line, run_cost,
                   split_jobs)


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


def auto_jobs(device: str | None = None) -> int:
    """One worker per GPU, else one per CPU core: tiny models scale far better over processes
    than over threads, and one thread per process is immune to the OpenMP spin-wait collapse
    (measured 10x slower) that 2 threads per process suffer on a busy 2-core machine."""
    return _gpu_count(device) or _cpu_count()


def run_jobs(jobs: list[Job], *, parallel: int = 1, device: str | None = None,
             log_dir: Path | None = None, echo=print) -> dict:
    """Train every job's run directory: skip finished, resume partial, train new.

    parallel == 1 trains in this process. Otherwise each run is a worker process
    (`python -m effscale.experiments.local CONFIG_JSON`): one per visible GPU
    (CUDA_VISIBLE_DEVICES pins it), or `parallel` on CPU with the cores split between them so N jobs do not
    oversubscribe the machine. Returns {key: "finished" | "skipped" | "failed: ..."}.
    A failed run does not stop the others; the caller reports them.
    """
    results, todo = split_jobs(jobs, echo)
    if not todo:
        return results
    if parallel > 1:  # longest first: the slowest run does not start last and straggle
        todo.sort(key=lambda item: -run_cost(item[0].config))
    gpus = _gpu_count(device)
    workers = min(parallel, gpus) if gpus and parallel > 1 else parallel
    pool = _Pool(max(1, min(workers, len(todo))), gpus, len(todo), log_dir, echo)
    echo(f"training {len(todo)} runs ({sum(r for _, r in todo)} to resume) with "
         f"{pool.workers} worker{'s' if pool.workers > 1 else ''}"
         + (f", {pool.threads} threads each" if pool.workers > 1 and not gpus else ""))
    if pool.workers == 1:
        results.update(pool.one(item) for item in todo)
    else:
        with ThreadPoolExecutor(pool.workers) as threads:
            results.update(threads.map(pool.one, todo))
    return results


class _Pool:
    """The state the local executor's threads share: free GPUs, the finished count, timing."""

    def __init__(self, workers: int, gpus: int, total: int, log_dir: Path | None, echo):
        self.workers, self.total, self.log_dir, self.echo = workers, total, log_dir, echo
        self.threads = max(1, _cpu_count() // workers)
        self.slots = list(range(gpus))
        self.lock = threading.Lock()
        self.done, self.start = 0, time.time()

    def one(self, item: tuple[Job, bool]) -> tuple[str, str]:
        """Train one run (in this process, or a worker process); (key, status)."""
        job, resume = item
        config = dict(job.config, out=str(job.out), resume=resume)
        t0 = time.time()
        try:
            status, detail = RunStatus.FINISHED, finished_detail(self._train(config, job.key))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # keep going: one bad run must not lose the others
            status = detail = failure(exc)
        with self.lock:
            self.done += 1
            self.echo(progress_line(self.done, self.total, job, resume, detail,
                                    time.time() - t0, time.time() - self.start))
        return job.key, status

    def _train(self, config: dict, key: str) -> dict:
        if self.workers == 1:
            from ..train.engine import train
            return train(config)
        with self.lock:
            gpu = self.slots.pop() if self.slots else None
        try:
            return _run_worker(config, self.threads, gpu, self.log_dir, key)
        finally:
            if gpu is not None:
                with self.lock:
                    self.slots.append(gpu)


def _run_worker(config: dict, threads: int, gpu: int | None, log_dir: Path | None,
                key: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               EFFSCALE_THREADS=str(threads))
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    log_path = Path(log_dir or config["out"]) / f"{key}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        proc = subprocess.run([sys.executable, "-m", "effscale.experiments.local", json.dumps(config)],
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"worker exited with {proc.returncode}: {tail[0]} (log: {log_path})")
    return json.loads((Path(config["out"]) / "summary.json").read_text())


def _worker_main(argv: list[str]) -> int:
    import torch
    torch.set_num_threads(int(os.environ.get("EFFSCALE_THREADS", "1")))
    from ..train.engine import train
    train(json.loads(argv[0]))
    return 0


if __name__ == "__main__":  # worker process of run_jobs
    sys.exit(_worker_main(sys.argv[1:]))
