"""The training engine: `train(config, **overrides) -> summary`.

Read it top to bottom: `train` merges the config and reads any saved state, `setup` builds
data, model, optimizer and EMA (restoring the saved state), then each epoch is `run_epoch`
(steps, mid-epoch checkpoints) and `end_epoch` (evaluate, record, checkpoint), and `finish`
writes the summary. What setup builds is a frozen `Run`; everything that changes and is
saved lives in one `RunState`. Everything a run writes lives in one run directory:

    config.json        the config as trained: merged, and fitted to the data (batch, lr)
    metrics.csv        one row per epoch
    last.safetensors   model file (raw + EMA weights, rebuild metadata), every epoch
    best.safetensors   the same, for the epoch with the best top-1
    state.pt           what resuming needs: model, EMA, optimizer, scaler, RNG states, the
                       position in the data order, the metrics so far. Plain tensors and
                       containers only: torch.load(weights_only=True) reads it.
    state.prev.pt      the state before it, the fallback when state.pt cannot be read
    state.unreadable.pt  a state.pt that could not be read on resume, set aside
    summary.json       final and best top-1 etc., status "finished"
    tensorboard/       TensorBoard event files, when tensorboard is installed
    .NAME.*.tmp        any of the above being written (io.files.atomic_write)
    .effscale.lock     while a process trains it (io.lock.dir_lock): a second one is refused

SIGTERM or SIGINT during training (a preempted job, Ctrl-C) stops the run at the end of the
step under way, after a checkpoint there: `Stopped`, exit status 143 / 130 from the CLI.

state.pt is the single commit point, written atomically after the model files; metrics.csv
is rewritten from the history inside it, so a kill at any moment leaves a consistent run.

Nothing is lost (`rundir.check_out_dir`): a run starts only in a new or empty directory, continues
its own run with resume=True, and goes anywhere else only with overwrite=True, which says in
one line what it replaces and removes the files above first (nothing else). Log files
(*.log: a study worker's, a shell redirect's) are allowed anywhere and never touched.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from ..io import checkpoint as ckpt
from .ema import ModelEma
from ..io.files import write_json
from ..io.readback import read_summary
from ..io.lock import Stopped, StopSignals, dir_lock, signal_name, stop_signals
from ..model.memory import plan
from .optim import create_optimizer
from .build import build_model, final_map_warning
from .config import Config, fit_to_data, run_config
from .devices import (Dist, all_gather, all_reduce_sum, autocast, broadcast, resolve_precision,
                      setup_distributed, teardown_distributed)
from .evaluation import BN_IMAGES, data_device, evaluate_model, recompute_bn
from .output import Progress, board_row, epoch_line, tensorboard_writer, write_summary
from .state import (STATE_FILE, RunState, fresh_sums, load_latest, restore_rng, seed_everything,
                    sync_metrics, write_metrics, caller_state_kept)
from .rundir import check_out_dir, remove_run_files, special_dir
from .steps import apply_schedule, step_with_retry

if TYPE_CHECKING:
    from ..data import Augment, Data


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run directory still holds the last good checkpoint."""


@dataclass(frozen=True)
class Run:
    """What setup builds: fixed for the whole run (the objects in it keep their own state)."""
    cfg: Config
    dist: Dist
    device: torch.device
    progress: Progress
    data: Data
    train_model: nn.Module          # takes the steps: the model, maybe in DDP and compiled
    no_sync: Callable | None        # DDP's no_sync, for the micro-batches before the last
    criterion: nn.Module
    amp: Any                        # autocast context (a null context in fp32)
    per_rank_batch: int
    augment: Augment
    loader_kw: dict                 # make_loader arguments shared by train and val loaders
    val_loader: Any
    steps_per_epoch: int
    schedule: dict                  # apply_schedule's: lr_at keyword arguments and momentum
    meta: dict                      # what model files record besides the model
    board: Any                      # TensorBoard writer (main rank, if installed) or None
    signals: StopSignals | None = None  # SIGTERM / SIGINT seen (train() installs it)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def log(self) -> Callable[[str], None]:
        return self.progress.log


def train(config=None, **overrides) -> dict:
    """Train a model; returns the summary (also written to <out>/summary.json).

    `config` is a Config, a dict or a JSON/TOML file; keyword overrides win. With
    resume=True and an existing run directory the saved config is the base (overrides still
    win) and training continues exactly where state.pt left it.

    The run directory is locked while it trains: another process on it is refused with one
    line naming it, or, with wait=True, waits for it. SIGTERM / SIGINT stop the run after a
    checkpoint at the current step (`Stopped`); the caller's signal handlers are restored.
    """
    wait = overrides.pop("wait", None)  # None: io.lock.waiting's default (the CLI's --wait)
    from ..data.objects import name_datasets
    overrides, given = name_datasets(overrides)  # Python datasets: the config records a name
    with caller_state_kept():
        cfg = run_config(config, overrides)
        with run_dir_lock(cfg, wait), stop_signals() as signals:
            return _train(cfg, signals, given)


