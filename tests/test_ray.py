"""The Ray executor (`effscale.experiments.ray_executor.run_jobs_ray`) against a real local Ray cluster:
the same numbers as the local executor, skip on a second call, and a worker killed mid-run
whose retried task resumes to the same metrics as an uninterrupted run."""

import contextlib
import csv
import json
import re
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from effscale.experiments.ray_executor import run_jobs_ray
from effscale.experiments.local import run_jobs
from effscale.experiments.runs import Job

# what a rerun must reproduce; images_per_s and wall_time are timings
COMPARED = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr", "raw_top1")


def _free_ports(n: int) -> list[int]:
    # all sockets open at once, so the n ports differ from each other
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _token_auth(stack) -> dict:
    """Token authentication for the test cluster and for this process, the driver; returns
    the cluster's environment variables. Ray reads RAY_AUTH_MODE into its config once, when
    a process imports it, and a driver given an explicit address never switches to token
    mode by itself (it would send its token to whatever the address is): so this process
    sets the variables and refreshes that config, as Ray's own token setup does. A Ray
    without token authentication ignores all of it, on both sides."""
    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
    saved = {k: os.environ.get(k) for k in names}

    def refresh():
        try:
            from ray._raylet import AuthenticationTokenLoader, Config
        except ImportError:  # no token authentication in this Ray
            return
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    def restore():
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        refresh()

    variables = dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    os.environ.update(variables)
    os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
    stack.callback(restore)
    refresh()
    return variables


@pytest.fixture(scope="module")
def ray_cluster():
    """A real one-node Ray cluster with 2 CPUs; yields its address (HOST:PORT).

    `ray start --block` in its own process group rather than `ray start` + `ray stop --force`:
    ray stop kills every Ray process of this user on the machine (a developer's own cluster
    too), while --block makes the CLI the leader of a process group holding exactly this
    cluster's processes, which the teardown ends and nothing else."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'effscale[ray]')")
    with contextlib.ExitStack() as stack:  # undone in reverse, on failure too
        temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths
        stack.callback(shutil.rmtree, temp_dir, ignore_errors=True)
        gcs, client, agent = _free_ports(3)  # client and agent ports default to fixed numbers
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", OMP_WAIT_POLICY="PASSIVE")
        # Ray binds its ports on every interface: protect the cluster with a throwaway token
        # (nothing read from or written to ~/.ray/auth_token) shared with this driver
        env.update(_token_auth(stack))
        command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
                   "--node-ip-address", "127.0.0.1", "--port", str(gcs),
                   "--ray-client-server-port", str(client),
                   "--dashboard-agent-listen-port", str(agent), "--num-cpus", "2",
                   "--include-dashboard=false", "--disable-usage-stats",
                   "--object-store-memory", str(100 * 2 ** 20), "--temp-dir", temp_dir]
        log_path = Path(temp_dir) / "ray-start.log"
        log = stack.enter_context(open(log_path, "w"))
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        stack.callback(_stop_cluster, proc)
        address_file = Path(temp_dir) / "ray_current_cluster"  # written once the head is up
        deadline = time.time() + 120
        while not address_file.is_file():
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                pytest.fail(f"ray start did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        yield f"127.0.0.1:{gcs}"


def _stop_cluster(proc: subprocess.Popen) -> None:
    # SIGTERM: the CLI's reaper then terminates its process group (the whole cluster)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    time.sleep(2)  # the reaper's grace period, then kill whatever of the group is left
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass



def _metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: row[k] for k in COMPARED} for row in csv.DictReader(f)]


def _top1(run: Path) -> float:
    return json.loads((run / "summary.json").read_text())["final_top1"]


def _quiet(*args):
    pass


def test_a_study_on_ray_gives_the_local_results_then_skips(ray_cluster, tmp_path, one_thread,
                                                             run_cli):
    # the quick study's tiny base (16 px, stem stride 1) and its width-scaled match at 2.5x,
    # through the CLI: --executor ray only changes where the runs execute
    flags = ["--strategies", "baseline,width", "--seeds", "1", "--epochs", "1", "--subset",
             "200", "--val-subset", "100", "--no-report", "--no-measure"]
    code, out, err = run_cli("study", *flags, "--jobs", "1", "--out", tmp_path / "local")
    assert code == 0, err
    code, out, err = run_cli("study", *flags, "--executor", "ray", "--address", ray_cluster,
                             "--out", tmp_path / "ray")
    assert code == 0, err
    assert "training 2 runs (0 to resume) on Ray: 2 CPUs" in out and "[2/2] " in out

    def table(root):  # results.csv without its timing columns (run time, measured speed)
        with open(root / "results.csv", newline="") as f:
            return [{k: v for k, v in row.items()
                     if k not in ("wall_time_s", "train_img_s", "latency_ms")}
                    for row in csv.DictReader(f)]
    assert table(tmp_path / "ray") == table(tmp_path / "local") and len(table(tmp_path / "ray")) == 2
    for run in (tmp_path / "local" / "runs").iterdir():
        twin = tmp_path / "ray" / "runs" / run.name
        assert _metrics(run) == _metrics(twin) and _top1(run) == _top1(twin), run.name

    code, out, err = run_cli("study", *flags, "--executor", "ray", "--address", ray_cluster,
                             "--out", tmp_path / "ray")
    assert code == 0 and "2 of 2 runs already finished: skipped" in out and "on Ray" not in out


def _task_pid(name: str, timeout: float) -> int | None:
    """The pid of the Ray worker executing the task named `name`: a worker retitles its
    process `ray::<task name>` while it runs one. Read with ps, which shows the new title,
    on Linux and macOS alike (psutil is no dependency of ours)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        listing = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True)
        for line in listing.stdout.splitlines():
            pid, _, args = line.strip().partition(" ")
            if args.strip().startswith(f"ray::{name}"):
                return int(pid)
        time.sleep(0.1)
    return None


