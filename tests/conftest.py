import os

# Spinning OpenMP threads fight other processes on a small shared machine; passive waiting
# costs nothing when the cores are free. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# The suite runs on 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def run_cli(capsys):
    """Run `effscale ...` in-process; return (exit code, stdout, stderr)."""
    from effscale.cli.main import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def one_thread():
    """One torch thread for a test: on a busy 2-core machine two OpenMP threads per process run
    ~10x slower, and study workers and Ray tasks train with one thread too."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
