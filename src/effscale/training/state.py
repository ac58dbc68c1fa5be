"""What a run saves and resumes from: `RunState` (state.pt), RNG states and metrics.csv.

state.pt holds plain tensors and containers only, so torch.load(weights_only=True) reads it.
Saving it is the run's single commit point. The state it replaces is kept as state.prev.pt,
so a state.pt that cannot be read (truncated, corrupted) costs at most the work since the
checkpoint before it: `load_latest` falls back to it with one warning, and sets the bad file
aside as state.unreadable.pt (the next save must not rotate it over the good one).
"""

from __future__ import annotations

import csv
import contextlib
import io
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .ema import ModelEma
from ..io.files import atomic_write
from .devices import Dist, all_gather

STATE_FILE = "state.pt"
PREVIOUS_STATE_FILE = "state.prev.pt"  # the state before the latest, kept by every save
UNREADABLE_STATE_FILE = "state.unreadable.pt"  # a state.pt that could not be read, set aside
METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr", "images_per_s",
                 "wall_time", "raw_top1")
STATE_KEYS = ("epoch", "batch", "step", "model", "optimizer", "rng", "history", "best_top1",
              "best_epoch", "elapsed", "epoch_sums")


def fresh_sums() -> dict:
    """Per-epoch running sums: train loss over batches, images and seconds for images/s."""
    return dict(loss=0.0, batches=0, images=0, seconds=0.0)


