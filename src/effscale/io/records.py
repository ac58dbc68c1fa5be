"""The record of a study or search directory (study.json / search.json): reading it, the
environment and commands it keeps, and refusing to mix two different experiments in one
directory."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from .readback import check_record, check_runs_agree, read_json, read_metrics, read_summary


def environment(device: str | None = None) -> dict:
    """Versions and hardware, recorded with every study so a result says where it came from."""
    from importlib import metadata
    from .. import __version__
    env = {"python": platform.python_version(), "effscale": __version__,
           "platform": platform.platform(), "cpus": (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)}
    for package in ("torch", "torchvision", "numpy", "scipy", "matplotlib"):
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    try:
        import torch
        if torch.cuda.is_available() and device != "cpu":
            env["device"] = ", ".join(torch.cuda.get_device_name(i)
                                      for i in range(torch.cuda.device_count()))
            env["cuda"] = torch.version.cuda
        else:
            env["device"] = f"cpu ({_cpu_model()}, {(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1)} cores)"
    except ImportError:
        env["device"] = "cpu"
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def api_command(function: str, config: dict) -> str:
    """How to repeat a call made from Python (the CLI passes the command line it parsed)."""
    return f"python -c 'import effscale; effscale.{function}({config!r})'"


def command_history(old: dict, command: str) -> list[str]:
    """The commands that built a study or search directory, this one appended if new."""
    commands = list(old.get("commands", []))
    if not commands or commands[-1] != command:
        commands.append(command)
    return commands


RECORDS = {"study": "study.json", "search": "search.json"}


def load_record(path: str | Path, kind: str = "study") -> dict:
    """The record of a study or search directory; FileNotFoundError naming what is missing."""
    file = Path(path) / RECORDS[kind]
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a {kind} directory (no {RECORDS[kind]})")
    # checked before anything plans, trains or reports from it: a hand-edited record (or runs
    # that disagree with it) is one line naming the file and key, not a wrong table
    record = check_record(read_json(file, f"{kind} record"), file)
    check_runs_agree(path, record, file)
    return record


def load_study(study_dir: str | Path) -> dict:
    return load_record(study_dir, "study")


def check_same_runs(old: dict, runs: dict[str, dict]) -> None:
    """Refuse to mix two different studies in one directory: a run whose training config
    changed (other epochs, recipe, model...) would silently resume or skip the wrong thing."""
    for key, run in old.get("runs", {}).items():
        new = runs.get(key)
        if new is None:
            continue
        before, after = run.get("train", {}), new["train"]
        changed = sorted(k for k in set(before) | set(after)
                         if before.get(k) != after.get(k)
                         and k not in ("quiet", "device", "data_dir"))  # not in the numbers
        if changed:
            k = changed[0]
            raise ValueError(f"{key} was planned with {k}={before.get(k)!r}, now "
                             f"{after.get(k)!r}: this directory holds a different study; "
                             f"use another --out")


def search_run_key(alpha: float, beta: float, seed: int, paper: bool = False) -> str:
    """A search's run directory name under runs/: a<alpha>-b<beta>-s<seed>, or paper-s<seed>
    for the paper's point."""
    return f"paper-s{seed}" if paper else f"a{alpha:g}-b{beta:g}-s{seed}"


def read_run(run_dir: Path) -> dict:
    """summary (or {}), per-epoch metrics rows, status; each file checked (`io.readback`):
    a damaged one is a ValueError naming it, never a run silently counted as unfinished."""
    run_dir = Path(run_dir)
    summary = {}
    if (run_dir / "summary.json").is_file():
        summary = read_summary(run_dir / "summary.json")
    metrics = []
    if (run_dir / "metrics.csv").is_file():
        metrics = read_metrics(run_dir / "metrics.csv")
    return {"summary": summary, "metrics": metrics,
            "finished": summary.get("status") == "finished"}


def read_runs(directory: Path, record: dict) -> dict[str, dict]:
    """{run key: read_run()} of every run a study or search record holds (DIR/runs/<key>)."""
    return {key: read_run(Path(directory) / "runs" / key) for key in record["runs"]}


# A FLOPs level in a record and a run key: "2.5" (x the base's MACs) or "phi1" (compound phi)
def level_label(value: float, kind: str = "level") -> str:
    return f"phi{value:g}" if kind == "phi" else f"{value:g}"


def parse_level(label: str) -> tuple[str, float]:
    """("level" | "phi", value) of a level label: the one place that reads the format."""
    return ("phi", float(label[3:])) if label.startswith("phi") else ("level", float(label))
