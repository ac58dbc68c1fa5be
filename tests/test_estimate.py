"""Dry-run wall-time estimates (`experiments.estimate`): the arithmetic by hand, the packing
of runs onto workers, and the line `study --dry-run` / `search --dry-run` print. How close
the estimate comes to real runs is measured in BENCHMARKS.md, not asserted here."""

import pytest

from effscale.experiments.estimate import busiest, format_duration, run_seconds

TINY = ["--base", "b0@phi=-6,r=0.1652", "--levels", "2.5", "--strategies", "baseline,width",
        "--seeds", "1", "--epochs", "3", "--subset", "200", "--val-subset", "100"]


def test_a_run_is_its_epochs_of_steps_and_scoring():
    # 1,000 images at batch 64: 15 full steps (the partial one is dropped) of 64 images at
    # 320 img/s = 3 s; scoring 200 val + 1,000 BatchNorm images at 1,200 img/s = 1 s
    seconds = run_seconds(epochs=5, train_size=1000, val_size=200, batch=64, train_img_s=320,
                          infer_img_s=1200)
    assert seconds == pytest.approx(5 * (15 * 64 / 320 + 1200 / 1200))


def test_runs_are_dealt_longest_first_to_the_least_loaded_worker():
    # 5 -> A, 4 -> B, 3 -> B (7), 3 -> A (8), 3 -> B (10): the busiest worker has 10
    assert busiest([3, 5, 3, 4, 3], 2) == 10
    assert busiest([3, 5, 3, 4, 3], 1) == 18 and busiest([3, 5, 3, 4, 3], 8) == 5


def test_durations_read_as_people_say_them():
    assert [format_duration(s) for s in (42, 600, 5400, 7260, 7182)] == [
        "42 s", "10 min", "1 h 30 min", "2 h 01 min", "2 h 00 min"]  # 119.7 min: not "1 h 60"


def test_dry_runs_print_an_estimate_unless_told_not_to(run_cli, tmp_path):
    code, out, err = run_cli("study", *TINY, "--jobs", "1", "--out", tmp_path / "s",
                             "--dry-run")
    assert code == 0, err
    line = [l for l in out.splitlines() if l.startswith("estimated wall time:")]
    assert len(line) == 1 and "about" in line[0] and "(2 runs, 1 worker of" in line[0], out
    assert not (tmp_path / "s").exists()  # still a dry run: nothing written
    done = tmp_path / "s" / "runs" / "width-L2.5-s0"  # a finished run is not estimated
    done.mkdir(parents=True)
    (done / "summary.json").write_text('{"status": "finished"}')
    code, out, err = run_cli("study", *TINY, "--jobs", "1", "--out", tmp_path / "s",
                             "--dry-run")
    assert code == 0 and "(1 run, 1 worker of" in out, out
    code, out, err = run_cli("study", *TINY, "--out", tmp_path / "s", "--dry-run",
                             "--no-estimate")
    assert code == 0 and "estimated wall time" not in out
    code, out, err = run_cli("search", "--base", "b0@phi=-6,r=0.1652", "--alphas", "1.2",
                             "--betas", "1.1", "--seeds", "1", "--epochs", "1", "--subset",
                             "100", "--jobs", "1", "--out", tmp_path / "g", "--dry-run")
    assert code == 0 and "estimated wall time:" in out and "(2 runs, 1 worker" in out, out


def test_no_estimate_without_the_data(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("EFFSCALE_DATA", str(tmp_path / "empty"))  # CIFAR-10 is not here
    code, out, err = run_cli("study", "--data", "cifar10", "--out", tmp_path / "s",
                             "--dry-run")
    assert code == 0, err
    assert "no time estimate: the dataset is not here to count its images" in out
