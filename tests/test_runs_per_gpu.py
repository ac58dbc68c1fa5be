"""The local executor with K runs per GPU: the worker count, the GPU slots, the CPU threads and
the default K from the memory planner, with the GPUs faked (no GPU needed): the worker
processes are replaced by a fake that records which GPU each run was pinned to and how many
runs were on each GPU at once."""

import threading
import time
from types import SimpleNamespace

import pytest

from effscale.experiments import executors, local
from effscale.experiments.local import (CONTEXT_BYTES, MAX_RUNS_PER_GPU, check_runs_per_gpu,
                                        default_runs_per_gpu, gpu_slots, job_memory, run_jobs,
                                        take_slot)
from effscale.experiments.runs import Job
from effscale.model.memory import GiB

TINY = {"model": "b0@phi=-6,r=0.1652", "data": "digits", "stem_stride": 1}  # the digits study's


class FakeWorkers:
    """Stands in for `_run_worker`: records (key, gpu, threads) and the most runs seen at once
    on each GPU. The first `together` calls wait for each other (a barrier), so a scheduler
    that allows them to run at once is seen doing so, whatever the machine's load."""

    def __init__(self, together: int = 0, seconds: float = 0.02):
        self.calls, self.now, self.most = [], {}, {}
        self.lock = threading.Lock()
        self.together = together
        self.barrier = threading.Barrier(together, timeout=20) if together > 1 else None
        self.seconds = seconds

    def __call__(self, config, threads, gpu, log_dir, key, procs=None, data_file=None):
        with self.lock:
            self.calls.append((key, gpu, threads))
            first_wave = len(self.calls) <= self.together
            self.now[gpu] = self.now.get(gpu, 0) + 1
            self.most[gpu] = max(self.most.get(gpu, 0), self.now[gpu])
        try:
            if first_wave and self.barrier is not None:
                self.barrier.wait()  # BrokenBarrierError: they were never all running at once
            time.sleep(self.seconds)
        finally:
            with self.lock:
                self.now[gpu] -= 1
        return {"status": "finished", "final_top1": 90.0}


@pytest.fixture
def fake_machine(monkeypatch):
    """2 GPUs of 141 GB and 16 cores, unless a test changes them; returns a setter."""
    machine = {"gpus": 2, "cpus": 16, "gpu_bytes": 141 * 10 ** 9}
    monkeypatch.setattr(local, "_gpu_count", lambda device: machine["gpus"])
    monkeypatch.setattr(local, "_cpu_count", lambda: machine["cpus"])
    monkeypatch.setattr(local, "_gpu_memory", lambda: machine["gpu_bytes"])
    return machine


def _jobs(tmp_path, n, config=TINY):
    return [Job(f"run{i:02d}", tmp_path / f"run{i:02d}", dict(config)) for i in range(n)]


def _run(monkeypatch, tmp_path, n, fake, **kwargs):
    """run_jobs on n jobs with `fake` as the worker; (result, the echoed lines without the
    per-run progress lines)."""
    monkeypatch.setattr(local, "_run_worker", fake)
    lines = []
    result = run_jobs(_jobs(tmp_path, n), echo=lines.append, **kwargs)
    return result, [line for line in lines if not line.startswith("[")]


