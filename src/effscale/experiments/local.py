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

from .runs import Job, progress_line, run_cost, split_jobs


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
    (`python -m effscale.experiments.local CONFIG_JSON`): one per visible GPU (CUDA_VISIBLE_DEVICES
    pins it), or `parallel` on CPU with the cores split between them so N jobs do not
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
    workers = max(1, min(workers, len(todo)))
    threads = max(1, _cpu_count() // workers)
    start = time.time()
    counter = {"done": 0}
    lock = threading.Lock()
    slots = list(range(gpus)) if gpus else []

    def one(item):
        job, resume = item
        config = dict(job.config, out=str(job.out), resume=resume)
        t0 = time.time()
        try:
            if workers == 1:
                from ..train.engine import train
                summary = train(config)
            else:
                with lock:
                    gpu = slots.pop() if slots else None
                try:
                    summary = _run_worker(config, threads, gpu, log_dir, job.key)
                finally:
                    if gpu is not None:
                        with lock:
                            slots.append(gpu)
            status = "finished"
            top1 = summary.get("final_top1") if isinstance(summary, dict) else None
            detail = f"top-1 {top1:.2f}" if isinstance(top1, (int, float)) else ""
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # keep going: one bad run must not lose the others
            status = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            detail = status
        with lock:
            counter["done"] += 1
            done = counter["done"]
            elapsed = time.time() - start
            echo(progress_line(done, len(todo), job, resume, detail, time.time() - t0, elapsed))
        return job.key, status

    echo(f"training {len(todo)} runs ({sum(r for _, r in todo)} to resume) with "
         f"{workers} worker{'s' if workers > 1 else ''}"
         + (f", {threads} threads each" if workers > 1 and not gpus else ""))
    if workers == 1:
        for item in todo:
            key, status = one(item)
            results[key] = status
    else:
        with ThreadPoolExecutor(workers) as pool:
            for key, status in pool.map(one, todo):
                results[key] = status
    return results


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