def run_dir_lock(cfg: Config, wait: bool | None):
    """The run directory's lock (`io.lock.dir_lock`), taken by the main rank; none where
    check_out_dir is sure to refuse the directory (a file, / or home without overwrite)."""
    out = Path(cfg.out)
    main = int(os.environ.get("WORLD_SIZE", "1")) <= 1 or os.environ.get("RANK", "0") == "0"
    if not main or (out.exists() and not out.is_dir()) or (
            special_dir(out) and not cfg.overwrite):
        return contextlib.nullcontext()
    return dir_lock(out, wait=wait, log=lambda m: print(m, file=sys.stderr, flush=True))


def _train(cfg: Config, signals: StopSignals | None = None, given=None) -> dict:
    dist, device = setup_distributed(cfg.device)
    progress = Progress(dist.main, cfg.quiet)
    saved = saved_state(cfg, dist, progress.log)
    if saved is not None and saved["epoch"] >= cfg.epochs and (Path(cfg.out) / "summary.json").is_file():
        progress.log(f"{cfg.out} already finished")
        teardown_distributed(dist)
        return read_summary(Path(cfg.out) / "summary.json")  # checked: it may be edited

    run, state = setup(cfg, dist, device, progress, saved, given)
    run, cfg = replace(run, signals=signals), run.cfg  # fitted to the data: from here on
    # RNG last, after every setup call that might draw from it: drop-path and dropout masks
    # (and any augmentation drawn from the global RNG) continue exactly where they stopped
    if saved is not None:
        restore_rng(saved, dist)
    else:
        seed_everything(cfg.seed + dist.rank)  # ranks differ in masks, not in data order
    state.start_clock()
    run.train_model.train()
    while state.epoch < cfg.epochs:
        lr = run_epoch(run, state)
        end_epoch(run, state, lr)
        if signals is not None and signals.agreed and state.epoch < cfg.epochs:
            stop(run, state)  # the end of the epoch saved the state: stop there
    summary = finish(run, state)
    if hasattr(run.data.train, "pool"):  # decoding workers: now, not whenever run is garbage
        run.data.train.pool.close()
    teardown_distributed(dist)
    return summary


def saved_state(cfg: Config, dist: Dist, log) -> dict | None:
    """The state to resume from (resume=True), or None for a fresh start; first, whether
    the run may write into its directory at all (`check_out_dir`)."""
    out = Path(cfg.out)
    if dist.main:
        check_out_dir(cfg, log)
    if not cfg.resume:
        return None
    saved = load_latest(out, log, set_aside=dist.main)
    if saved is None:
        log(f"resume: no state in {out}, starting from scratch")
    return saved


# -- setup ---------------------------------------------------------------------------------------

def setup(cfg: Config, dist: Dist, device: torch.device, progress: Progress,
          saved: dict | None, given=None) -> tuple[Run, RunState]:
    """Data (`given`: Python datasets, else cfg.data), model, optimizer, EMA and micro-batch
    plan; then the saved state or a new run directory; then the wrapped model and the
    loaders."""
    from ..data import load_data
    seed_everything(cfg.seed)  # the same initial weights on every rank
    # data: in-memory datasets live on the device as uint8 and are augmented there
    data = load_data(cfg.data if given is None else given, data_dir=cfg.data_dir,
                     device=data_device(cfg.data, device), subset=cfg.subset,
                     val_subset=cfg.val_subset, seed=cfg.seed, val_fraction=cfg.val_fraction)
    cfg = fit_to_data(cfg, train_size=len(data.train))  # the one step that needs the data
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    model = prepare_model(cfg, data.info.num_classes, data.info.in_chans, dist, device,
                          progress.log)
    optimizer = create_optimizer(model, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                 alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 decay_bn_bias=cfg.decay_bn_bias)
    state = RunState(model=model, optimizer=optimizer,
                     scaler=torch.amp.GradScaler(device.type) if precision == "fp16" else None,
                     ema=ModelEma(model, cfg.ema_decay) if cfg.ema_decay > 0 else None)
    per_rank_batch = cfg.batch_size // dist.world_size
    if per_rank_batch * dist.world_size != cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {dist.world_size} ranks")
    state.micro_batch = plan_micro_batch(cfg, per_rank_batch, precision, data.info.num_classes,
                                         model.in_chans, state.ema is not None, device,
                                         progress.log)
    open_run_dir(cfg, dist, state, saved, progress.log)
    run = make_run(cfg, dist, device, progress, data, model, precision, per_rank_batch)
    return run, state


