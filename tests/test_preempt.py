"""Preemption: SIGTERM during training checkpoints at the current step and exits 143 with one
line saying how to resume (the resumed run equals an uninterrupted one, bitwise on CPU); a
study's workers die with it, even when it is SIGKILLed, and the same command finishes them."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import effscale

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="b0@phi=-6,r=0.1652", data="digits", stem_stride=1, epochs=2, batch_size=16,
            subset=160, val_subset=80, quiet=True)
CLI = ("import sys, torch; torch.set_num_threads(%d); from effscale.cli.main import main; "
       "sys.exit(main())")


def metrics(run_dir, drop=("wall_time", "images_per_s")):
    with open(Path(run_dir) / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def start(*argv, threads=None):
    code = CLI % (threads or torch.get_num_threads())
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for(condition, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None and not condition():
        time.sleep(0.05)
    assert proc.poll() is None, "ended before it could be stopped: " + proc.stderr.read()


def test_sigterm_checkpoints_says_how_to_resume_and_resumes_exactly(tmp_path):
    whole = tmp_path / "whole"
    effscale.train(**TINY, out=str(whole))
    stopped = tmp_path / "stopped"
    argv = ["train", "--out", stopped] + [
        x for k, v in TINY.items() for x in (["--" + k.replace("_", "-")] if v is True
                                             else ["--" + k.replace("_", "-"), v])]
    proc = start(*argv)
    try:  # stop it in the second epoch, between two checkpoints
        wait_for(lambda: (stopped / "metrics.csv").is_file(), proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("effscale: stopped by SIGTERM at epoch 2, batch ") and \
        f"resume with: effscale train --out {stopped} --resume" in last, last
    state = torch.load(stopped / "state.pt", weights_only=True)
    assert state["epoch"] == 1 and 0 < state["batch"] < 10  # where it stopped, not an epoch end
    assert not (stopped / "summary.json").exists()
    assert effscale.train(out=str(stopped), resume=True, quiet=True)["status"] == "finished"
    assert metrics(stopped) == metrics(whole)  # bitwise: same text for every float


def workers_of(study_dir) -> list[int]:
    """PIDs of live study workers (python -m effscale.experiments.local) of `study_dir`."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            zombie = "State:\tZ" in (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        if "effscale.experiments.local" in cmdline and str(study_dir) in cmdline and not zombie:
            pids.append(int(entry.name))
    return pids


def test_study_workers_die_with_the_study_and_the_same_command_finishes(tmp_path):
    out = tmp_path / "study"
    argv = ["study", "--base", TINY["model"], "--strategies", "width", "--levels", "2",
            "--seeds", "2", "--epochs", "2", "--subset", "160", "--val-subset", "80",
            "--stem-stride", "1", "--batch-size", "16", "--jobs", "2", "--no-report",
            "--no-measure", "--out", out]
    runs = [out / "runs" / f"width-L2-s{seed}" for seed in (0, 1)]

    def training():
        return all((run / "config.json").is_file() for run in runs)

    proc = start(*argv, threads=1)
    try:
        wait_for(training, proc)
        assert len(workers_of(out)) == 2
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 20
        while workers_of(out) and time.time() < deadline:
            time.sleep(0.1)
        assert workers_of(out) == [], "a worker outlived its study"
        # SIGTERM: passed on to the workers, which checkpoint; one line, exit 143
        proc = start(*argv, threads=1)
        wait_for(lambda: len(workers_of(out)) == 2, proc)
        time.sleep(2)  # into training
        proc.send_signal(signal.SIGTERM)
        stdout, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "no longer running" in stdout  # the SIGKILLed study's lock file, taken over
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "effscale: stopped by SIGTERM: 2 run(s) interrupted"), err
    assert workers_of(out) == []
    proc = start(*argv, threads=1)
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err + stdout
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
