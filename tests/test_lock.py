"""One process per study, search or run directory: a second is refused with one line naming
the holder, or waits with --wait; a lock left by a killed process is taken over."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from effscale.io.lock import LOCK_FILE, dir_lock
from effscale.training.rundir import run_dir_contents

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from effscale.cli.main import main; sys.exit(main())"
HOLD = ("import sys, time; from effscale.io.lock import dir_lock\n"
        "with dir_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(float(sys.argv[2]))")


def holder(directory, seconds=60):
    """A process holding `directory`'s lock for `seconds` (started when it says so)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory), str(seconds)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def cli(*argv):
    proc = subprocess.run([sys.executable, "-c", CLI, *map(str, argv)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("command", [
    ["train", "--model", "b0@phi=-6,r=0.1652", "--data", "digits", "--stem-stride", "1", "--epochs", "1",
      "--out"],
    ["study", "--epochs", "1", "--seeds", "1", "--out"],
    ["search", "--epochs", "1", "--seeds", "1", "--out"],
])
def test_a_second_process_is_refused_with_one_line_naming_the_holder(tmp_path, command):
    out = tmp_path / "dir"
    proc = holder(out)
    try:
        code, _, err = cli(*command, out)
    finally:
        proc.kill()
        proc.wait()
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"{out} is in use by process {proc.pid} (since " in err and "--wait" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing else written


def test_wait_waits_for_the_holder(tmp_path):
    proc = holder(tmp_path, seconds=2)
    lines = []
    t0 = time.time()
    with dir_lock(tmp_path, wait=True, log=lines.append):
        assert time.time() - t0 >= 1.5  # not before the holder let go
    proc.wait()
    assert len(lines) == 1 and "waiting" in lines[0] and str(proc.pid) in lines[0]
    assert not (tmp_path / LOCK_FILE).exists()  # let go: removed


def test_a_lock_left_by_a_killed_process_is_taken_over_with_one_line(tmp_path):
    proc = holder(tmp_path)
    proc.kill()
    proc.wait()
    assert (tmp_path / LOCK_FILE).exists()  # SIGKILL left the file, not the lock
    lines = []
    with dir_lock(tmp_path, log=lines.append):
        assert str(os.getpid()) in (tmp_path / LOCK_FILE).read_text()
    assert len(lines) == 1 and f"process {proc.pid}" in lines[0] and "no longer" in lines[0]


def test_a_refused_lock_leaves_no_new_directory_and_one_process_holds_it(tmp_path):
    with dir_lock(tmp_path / "new"):
        with pytest.raises(ValueError, match=f"in use by process {os.getpid()}"):
            with dir_lock(tmp_path / "new"):
                pass
    assert not (tmp_path / "new").exists()  # created for the lock, left empty: removed


def test_the_run_directory_guard_ignores_the_lock_file(tmp_path):
    (tmp_path / LOCK_FILE).write_text('{"pid": 1}')
    (tmp_path / "config.json").write_text("{}")
    assert run_dir_contents(tmp_path) == (["config.json"], [])