def prepare_model(cfg: Config, num_classes: int, data_in_chans: int, dist: Dist,
                  device: torch.device, log) -> nn.Module:
    """The model, optionally from pretrained weights, on the device in its memory format."""
    model = build_model(cfg, num_classes, data_in_chans, log)
    warning = final_map_warning(model)
    if warning:
        log(warning)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if cfg.sync_bn and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # NHWC: faster convs on tensor cores
    return model


def plan_micro_batch(cfg: Config, per_rank_batch: int, precision: str, num_classes: int,
                     in_chans: int, ema: bool, device: torch.device, log) -> int:
    """The largest micro-batch the memory plan says fits (CPU: the whole batch; report only)."""
    memory = plan(cfg.model, per_rank_batch, precision=precision,
                  grad_checkpointing=cfg.grad_checkpointing, optimizer=cfg.optimizer, ema=ema,
                  num_classes=num_classes, stem_stride=cfg.stem_stride, in_chans=in_chans,
                  memory_budget=cfg.memory_budget, device=device)
    log(memory.describe())
    if not memory.fits:
        log("warning: the estimate exceeds the memory budget even at micro-batch 1; trying anyway")
    return memory.micro_batch


def open_run_dir(cfg: Config, dist: Dist, state: RunState, saved: dict | None, log) -> None:
    """Restore the saved state, or create the run directory and its config.json."""
    out = Path(cfg.out)
    if saved is not None:
        state.restore(saved)
        log(f"resumed {out} at epoch {state.epoch + 1}, batch {state.batch}")
    elif dist.main:
        if cfg.overwrite:  # as late as possible: a setup that fails leaves the old run whole
            remove_run_files(out)
        out.mkdir(parents=True, exist_ok=True)
        # the run's config, not the command's: a copy used as --config must not overwrite
        write_json(out / "config.json", dict(cfg.as_dict(), overwrite=False))
    if dist.main and state.history:
        sync_metrics(out / "metrics.csv", state.history)  # a kill may have left it behind state.pt


def make_run(cfg: Config, dist: Dist, device: torch.device, progress: Progress, data: Data,
             model: nn.Module, precision: str, per_rank_batch: int) -> Run:
    """Wrap the model for DDP / torch.compile and build the loaders and the lr schedule."""
    from ..data import make_loader
    train_model = model
    if dist.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    no_sync = train_model.no_sync if dist.world_size > 1 else None
    if cfg.compile:
        train_model = torch.compile(train_model)
    augment = _augment(cfg)
    info = data.info
    channels = model.in_chans if model.in_chans != info.in_chans else None  # 1 -> 3: repeated
    loader_kw = dict(resolution=model.spec.resolution, seed=cfg.seed, channels=channels,
                     rank=dist.rank, world_size=dist.world_size, device=device,
                     num_workers=cfg.workers)  # image folders decode in this many processes
    val_loader = make_loader(data.val, batch_size=cfg.eval_batch_size, train=False, epoch=0,
                             **loader_kw)
    steps_per_epoch = len(make_loader(data.train, batch_size=per_rank_batch, train=True, epoch=0,
                                      augment=augment, **loader_kw))
    schedule = dict(peak=cfg.lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                    schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                    warmup_start=cfg.warmup_start, decay_rate=cfg.decay_rate,
                    decay_epochs=cfg.decay_epochs, warmup_fraction=cfg.warmup_fraction,
                    momentum=cfg.momentum, momentum_at_peak=cfg.momentum_at_peak)
    meta = dict(dataset=cfg.data, class_names=list(info.class_names), mean=list(info.mean),
                std=list(info.std), data_dir=cfg.data_dir, recipe=cfg.recipe,
                split_seed=cfg.seed, val_fraction=cfg.val_fraction)  # a split-off val set
    return Run(cfg=cfg, dist=dist, device=device, progress=progress, data=data,
               train_model=train_model, no_sync=no_sync,
               criterion=nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
               amp=autocast(device, precision), per_rank_batch=per_rank_batch, augment=augment,
               loader_kw=loader_kw, val_loader=val_loader, steps_per_epoch=steps_per_epoch,
               schedule=schedule, meta=meta,
               board=tensorboard_writer(Path(cfg.out)) if dist.main else None)


