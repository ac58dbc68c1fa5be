import os

import pytest
import torch

# The suite runs on 2 cores; keep torch from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture
def run_cli(capsys):
    """Run `effscale ...` in-process; return (exit code, stdout, stderr)."""
    from effscale.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run
