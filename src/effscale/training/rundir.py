"""Where a run may write (the engine's overwrite guard): a run starts only in a new or empty
directory, continues its own run with resume=True, and goes anywhere else only with
overwrite=True, which says in one line what it replaces and removes only the files a run
writes. Log files (*.log), NFS's .nfs* placeholders and the lock file are no obstacle."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from ..io.lock import LOCK_FILE
from .config import Config
from .state import PREVIOUS_STATE_FILE, STATE_FILE, UNREADABLE_STATE_FILE, has_state

RUN_FILES = ("config.json", "metrics.csv", "last.safetensors", "best.safetensors", STATE_FILE,
             PREVIOUS_STATE_FILE, UNREADABLE_STATE_FILE, "summary.json")
BOARD_DIR = "tensorboard"
_TEMP = re.compile(r"\.(?P<name>.+)\.\d+\.[0-9a-f]+\.tmp")


def run_dir_contents(out: Path) -> tuple[list[str], list[str]]:
    """(the entries of `out` that effscale writes in a run directory, every other entry),
    sorted; log files, NFS's .nfs* placeholders and the lock file are in neither."""
    ours, others = [], []
    if not out.is_dir():
        return ours, others
    for entry in sorted(out.iterdir(), key=lambda p: p.name):
        name = entry.name
        if name.endswith(".log") or name.startswith(".nfs") or name == LOCK_FILE:
            continue
        temp = _TEMP.fullmatch(name)
        if entry.is_file() and (name in RUN_FILES or temp and temp["name"] in RUN_FILES):
            ours.append(name)
        elif name == BOARD_DIR and entry.is_dir() and not entry.is_symlink() and all(
                e.is_file() and e.name.startswith("events.out.tfevents.")
                for e in entry.iterdir()):
            ours.append(name + "/")
        else:
            others.append(name + ("/" if entry.is_dir() else ""))
    return ours, others


def check_out_dir(cfg: Config, log) -> None:
    """Refuse, with one line naming what is there, a run that could lose something: into a
    directory that holds files effscale did not write, over another run without resume, a
    finished run with resume but nothing to resume from, into / or the home directory. With
    overwrite=True anything goes, and one log line says what the run replaces."""
    out = Path(cfg.out)
    if cfg.resume and cfg.overwrite:
        raise ValueError(f"pass --resume (continue the run in {out}) or --overwrite (replace "
                         f"it), not both")
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a directory; choose another --out")
    special = special_dir(out)
    if special and not cfg.overwrite:
        raise ValueError(f"refusing to write a run into {out} ({special}); choose a new or "
                         f"empty --out, or pass --overwrite")
    ours, others = run_dir_contents(out)
    finished = _finished(out)
    if cfg.overwrite:
        if not ours:
            log(f"overwrite: nothing to replace in {out}")
            return
        what = (f"a finished run (summary.json: {finished})" if finished
                else "a run" if has_state(out) else "run files")
        kept = f"; {_names(others)} left alone" if others else ""
        log(f"overwrite: replacing {what} in {out} ({_names(ours)}){kept}")
        return
    if others:
        raise ValueError(f"{out} holds files effscale did not write ({_names(others)}); "
                         f"choose an empty or new --out, or pass --overwrite")
    if not ours:
        return
    if cfg.resume:
        # without a state a run starts over; fine for one killed before its first checkpoint
        # (config.json, model files), not over a finished run or one that lost its state
        lost = (f"a finished run (summary.json: {finished})" if finished
                else "a run's metrics (metrics.csv)" if "metrics.csv" in ours else None)
        if lost and not has_state(out):
            raise ValueError(f"{out} holds {lost} but no {STATE_FILE} to resume it from; "
                             f"pass --overwrite to replace it")
        return
    what = (f"a finished run (summary.json: {finished})" if finished
            else f"a run ({_names(ours)})" if has_state(out) else f"run files ({_names(ours)})")
    raise ValueError(f"{out} already holds {what}; pass --resume to continue it or "
                     f"--overwrite to replace it")


def remove_run_files(out: Path) -> None:
    """Remove what effscale wrote in `out` (`run_dir_contents`), nothing else."""
    for name in run_dir_contents(out)[0]:
        path = out / name.rstrip("/")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def special_dir(out: Path) -> str | None:
    where = out.resolve()
    if where == Path(where.anchor):
        return "the filesystem root"
    if where == Path.home().resolve():
        return "the home directory"
    return None


def _finished(out: Path) -> str | None:
    """"84.70% top-1" when `out` holds a finished run's summary.json, else None."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "finished":
        return None
    top1 = summary.get("final_top1")
    return f"{top1:.2f}% top-1" if isinstance(top1, (int, float)) else "finished"


def _names(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