def _augment(cfg: Config) -> Augment:
    """The dataset's default augmentation, with what the config sets explicitly on top."""
    from ..data import default_augment
    wanted = dict(flip=cfg.flip, crop_padding=cfg.crop_padding, cutout=cfg.cutout,
                  autoaugment=cfg.autoaugment)
    return replace(default_augment(cfg.data), **{k: v for k, v in wanted.items() if v is not None})


# -- one epoch -----------------------------------------------------------------------------------

def run_epoch(run: Run, state: RunState) -> float:
    """Train on the rest of epoch `state.epoch`, from batch `state.batch` on, checkpointing
    when due; returns the last learning rate used."""
    from ..data import make_loader
    loader = make_loader(run.data.train, batch_size=run.per_rank_batch, train=True,
                         epoch=state.epoch, augment=run.augment, start_batch=state.batch,
                         **run.loader_kw)
    run.progress.start(state.epoch, run.cfg.epochs, run.steps_per_epoch, state.batch)
    lr = apply_schedule(state.optimizer, state.step, run.schedule)
    t0 = time.perf_counter()  # images/s counts producing the batch (data) and the step
    for images, labels in loader:
        images = images.to(run.device, non_blocking=True)
        labels = labels.to(run.device, non_blocking=True)
        if run.cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        lr = apply_schedule(state.optimizer, state.step, run.schedule)
        loss, due = train_step(run, state, images, labels)
        state.batch += 1
        seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        images_seen = images.shape[0] * run.dist.world_size
        state.epoch_sums["images"] += images_seen
        state.epoch_sums["seconds"] += seconds
        run.progress.update(loss, images_seen / max(seconds, 1e-9))
        stopping = run.signals is not None and run.signals.agreed
        # at the end of the epoch, end_epoch checkpoints (and _train stops after it)
        if (due or stopping) and state.batch < run.steps_per_epoch:
            state.save(run.out / STATE_FILE, run.dist)  # the mid-epoch checkpoint
            if stopping:
                stop(run, state)
    run.progress.close()
    return lr


def stop(run: Run, state: RunState) -> None:
    """After a SIGTERM / SIGINT, with the state just saved: `Stopped`, saying how to resume."""
    run.progress.close()
    if run.board is not None:
        run.board.close()
    signum = run.signals.agreed
    raise Stopped(f"stopped by {signal_name(signum)} at epoch {state.epoch + 1}, batch "
                  f"{state.batch} (step {state.step}), checkpoint saved; resume with: "
                  f"effscale train --out {run.out} --resume", signum)


def train_step(run: Run, state: RunState, images, labels) -> tuple[float, bool]:
    """One optimizer step; returns the loss (mean over ranks) and whether a checkpoint is due."""
    state.optimizer.zero_grad(set_to_none=True)
    loss, state.micro_batch = step_with_retry(
        run.train_model, images, labels, micro_batch=state.micro_batch,
        optimizer=state.optimizer, log=run.log, criterion=run.criterion, amp=run.amp,
        scaler=state.scaler, no_sync=run.no_sync)
    steps = run.cfg.checkpoint_steps
    due = (time.monotonic() - state.saved_at >= 60 * run.cfg.checkpoint_minutes
           or (steps and (state.step + 1) % steps == 0))
    # one collective per step: mean loss, whether any rank wants a checkpoint, or to stop
    asked = run.signals.requested if run.signals is not None else 0
    loss_sum, due, asked = all_reduce_sum([loss.item(), float(due), float(asked)], run.dist,
                                          run.device)
    if asked:  # every rank stops after this same step
        run.signals.agreed = run.signals.requested or 15  # another rank's: SIGTERM
    loss_value = loss_sum / run.dist.world_size
    if math.isfinite(loss_value):
        update_weights(run, state)
        state.epoch_sums["loss"] += loss_value
        state.epoch_sums["batches"] += 1
    else:
        skip_nonfinite(run, state, loss_value)
    state.step += 1
    return loss_value, bool(due)