@dataclass
class RunState:
    """Everything that is saved and restored, and the objects whose state that is."""
    model: nn.Module                 # the module whose weights are saved (not DDP / compiled)
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None = None
    scaler: torch.amp.GradScaler | None = None
    epoch: int = 0                   # epochs completed
    batch: int = 0                   # batches of the current epoch completed
    step: int = 0                    # optimizer steps taken (skipped ones included)
    history: list[dict] = field(default_factory=list)  # one metrics row per epoch
    best_top1: float = -1.0
    best_epoch: int = 0
    elapsed: float = 0.0             # training seconds before this process started
    epoch_sums: dict = field(default_factory=fresh_sums)
    micro_batch: int = 1             # images per forward pass (batch split for memory)
    # this process's clock, not saved: when training started and when it last saved
    started: float = field(default_factory=time.monotonic, repr=False)
    saved_at: float = field(default_factory=time.monotonic, repr=False)

    def start_clock(self) -> None:
        self.started = self.saved_at = time.monotonic()

    def wall_time(self) -> float:
        """Training seconds so far, over every process that worked on this run."""
        return self.elapsed + time.monotonic() - self.started

    def snapshot(self, rngs: list[dict], finished: bool = False) -> dict:
        return dict(
            version=1, epoch=self.epoch, batch=self.batch, step=self.step, finished=finished,
            model=_cpu(self.model.state_dict()), ema=self.ema.state_dict() if self.ema else None,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler else None, rng=rngs,
            history=self.history, best_top1=self.best_top1, best_epoch=self.best_epoch,
            elapsed=self.wall_time(), epoch_sums=dict(self.epoch_sums),
            micro_batch=self.micro_batch)

    def save(self, path: Path, dist: Dist = Dist(), *, finished: bool = False) -> None:
        """The commit point. Every rank takes part (RNG states are gathered); rank 0 writes,
        atomically, keeping the state it replaces as state.prev.pt."""
        rngs = gather_rng_states(dist)
        if dist.main:
            snapshot = self.snapshot(rngs, finished)
            atomic_write(path, lambda tmp: save_torch(snapshot, tmp),
                         previous=Path(path).with_name(PREVIOUS_STATE_FILE))
        self.saved_at = time.monotonic()

    def restore(self, saved: dict) -> None:
        """Weights, optimizer, EMA, scaler and position from a saved state (RNG: see
        `restore_rng`, which must come after every setup call that draws from it)."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        if self.scaler is not None and saved["scaler"]:
            self.scaler.load_state_dict(saved["scaler"])
        self.epoch, self.batch, self.step = saved["epoch"], saved["batch"], saved["step"]
        self.history = list(saved["history"])
        self.best_top1, self.best_epoch = saved["best_top1"], saved["best_epoch"]
        self.elapsed = saved["elapsed"]
        self.epoch_sums = dict(saved["epoch_sums"])
        self.micro_batch = min(self.micro_batch, saved.get("micro_batch", self.micro_batch))


def save_torch(value, path: str | Path) -> None:
    """torch.save through a Python file: given a path, torch writes with its own C++ stream
    and a full disk comes back as "file write failed" without an errno; through a file object
    the OSError (ENOSPC, EDQUOT, EIO...) of the failed write is raised or chained, so
    `atomic_write` names the path and the cause."""
    with open(path, "wb") as f:
        torch.save(value, f)


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


# -- reading a run's state -----------------------------------------------------------------------

def read_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def has_state(out: Path) -> bool:
    return any((Path(out) / name).exists() for name in (STATE_FILE, PREVIOUS_STATE_FILE))


def load_latest(out: Path, log=lambda message: None, *, set_aside: bool = True) -> dict | None:
    """The newest readable state of a run directory: state.pt, else (one warning through
    `log`) state.prev.pt, and then, with set_aside (the main rank), the unreadable state.pt
    is renamed state.unreadable.pt. None when there is neither state; ValueError when none
    can be read."""
    latest, previous = Path(out) / STATE_FILE, Path(out) / PREVIOUS_STATE_FILE
    if not has_state(out):
        return None
    problems = {}
    for path in (latest, previous):
        if not path.exists():
            problems[path.name] = "missing"
            continue
        try:
            saved = read_state(path)
            missing = [k for k in STATE_KEYS if k not in saved]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
        except Exception as exc:  # noqa: BLE001 - zip, pickle and EOF errors share no base
            problems[path.name] = _first_line(exc)
            continue
        if path == previous:
            kept = ""
            if set_aside and latest.exists():
                latest.replace(latest.with_name(UNREADABLE_STATE_FILE))
                kept = f"set aside as {UNREADABLE_STATE_FILE}; "
            log(f"warning: {latest.name} is unreadable ({problems[latest.name]}); {kept}"
                f"resuming from {previous.name}, the checkpoint before it (epoch "
                f"{saved['epoch'] + 1}, batch {saved['batch']})")
        return saved
    reasons = "; ".join(f"{name}: {why}" for name, why in problems.items())
    raise ValueError(f"cannot resume {out}: no readable state ({reasons}); start a new run "
                     f"with another --out")


def _first_line(exc: Exception) -> str:
    """The error's first sentence (torch's zip reader appends a paragraph of advice)."""
    text = str(exc).strip()
    text = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


# -- RNG state (weights_only-loadable: tensors and plain containers only) -----------------------

def rng_state() -> dict:
    np_state = np.random.get_state()
    return dict(torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                python=random.getstate(),
                numpy=[np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]])


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy(), pos, has_gauss, cached))


@contextlib.contextmanager
def caller_state_kept():
    """Training reseeds the global RNGs and may switch cuDNN's autotuner on: give the caller
    back the RNG states and the cuDNN flag it had, whatever happens inside."""
    saved, benchmark = rng_state(), torch.backends.cudnn.benchmark
    try:
        yield
    finally:
        set_rng_state(saved)
        torch.backends.cudnn.benchmark = benchmark


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def gather_rng_states(dist: Dist) -> list[dict]:
    """Every rank's RNG state, on every rank."""
    if dist.world_size == 1:
        return [rng_state()]
    buffer = io.BytesIO()  # gathered as bytes: all_gather_object won't unpickle tensors
    torch.save(rng_state(), buffer)
    return [torch.load(io.BytesIO(b), weights_only=True)
            for b in all_gather(buffer.getvalue(), dist)]


def restore_rng(saved: dict, dist: Dist) -> None:
    """This rank's saved RNG state (rank 0's when the run had fewer ranks)."""
    rngs = saved["rng"]
    set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])


# -- metrics.csv: a view of the history in state.pt ------------------------------------------------

def write_metrics(path: Path, history: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(history)
    atomic_write(path, write)


def metrics_rows(path: Path) -> int | None:
    """How many epochs metrics.csv records (None: missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None
    return len(rows) if all(r.get("epoch") for r in rows) else None


def sync_metrics(path: Path, history: list[dict]) -> None:
    """On resume: rewrite metrics.csv when it is behind the saved history (a kill between the
    commit point and the metrics write). A file ahead of it, because the run resumes from the
    checkpoint before the latest, is kept: the epochs run again will replace its rows."""
    rows = metrics_rows(path)
    if rows is None or rows < len(history):
        write_metrics(path, history)