def test_three_runs_per_gpu_on_two_gpus(fake_machine, monkeypatch, tmp_path):
    fake = FakeWorkers(together=6)
    result, lines = _run(monkeypatch, tmp_path, 12, fake, runs_per_gpu=3)
    assert result == {f"run{i:02d}": "finished" for i in range(12)}
    assert sorted(key for key, _, _ in fake.calls) == sorted(result)  # each run once
    gpus = [gpu for _, gpu, _ in fake.calls]
    assert set(gpus) == {0, 1}
    # 6 workers: the first 6 ran at once (the barrier), 3 on each GPU, never more
    assert fake.most == {0: 3, 1: 3}
    assert gpus[:6].count(0) == gpus[:6].count(1) == 3
    assert {threads for _, _, threads in fake.calls} == {16 // 6}
    assert lines == ["training 12 runs (0 to resume) with 6 workers on 2 GPUs "
                     "(at most 3 runs per GPU), 2 threads each"]


def test_one_run_per_gpu_behaves_as_before(fake_machine, monkeypatch, tmp_path):
    fake = FakeWorkers(together=2)
    result, lines = _run(monkeypatch, tmp_path, 5, fake, runs_per_gpu=1)
    assert set(result.values()) == {"finished"} and len(result) == 5
    assert fake.most == {0: 1, 1: 1}
    assert "with 2 workers on 2 GPUs (at most 1 run per GPU), 8 threads each" in lines[-1]
    # without runs_per_gpu an explicit worker count keeps its old meaning: one per GPU at most
    fake = FakeWorkers(together=2)
    _, lines = _run(monkeypatch, tmp_path / "b", 5, fake, parallel=4)
    assert fake.most == {0: 1, 1: 1} and "with 2 workers on 2 GPUs" in lines[-1]


def test_one_worker_trains_in_this_process(fake_machine, monkeypatch, tmp_path):
    """parallel=1 (the default) on GPUs: one run at a time in this process, no worker."""
    from effscale.training import engine

    trained = []

    def fake_train(config):
        trained.append(config["out"])
        return {"status": "finished"}

    def no_worker(*args):
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(engine, "train", fake_train)
    result, lines = _run(monkeypatch, tmp_path, 3, no_worker)
    assert len(trained) == 3 and set(result.values()) == {"finished"}
    assert "with 1 worker" in lines[-1] and "GPU" not in lines[-1]
    # and K=1 on one GPU is the same
    fake_machine["gpus"] = 1
    trained.clear()
    _run(monkeypatch, tmp_path / "b", 3, no_worker, runs_per_gpu=1)
    assert len(trained) == 3


def test_threads_are_split_between_all_workers(fake_machine, monkeypatch, tmp_path):
    fake = FakeWorkers(together=8)
    result, lines = _run(monkeypatch, tmp_path, 10, fake, runs_per_gpu=4)
    assert len(result) == 10 and fake.most == {0: 4, 1: 4}
    assert {threads for _, _, threads in fake.calls} == {2}  # 16 cores / 8 workers
    assert "with 8 workers on 2 GPUs (at most 4 runs per GPU), 2 threads each" in lines[-1]
    # fewer jobs than slots: never more workers than runs, so the threads go further
    fake = FakeWorkers(together=3)
    _, lines = _run(monkeypatch, tmp_path / "b", 3, fake, runs_per_gpu=4)
    assert {threads for _, _, threads in fake.calls} == {16 // 3}
    assert "with 3 workers" in lines[-1]
    assert sorted(fake.most.values()) == [1, 2]  # spread over both GPUs


def test_auto_chooses_runs_per_gpu_from_the_memory_plan(fake_machine, monkeypatch, tmp_path):
    """parallel None (auto) on GPUs: K from default_runs_per_gpu; tiny models, 16 cores and
    12 jobs: 12 workers (capped by the jobs), 6 on each GPU."""
    fake = FakeWorkers(together=12)
    result, lines = _run(monkeypatch, tmp_path, 12, fake, parallel=None)
    assert len(result) == 12
    assert fake.most == {0: 6, 1: 6}
    assert lines[-1] == ("training 12 runs (0 to resume) with 12 workers on 2 GPUs (at most 6 "
                         "runs per GPU chosen from the memory plan), 1 thread each")
    # a GPU whose memory cannot be read: one run per GPU
    fake_machine["gpu_bytes"] = None
    fake = FakeWorkers(together=2)
    _, lines = _run(monkeypatch, tmp_path / "unknown", 5, fake, parallel=None)
    assert fake.most == {0: 1, 1: 1} and "with 2 workers on 2 GPUs (at most 1 run per GPU)" \
        in lines[-1]
    # on CPU, auto is one worker per core and runs_per_gpu does not apply
    fake_machine.update(gpus=0, cpus=3)
    fake = FakeWorkers(together=3)
    result, lines = _run(monkeypatch, tmp_path / "cpu", 5, fake, parallel=None, runs_per_gpu=2)
    assert len(result) == 5 and fake.most == {None: 3}
    assert lines[0] == "runs_per_gpu 2 ignored: no GPU"
    assert lines[-1] == "training 5 runs (0 to resume) with 3 workers, 1 thread each"


# -- the pure parts -------------------------------------------------------------------------

def test_default_runs_per_gpu_small_models_are_capped_by_cpus_and_jobs():
    gpu = 141 * 10 ** 9
    need = job_memory(TINY)
    assert need < 1 * GiB  # a digits study model: the GPU could hold ~50 of them
    assert gpu // (need + CONTEXT_BYTES) > 40
    assert default_runs_per_gpu([TINY] * 6, gpu, cpus=16) == 6       # the jobs
    assert default_runs_per_gpu([TINY] * 40, gpu, cpus=16) == 16     # the cores
    assert default_runs_per_gpu([TINY] * 40, gpu, cpus=5) == 5
    assert default_runs_per_gpu([TINY] * 40, gpu, cpus=64) == MAX_RUNS_PER_GPU == 16
    assert default_runs_per_gpu([TINY], gpu, cpus=16) == 1


def test_default_runs_per_gpu_is_bound_by_memory_and_the_largest_job():
    b0 = {"model": "b0", "data": "cifar10", "batch_size": 128}  # bf16 on the GPU
    need = job_memory(b0)
    assert 5 * GiB < need < 10 * GiB
    gpu = 24 * GiB
    expected = int(gpu // (need + CONTEXT_BYTES))
    assert expected == 2
    assert default_runs_per_gpu([TINY] * 10 + [b0], gpu, cpus=16) == expected  # the largest
    # tiny models alone: ~0.6 GiB + 2 GiB of CUDA context each, 9 in 24 GiB
    assert default_runs_per_gpu([TINY] * 10, gpu, cpus=16) == 9
    # fp32 doubles the activations; grad checkpointing cuts them
    assert job_memory(dict(b0, precision="fp32")) > need
    assert job_memory(dict(b0, grad_checkpointing=True)) < need
    # a memory budget caps the estimate: the engine splits the batch to fit it
    assert job_memory(dict(b0, memory_budget="2GB")) == 2 * 10 ** 9


def test_a_job_over_half_the_gpu_runs_alone():
    b4 = {"model": "b4", "data": "cifar100", "batch_size": 64}
    need = job_memory(b4)
    assert default_runs_per_gpu([b4, TINY, TINY], int(need * 1.9), cpus=16) == 1
    assert default_runs_per_gpu([b4, TINY, TINY], int(need * 3 + 3 * CONTEXT_BYTES), cpus=16) == 3
    # jobs the planner cannot read are left to fail on their own; none readable: 1
    assert default_runs_per_gpu([{"model": "nonsense"}, TINY, TINY], 141 * 10 ** 9, 16) == 3
    assert default_runs_per_gpu([{"model": "nonsense"}, {}], 141 * 10 ** 9, 16) == 1


def test_gpu_slots_spread_runs_and_never_exceed_k():
    pool = gpu_slots(2, 3)
    assert sorted(pool) == [0, 0, 0, 1, 1, 1]
    taken = [take_slot(pool) for _ in range(6)]
    assert taken == [0, 1, 0, 1, 0, 1] and pool == []
    pool.append(1)  # a run on GPU 1 ended: the next one goes there
    assert take_slot(pool) == 1
    pool = gpu_slots(3, 2)
    first = [take_slot(pool) for _ in range(3)]
    assert sorted(first) == [0, 1, 2]  # one on each GPU before any takes a second
    assert gpu_slots(0, 4) == []


def test_worker_pinning_follows_the_parents_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert local._visible_device(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, 5")
    assert [local._visible_device(i) for i in (0, 1)] == ["3", "5"]


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_runs_per_gpu_must_be_a_whole_number_at_least_one(bad, tmp_path):
    with pytest.raises(ValueError, match=f"runs_per_gpu must be a whole number >= 1, got {bad!r}"):
        check_runs_per_gpu(bad)
    with pytest.raises(ValueError, match="runs_per_gpu"):
        run_jobs(_jobs(tmp_path, 1), runs_per_gpu=bad, echo=lambda *a: None)
    with pytest.raises(ValueError, match="runs_per_gpu"):
        executors.check_executor(_executor_config(runs_per_gpu=bad))


def _executor_config(**kw):
    values = dict(executor="local", address=None, cpus_per_run=None, gpus_per_run=None,
                  jobs=None, device="auto")
    values.update(kw)
    return SimpleNamespace(**values)


def test_executor_checks_and_passes_runs_per_gpu(monkeypatch, tmp_path):
    executors.check_executor(_executor_config(runs_per_gpu=4))
    executors.check_executor(_executor_config())  # a config without the field: fine
    with pytest.raises(ValueError, match="--runs-per-gpu needs --executor local.*"
                                         "--gpus-per-run 0.25 puts 4 runs on a GPU"):
        executors.check_executor(_executor_config(executor="ray", runs_per_gpu=4))
    seen = []
    monkeypatch.setattr(executors, "run_jobs", lambda jobs, **kw: seen.append(kw) or {})
    executors.execute([], _executor_config(runs_per_gpu=3), log_dir=tmp_path)
    executors.execute([], _executor_config(jobs=2), log_dir=tmp_path)
    assert [(kw["parallel"], kw["runs_per_gpu"]) for kw in seen] == [(None, 3), (2, None)]