def update_weights(run: Run, state: RunState) -> None:
    """Unscale (fp16), clip, step the optimizer, update the EMA."""
    optimizer, scaler = state.optimizer, state.scaler
    if scaler is not None:
        scaler.unscale_(optimizer)
    if run.cfg.grad_clip > 0:
        nn.utils.clip_grad_norm_(state.model.parameters(), run.cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    if state.ema is not None:
        state.ema.update(state.model)


def skip_nonfinite(run: Run, state: RunState, loss_value: float) -> None:
    """Drop this step's gradients; stop (NonFiniteLossError) unless skip_nonfinite is set."""
    state.optimizer.zero_grad(set_to_none=True)
    if run.cfg.skip_nonfinite:
        run.log(f"warning: non-finite loss at step {state.step}: step skipped")
        return
    run.progress.close()
    if run.dist.main:
        write_summary(run.out, run.cfg, state.model, state.history, state.best_top1,
                      state.best_epoch, state.wall_time(), "nonfinite")
    raise NonFiniteLossError(
        f"non-finite loss ({loss_value}) at epoch {state.epoch + 1}, step {state.step}; "
        f"stopped. {run.out} keeps the last good checkpoint; lower --lr, or pass "
        f"--skip-nonfinite to skip such steps")


# -- end of epoch: evaluate (EMA weights when there are any), record, checkpoint -----------------

def end_epoch(run: Run, state: RunState, lr: float) -> None:
    """Evaluate, append the metrics row, then model files, the commit point, metrics.csv."""
    kw = dict(device=run.device, amp=run.amp, channels_last=run.cfg.channels_last, dist=run.dist)
    scored = state.ema.module if state.ema else state.model
    if state.ema:  # the raw model's statistics are its own (they train with it); the EMA's not
        recompute_bn(scored, bn_batches(run, state.epoch), channels_last=run.cfg.channels_last,
                     dist=run.dist)
    val = evaluate_model(scored, run.val_loader, **kw)
    raw_top1 = evaluate_model(state.model, run.val_loader, **kw)["top1"] if state.ema else val["top1"]
    sums = state.epoch_sums
    row = dict(epoch=state.epoch + 1, train_loss=sums["loss"] / max(sums["batches"], 1),
               val_loss=val["loss"], top1=val["top1"], top5=val["top5"], lr=lr,
               images_per_s=sums["images"] / max(sums["seconds"], 1e-9),
               wall_time=state.wall_time(), raw_top1=raw_top1)
    state.history.append(row)
    run.log(epoch_line(row, run.cfg.epochs))
    board_row(run.board, row)
    is_best = val["top1"] > state.best_top1
    if is_best:
        state.best_top1, state.best_epoch = val["top1"], state.epoch + 1
    state.epoch, state.batch, state.epoch_sums = state.epoch + 1, 0, fresh_sums()
    if run.dist.main:  # model files first, then the commit point, then the metrics view
        save_model(run, state, run.out / "last.safetensors", top1=val["top1"])
        if is_best:
            save_model(run, state, run.out / "best.safetensors", top1=val["top1"])
    state.save(run.out / STATE_FILE, run.dist, finished=state.epoch == run.cfg.epochs)
    if run.dist.main:
        write_metrics(run.out / "metrics.csv", state.history)


def bn_batches(run: Run, epoch: int):
    """Un-augmented training batches (this epoch's order) of about BN_IMAGES images."""
    from ..data import make_loader
    loader = make_loader(run.data.train, batch_size=run.per_rank_batch, train=True, epoch=epoch,
                         **run.loader_kw)
    count = math.ceil(BN_IMAGES / run.dist.world_size / run.per_rank_batch)
    return itertools.islice(loader, count)


def save_model(run: Run, state: RunState, path: Path, **extra) -> None:
    meta = ckpt.model_meta(state.model, **run.meta, epoch=state.epoch, **extra)
    ckpt.save_model_file(path, state.model, meta, ema=state.ema.module if state.ema else None)


# -- the end -------------------------------------------------------------------------------------

def finish(run: Run, state: RunState) -> dict:
    """summary.json (rank 0 writes it; every rank returns it), with each rank's checksum of
    its final weights when distributed: they must all be equal."""
    wall_time = state.wall_time()
    checksums = None
    if run.dist.world_size > 1:
        mine = float(sum(p.detach().double().sum().item() for p in state.model.parameters()))
        checksums = all_gather(mine, run.dist)
    summary = None
    if run.dist.main:
        summary = write_summary(
            run.out, run.cfg, state.model, state.history, state.best_top1, state.best_epoch,
            wall_time, "finished", micro_batch=state.micro_batch,
            accum_steps=math.ceil(run.per_rank_batch / state.micro_batch),
            world_size=run.dist.world_size, param_checksums=checksums,
            skipped_files=[*getattr(run.data.train, "skipped", ()),  # unreadable images
                           *getattr(run.data.val, "skipped", ())])
        if run.board is not None:
            run.board.close()
    return broadcast(summary, run.dist)