def test_killed_worker_is_retried_and_resumes_to_the_same_metrics(ray_cluster, tmp_path,
                                                                  one_thread):
    config = dict(model="b0@phi=-6,r=0.1652", data="digits", seed=0, epochs=5, stem_stride=1,
                  recipe="fast", subset=300, val_subset=100, quiet=True)
    run = tmp_path / "ray" / "run"
    job = Job("run", run, config)
    killed = {}

    def killer():
        # wait for the first epoch's checkpoint (state.pt is committed before metrics.csv is
        # rewritten, so one metrics row means epoch 1 is resumable), then SIGKILL the worker
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                rows = len(_metrics(run))
            except (OSError, KeyError):
                rows = 0
            if rows >= 1:
                pid = _task_pid("effscale:run", timeout=10)
                if pid is not None:
                    killed.update(pid=pid, rows=rows)
                    os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    lines = []
    result = run_jobs_ray([job], address=ray_cluster, echo=lines.append, max_retries=2)
    thread.join(5)
    if not killed:  # a machine too busy to find the worker before the run ended: no evidence
        pytest.skip(f"the run finished before its worker could be killed: {lines[-1:]}")
    assert killed["rows"] < 5, "the run finished before the kill: make it longer"
    assert result == {"run": "finished"}, lines
    assert any(" resumed: top-1 " in line for line in lines), lines  # the retry resumed

    reference = tmp_path / "local" / "run"
    assert run_jobs([Job("run", reference, config)], echo=_quiet) == {"run": "finished"}
    assert _metrics(run) == _metrics(reference)
    assert len(_metrics(run)) == 5 and _top1(run) == _top1(reference)


def test_a_failing_run_is_reported_and_the_others_finish(ray_cluster, tmp_path, one_thread):
    # an exception raised by training is the run's answer (not retried): one line, like
    # run_jobs reports it, and the other runs still finish. Here an unknown model name.
    bad = Job("bad", tmp_path / "bad", dict(model="b9", data="digits", epochs=1, quiet=True))
    good = Job("good", tmp_path / "good", dict(model="b0@phi=-6,r=0.1652", data="digits",
                                               epochs=1, stem_stride=1, subset=100,
                                               val_subset=50, quiet=True))
    result = run_jobs_ray([bad, good], address=ray_cluster, echo=_quiet)
    assert result["bad"].startswith("failed: ValueError: "), result
    assert "\n" not in result["bad"] and result["good"] == "finished"


def test_missing_ray_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(RuntimeError) as info:
        run_jobs_ray([Job("x", tmp_path / "x", {"model": "b0"})])
    assert str(info.value) == "the ray executor needs Ray: pip install 'effscale[ray]'"


def test_executor_flags_are_checked(run_cli, tmp_path, monkeypatch):
    code, out, err = run_cli("study", "--cpus-per-run", "2", "--out", tmp_path)
    assert code == 2 and err.strip() == "effscale: error: --cpus-per-run needs --executor ray"
    monkeypatch.setitem(sys.modules, "ray", None)
    code, out, err = run_cli("search", "--executor", "ray", "--seeds", "1", "--epochs", "1",
                             "--out", tmp_path / "s")
    assert code == 2 and err.strip().endswith("pip install 'effscale[ray]'"), err


def test_match_on_ray_measures_on_a_worker(ray_cluster, tmp_path, run_cli, monkeypatch):
    """`--match train-time --executor ray` sizes the models by what a Ray worker measures,
    not the driver: here the driver cannot measure at all."""
    from effscale.experiments import match_cost

    def no_measuring_here(*args, **kwargs):
        raise AssertionError("measured on the driver")
    monkeypatch.setattr(match_cost, "measure_entries", no_measuring_here)
    monkeypatch.setattr(match_cost, "_CACHE", {})
    code, out, err = run_cli("study", "--strategies", "baseline,width,compound", "--seeds", "1",
                             "--epochs", "1", "--match", "train-time", "--max-mismatch", "0.25",
                             "--executor", "ray", "--address", ray_cluster, "--dry-run", "--no-estimate",
                             "--out", tmp_path / "matched")
    assert code == 0, err
    pids = {int(p) for p in re.findall(r"measured on a Ray worker \(process (\d+), cpu\)", out)}
    assert pids and os.getpid() not in pids, out
    assert "width L2.5" in out
