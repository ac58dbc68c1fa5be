"""benchmarks/gpu_check.sh, the one prepared GPU run, dry-run here: everything up to its first
CUDA call (the environment, the carried-data layout, the study's plan, the CUDA tests'
collection, the benchmarks' command lines, the output folder), so that a rented GPU's minutes
are not spent on a typo."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _dry_run(out: Path, data: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, DRY_RUN="1", GPU_DATA=str(data), PYTHON=sys.executable)
    return subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                          env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_dry_run_reaches_the_first_cuda_call(tmp_path):
    data = tmp_path / "fashion"
    data.mkdir()
    for name in FILES:  # the layout is checked; the dry run reads no image
        (data / name).write_bytes(b"\x1f\x8b")
    out = tmp_path / "out"
    done = _dry_run(out, data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dry run complete" in done.stdout
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] and env["effscale"] and "gpu" not in env  # no CUDA call was made
    log = (out / "gpu_check.log").read_text()
    # the study it will run: six strategies, three budgets, 3 seeds each
    assert "3 budgets (12, 24, 48 epochs): 54 runs, trained in one pool" in log
    assert "fast L4.3" in log
    assert "test_cuda.py" in log  # the CUDA tests were collected


def test_missing_data_is_one_line_and_exit_2(tmp_path):
    done = _dry_run(tmp_path / "out", tmp_path / "nowhere")
    assert done.returncode == 2
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and "carry the Fashion-MNIST files" in lines[0], done.stdout
