"""The training engine: `train(config, **overrides) -> summary` and `evaluate(checkpoint, data)`.

Read `train()` top to bottom: resolve the config, set up devices, data, model, optimizer and
EMA, maybe resume, then the epoch loop (steps, checkpoints, evaluation, metrics), then the
summary. Everything it writes lives in one run directory:

    config.json        the resolved config (recipe values filled in)
    metrics.csv        one row per epoch
    last.safetensors   model file (raw + EMA weights, rebuild metadata), every epoch
    best.safetensors   the same, for the epoch with the best top-1
    state.pt           what resuming needs: model, EMA, optimizer, scaler, RNG states, the
                       position in the data order, the metrics so far. Plain tensors and
                       containers only: torch.load(weights_only=True) reads it.
    summary.json       final and best top-1 etc., status "finished"

state.pt is the single commit point, written atomically after the model files; metrics.csv
is rewritten from the history inside it, so a kill at any moment leaves a consistent run.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from .ema import ModelEma
from .files import atomic_write, write_json
from .memory import parse_bytes, plan
from .model import create_model
from .names import model_spec
from .optim import create_optimizer, lr_at
from .recipes import OPTIMIZERS, RECIPE_FIELDS, SCHEDULES, get_recipe

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "top1", "top5", "lr", "images_per_s",
                 "wall_time", "raw_top1")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run directory still holds the last good checkpoint."""


@dataclass(frozen=True)
class Config:
    """Everything a run depends on, as plain values. None means "the recipe's value"."""
    # what to train, on what, where to
    model: str = "b0"
    data: str = "digits"
    data_dir: str | None = None
    out: str | None = None               # run directory; default runs/<data>-<model>-s<seed>
    recipe: str = "fast"
    seed: int = 0
    stem_stride: int = 2
    in_chans: int | None = None          # default: the data's (or the pretrained model's)
    pretrained: str | None = None        # model file or weights to fine-tune from
    subset: int | None = None            # use only this many training images
    val_subset: int | None = None
    # recipe values (see recipes.py); None: take the recipe's
    epochs: int | None = None
    batch_size: int | None = None        # global batch (all ranks, all micro-batches)
    lr: float | None = None              # None: lr_per_256 * batch_size / 256
    lr_per_256: float | None = None
    optimizer: str | None = None
    momentum: float | None = None
    alpha: float | None = None
    eps: float | None = None
    weight_decay: float | None = None
    decay_bn_bias: bool | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    warmup_start: float | None = None
    decay_rate: float | None = None
    decay_epochs: float | None = None
    label_smoothing: float | None = None
    ema_decay: float | None = None
    drop_path_rate: float | None = None
    autoaugment: str | None = None        # none, autoaugment or randaugment
    flip: bool | None = None
    crop_padding: int | None = None
    cutout: int | None = None
    grad_clip: float | None = None
    pretrained_lr_scale: float | None = None
    # speed and memory
    device: str = "auto"                 # auto: cuda if available, else cpu
    precision: str = "auto"              # auto: bf16 on GPUs that have it, else fp16; fp32 on CPU
    compile: bool = False
    channels_last: bool = True
    grad_checkpointing: bool = False
    memory_budget: str | float | None = None  # bytes or "8GB"; default: free CUDA memory
    sync_bn: bool = False
    workers: int = 4
    eval_batch_size: int = 256
    # safety and output
    resume: bool = False
    checkpoint_minutes: float = 10.0
    checkpoint_steps: int = 0            # also checkpoint every N steps (0: off)
    skip_nonfinite: bool = False
    quiet: bool = False

    def as_dict(self) -> dict:
        return asdict(self)


# fields that change how a run is executed or logged, never its numbers
RUNTIME_FIELDS = {"resume", "quiet", "device", "workers", "checkpoint_minutes",
                  "checkpoint_steps", "compile", "eval_batch_size", "memory_budget"}


# -- configuration -----------------------------------------------------------------------------

def read_config_file(path: str | os.PathLike) -> dict:
    """A JSON or TOML file of config keys (TOML: top level or a [train] table)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such config file: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            values = tomllib.loads(text)
            values = values.get("train", values)
        else:
            values = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ValueError(f"cannot parse config file {path}: {exc}".splitlines()[0]) from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold an object of config keys")
    return {k.replace("-", "_"): v for k, v in values.items()}


def make_config(config=None, **overrides) -> Config:
    """Config from a Config, a dict or a config file path, then keyword overrides."""
    if config is None:
        values = {}
    elif isinstance(config, Config):
        values = config.as_dict()
    elif isinstance(config, dict):
        values = dict(config)
    else:
        values = read_config_file(config)
    values.update(overrides)
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config key(s): {', '.join(unknown)}")
    return Config(**values)


def resolve(cfg: Config) -> Config:
    """Fill recipe values, the lr and the run directory; check every value."""
    recipe = get_recipe(cfg.recipe)
    filled = {k: getattr(recipe, k) for k in RECIPE_FIELDS if getattr(cfg, k) is None}
    cfg = replace(cfg, **filled)
    if cfg.lr is None:
        scale = cfg.pretrained_lr_scale if cfg.pretrained else 1.0
        cfg = replace(cfg, lr=cfg.lr_per_256 * cfg.batch_size / 256 * scale)
    if cfg.out is None:
        cfg = replace(cfg, out=str(Path("runs") / f"{_slug(cfg.data)}-{_slug(cfg.model)}-s{cfg.seed}"))
    _check(cfg)
    return cfg


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in str(text)).strip("_")


def _check(cfg: Config) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise ValueError(message)
    need(isinstance(cfg.epochs, int) and cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(isinstance(cfg.batch_size, int) and cfg.batch_size >= 1,
         f"batch_size must be >= 1, got {cfg.batch_size}")
    need(cfg.lr >= 0 and math.isfinite(cfg.lr), f"lr must be >= 0, got {cfg.lr}")
    need(cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}; choose {', '.join(OPTIMIZERS)}")
    need(cfg.schedule in SCHEDULES, f"unknown schedule {cfg.schedule!r}; choose {', '.join(SCHEDULES)}")
    need(cfg.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    need(cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    need(cfg.schedule != "step" or cfg.decay_epochs > 0, "schedule 'step' needs decay_epochs > 0")
    need(0 <= cfg.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    need(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    need(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    need(cfg.subset is None or cfg.subset >= 1, f"subset must be >= 1, got {cfg.subset}")
    need(cfg.val_subset is None or cfg.val_subset >= 1, f"val_subset must be >= 1, got {cfg.val_subset}")
    need(cfg.stem_stride in (1, 2), f"stem_stride must be 1 or 2, got {cfg.stem_stride}")
    need(cfg.checkpoint_minutes > 0, f"checkpoint_minutes must be > 0, got {cfg.checkpoint_minutes}")
    need(cfg.checkpoint_steps >= 0, f"checkpoint_steps must be >= 0, got {cfg.checkpoint_steps}")
    need(cfg.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    parse_bytes(cfg.memory_budget)
    model_spec(cfg.model, stem_stride=cfg.stem_stride)  # a bad name fails before data loads
    if cfg.pretrained and not Path(cfg.pretrained).exists():
        raise FileNotFoundError(f"no such pretrained weights file: {cfg.pretrained}")
    if cfg.data_dir and not Path(cfg.data_dir).exists():
        raise FileNotFoundError(f"no such data directory: {cfg.data_dir}")


# -- devices, precision, distributed -------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """torchrun sets RANK / WORLD_SIZE / LOCAL_RANK: one process per GPU (or CPU worker)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device_name)
    if world <= 1:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return Dist(), device
    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"  # CPU autocast is slower than fp32 for convolutions on most CPUs


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def all_reduce_sum(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    if dist.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# -- model ---------------------------------------------------------------------------------------

def build_model(cfg: Config, num_classes: int, in_chans: int, log) -> nn.Module:
    model = create_model(cfg.model, num_classes, drop_path_rate=cfg.drop_path_rate,
                         stem_stride=cfg.stem_stride, in_chans=in_chans)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained, num_classes, log)
    return model


def pretrained_in_chans(path: str) -> int | None:
    """The input channels of an effscale model file (None for foreign weights: assume 3)."""
    try:
        _, meta = ckpt.read_model_file(path)
    except ValueError:
        return None
    return int(meta.get("in_chans", 3))


def load_pretrained(model: nn.Module, path: str, num_classes: int, log) -> None:
    """Weights from an effscale model file (EMA if present) or, through effscale.load_weights,
    any format it understands. The classifier is replaced when the class count differs."""
    try:
        tensors, meta = ckpt.read_model_file(path)
        ema = {k[len(ckpt.EMA_PREFIX):]: v for k, v in tensors.items()
               if k.startswith(ckpt.EMA_PREFIX)}
        state = ema or {k: v for k, v in tensors.items() if not k.startswith(ckpt.EMA_PREFIX)}
        source_classes = int(meta["num_classes"])
    except ValueError:
        from .weights import load_weights  # foreign formats (timm, torchvision, TF ports)
        source = load_weights(path)
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        source_classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
    if source_classes != num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"{path} does not match {model.spec.name}: "
                         f"{len(missing)} missing, {len(unexpected)} unexpected tensors "
                         f"(e.g. {(missing + unexpected)[0]})")
    if source_classes != num_classes:
        model.reset_classifier(num_classes)
    log(f"fine-tuning from {path} ({source_classes} -> {num_classes} classes)")


# -- one optimizer step, with micro-batching and OOM retry -----------------------------------------

def forward_backward(model, images, labels, *, micro_batch: int, criterion, amp, scaler,
                     no_sync=None) -> torch.Tensor:
    """Gradients of the mean loss over the whole batch, accumulated over micro-batches.
    Each chunk's mean loss is weighted by its share of the batch, so the sum equals the
    full-batch mean for any split. DDP all-reduces only on the last chunk."""
    n = images.shape[0]
    chunks = list(zip(images.split(micro_batch), labels.split(micro_batch)))
    total = torch.zeros((), device=images.device)
    for i, (x, y) in enumerate(chunks):
        sync = i == len(chunks) - 1 or no_sync is None
        with (contextlib.nullcontext() if sync else no_sync()), amp:
            loss = criterion(model(x), y) * (x.shape[0] / n)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        total += loss.detach().float()
    return total


def step_with_retry(model, images, labels, *, micro_batch: int, optimizer, log, **kwargs):
    """forward_backward; on a CUDA out-of-memory error retry the same batch with half the
    micro-batch (gradients of the failed attempt are dropped, so nothing is counted twice)."""
    while True:
        try:
            return forward_backward(model, images, labels, micro_batch=micro_batch, **kwargs), micro_batch
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if micro_batch == 1:
                raise
            micro_batch = max(1, micro_batch // 2)
            log(f"warning: out of memory; retrying this step with micro-batch {micro_batch}")


# -- evaluation ----------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_model(model, loader, *, device, amp, channels_last=False, tta_flip=False,
                   dist: Dist = Dist()) -> dict:
    """top-1 / top-5 (percent), mean loss and image count, summed over ranks."""
    was_training = model.training
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp:
            logits = model(images).float()
            if tta_flip:  # average probabilities of the image and its mirror
                probs = (logits.softmax(1) + model(images.flip(3)).float().softmax(1)) / 2
                logits = probs.log()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(1).sum().item()
        count += labels.numel()
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count],
                                                         dist, device)
    model.train(was_training)
    count = max(count, 1)
    return dict(top1=100 * correct1 / count, top5=100 * correct5 / count,
                loss=loss_sum / count, n=int(count))


# -- run directory -------------------------------------------------------------------------------

def write_metrics(path: Path, history: list[dict]) -> None:
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(history)
    atomic_write(path, write)


def read_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- progress ------------------------------------------------------------------------------------

class Progress:
    """A tqdm bar per epoch on a terminal; plain lines otherwise (or with quiet)."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled = enabled
        self.bar_ok = enabled and not quiet and sys.stderr.isatty()
        self.bar = None

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def start(self, epoch: int, epochs: int, total: int, done: int) -> None:
        if self.bar_ok:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{epochs}",
                            unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, loss: float, images_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{images_per_s:.0f}", refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def tensorboard_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: metrics.csv is the record
        return None
    return SummaryWriter(str(out / "tensorboard"))


# -- train ---------------------------------------------------------------------------------------

def train(config=None, **overrides) -> dict:
    """Train a model; returns the summary (also written to <out>/summary.json).

    `config` is a Config, a dict or a JSON/TOML file; keyword overrides win. With
    resume=True and an existing run directory the saved config is the base (overrides still
    win) and training continues exactly where state.pt left it.
    """
    from .data import load_data, make_loader

    cfg = resolve(make_config(config, **overrides))
    out = Path(cfg.out)
    if cfg.resume and (out / "config.json").is_file():
        cfg = _resumed_config(out, config, overrides)

    dist, device = setup_distributed(cfg.device)
    progress = Progress(dist.main, cfg.quiet)
    log = progress.log
    state_path = out / "state.pt"
    state = read_state(state_path) if cfg.resume and state_path.is_file() else None
    if cfg.resume and state is None:
        log(f"resume: no state in {out}, starting from scratch")
    if state is not None and state["epoch"] >= cfg.epochs and (out / "summary.json").is_file():
        log(f"{out} already finished")
        return json.loads((out / "summary.json").read_text())
    if state is None and dist.main and (out / "state.pt").exists():
        raise ValueError(f"{out} already holds a run; use --resume to continue it or another --out")
    seed_everything(cfg.seed)  # the same initial weights on every rank

    # data: in-memory datasets live on the device as uint8 and are augmented there
    data = load_data(cfg.data, data_dir=cfg.data_dir, device=device if _in_memory(cfg.data) else "cpu",
                     subset=cfg.subset, val_subset=cfg.val_subset, seed=cfg.seed)
    info = data.info
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
    amp = autocast(device, precision)

    # model, optionally from pretrained weights
    in_chans = cfg.in_chans or (pretrained_in_chans(cfg.pretrained) if cfg.pretrained else None) \
        or info.in_chans
    model = build_model(cfg, info.num_classes, in_chans, log)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    resolution = model.spec.resolution
    if cfg.sync_bn and dist.world_size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)  # NHWC: faster convs on tensor cores
    raw_model = model  # the module whose weights we save; DDP/compile wrap it below

    optimizer = create_optimizer(model, cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum,
                                 alpha=cfg.alpha, eps=cfg.eps, weight_decay=cfg.weight_decay,
                                 decay_bn_bias=cfg.decay_bn_bias)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    ema = ModelEma(raw_model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

    # memory plan: the largest micro-batch that fits (CPU: report only)
    per_rank_batch = cfg.batch_size // dist.world_size
    if per_rank_batch * dist.world_size != cfg.batch_size:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {dist.world_size} ranks")
    memory = plan(cfg.model, per_rank_batch, precision=precision,
                  grad_checkpointing=cfg.grad_checkpointing, optimizer=cfg.optimizer,
                  ema=ema is not None, num_classes=info.num_classes, stem_stride=cfg.stem_stride,
                  in_chans=in_chans, memory_budget=cfg.memory_budget, device=device)
    log(memory.describe())
    if not memory.fits:
        log("warning: the estimate exceeds the memory budget even at micro-batch 1; trying anyway")
    micro_batch = memory.micro_batch

    # state to resume from, or a fresh start
    epoch, start_batch, step = 0, 0, 0
    history: list[dict] = []
    best_top1, best_epoch, elapsed = -1.0, 0, 0.0
    epoch_sums = dict(loss=0.0, batches=0, images=0, seconds=0.0)
    if state is not None:
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        history = list(state["history"])
        best_top1, best_epoch, elapsed = state["best_top1"], state["best_epoch"], state["elapsed"]
        epoch_sums = dict(state["epoch_sums"])
        micro_batch = min(micro_batch, state.get("micro_batch", micro_batch))
        log(f"resumed {out} at epoch {epoch + 1}, batch {start_batch}")
    elif dist.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", cfg.as_dict())
    if dist.main and history:
        write_metrics(out / "metrics.csv", history)  # a kill may have left it behind state.pt

    train_model = model
    if dist.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    no_sync = train_model.no_sync if dist.world_size > 1 else None
    if cfg.compile:
        train_model = torch.compile(train_model)

    augment = _augment(cfg)
    channels = in_chans if in_chans != info.in_chans else None
    loader_kw = dict(resolution=resolution, seed=cfg.seed, channels=channels, rank=dist.rank,
                     world_size=dist.world_size, device=device)
    val_loader = make_loader(data.val, batch_size=cfg.eval_batch_size, train=False, epoch=0,
                             **loader_kw)
    steps_per_epoch = len(make_loader(data.train, batch_size=per_rank_batch, train=True, epoch=0,
                                      augment=augment, **loader_kw))
    schedule = dict(peak=cfg.lr, steps_per_epoch=steps_per_epoch, epochs=cfg.epochs,
                    schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                    warmup_start=cfg.warmup_start, decay_rate=cfg.decay_rate,
                    decay_epochs=cfg.decay_epochs)
    meta = dict(dataset=cfg.data, class_names=list(info.class_names), mean=list(info.mean),
                std=list(info.std), data_dir=cfg.data_dir, recipe=cfg.recipe)
    board = tensorboard_writer(out) if dist.main else None

    def save_state(epoch_: int, batch_: int, finished: bool = False) -> None:
        """The commit point. Every rank takes part (RNG states are gathered); rank 0 writes."""
        rngs = [rng_state()]
        if dist.world_size > 1:  # gathered as bytes: all_gather_object won't unpickle tensors
            import io
            buffer = io.BytesIO()
            torch.save(rngs[0], buffer)
            blobs = [None] * dist.world_size
            torch.distributed.all_gather_object(blobs, buffer.getvalue())
            rngs = [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]
        if not dist.main:
            return
        snapshot = dict(
            version=1, epoch=epoch_, batch=batch_, step=step, finished=finished,
            model=_cpu(raw_model.state_dict()), ema=ema.state_dict() if ema else None,
            optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler else None,
            rng=rngs, history=history, best_top1=best_top1, best_epoch=best_epoch,
            elapsed=elapsed + time.monotonic() - started, epoch_sums=dict(epoch_sums),
            micro_batch=micro_batch)
        atomic_write(state_path, lambda tmp: torch.save(snapshot, tmp))

    def save_model(path: Path, **extra) -> None:
        ckpt.save_model_file(path, raw_model, ckpt.model_meta(raw_model, **meta, **extra),
                             ema=ema.module if ema else None)

    # ---- the loop ----
    # RNG last, after every setup call that might draw from it: drop-path and dropout masks
    # (and any augmentation drawn from the global RNG) continue exactly where they stopped
    if state is not None:
        rngs = state["rng"]
        set_rng_state(rngs[dist.rank] if dist.rank < len(rngs) else rngs[0])
    else:
        seed_everything(cfg.seed + dist.rank)  # ranks differ in masks, not in data order
    lr = lr_at(step, **schedule)
    started = time.monotonic()
    last_save = started
    train_model.train()
    while epoch < cfg.epochs:
        loader = make_loader(data.train, batch_size=per_rank_batch, train=True, epoch=epoch,
                             augment=augment, start_batch=start_batch, **loader_kw)
        progress.start(epoch, cfg.epochs, steps_per_epoch, start_batch)
        batch_index = start_batch
        t0 = time.perf_counter()  # images/s counts producing the batch (data) and the step
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            lr = lr_at(step, **schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr

            optimizer.zero_grad(set_to_none=True)
            loss, micro_batch = step_with_retry(
                train_model, images, labels, micro_batch=micro_batch, optimizer=optimizer,
                log=log, criterion=criterion, amp=amp, scaler=scaler, no_sync=no_sync)
            now = time.monotonic()
            due = (now - last_save >= 60 * cfg.checkpoint_minutes
                   or (cfg.checkpoint_steps and (step + 1) % cfg.checkpoint_steps == 0))
            # one collective per step: mean loss, and whether any rank wants a checkpoint
            loss_sum, due = all_reduce_sum([loss.item(), float(due)], dist, device)
            loss_value = loss_sum / dist.world_size
            if not math.isfinite(loss_value):
                optimizer.zero_grad(set_to_none=True)
                if not cfg.skip_nonfinite:
                    progress.close()
                    message = (f"non-finite loss ({loss_value}) at epoch {epoch + 1}, step {step}; "
                               f"stopped. {out} keeps the last good checkpoint; lower --lr, or "
                               f"pass --skip-nonfinite to skip such steps")
                    if dist.main:
                        _write_summary(out, cfg, raw_model, history, best_top1, best_epoch,
                                       elapsed + time.monotonic() - started, "nonfinite")
                    raise NonFiniteLossError(message)
                log(f"warning: non-finite loss at step {step}: step skipped")
            else:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if ema is not None:
                    ema.update(raw_model)
                epoch_sums["loss"] += loss_value
                epoch_sums["batches"] += 1
            step += 1
            batch_index += 1
            seconds = time.perf_counter() - t0
            t0 = time.perf_counter()
            epoch_sums["images"] += images.shape[0] * dist.world_size
            epoch_sums["seconds"] += seconds
            progress.update(loss_value, images.shape[0] * dist.world_size / max(seconds, 1e-9))

            if due and batch_index < steps_per_epoch:
                save_state(epoch, batch_index)
                last_save = time.monotonic()
        progress.close()

        # end of epoch: evaluate (EMA weights when there are any), record, checkpoint
        val = evaluate_model(ema.module if ema else model, val_loader, device=device, amp=amp,
                             channels_last=cfg.channels_last, dist=dist)
        raw_top1 = (evaluate_model(model, val_loader, device=device, amp=amp,
                                   channels_last=cfg.channels_last, dist=dist)["top1"]
                    if ema else val["top1"])
        row = dict(epoch=epoch + 1,
                   train_loss=epoch_sums["loss"] / max(epoch_sums["batches"], 1),
                   val_loss=val["loss"], top1=val["top1"], top5=val["top5"], lr=lr,
                   images_per_s=epoch_sums["images"] / max(epoch_sums["seconds"], 1e-9),
                   wall_time=elapsed + time.monotonic() - started, raw_top1=raw_top1)
        history.append(row)
        log(f"epoch {epoch + 1}/{cfg.epochs}  train_loss {row['train_loss']:.4f}  "
            f"val_loss {row['val_loss']:.4f}  top1 {row['top1']:.2f}  top5 {row['top5']:.2f}  "
            f"lr {lr:.3g}  {row['images_per_s']:.0f} img/s  {row['wall_time']:.0f}s")
        if board is not None:
            for key in ("train_loss", "val_loss", "top1", "top5", "lr", "images_per_s"):
                board.add_scalar(key, row[key], epoch + 1)
            board.flush()
        is_best = val["top1"] > best_top1
        if is_best:
            best_top1, best_epoch = val["top1"], epoch + 1
        epoch += 1
        start_batch = 0
        epoch_sums = dict(loss=0.0, batches=0, images=0, seconds=0.0)
        if dist.main:  # model files first, then the commit point, then the metrics view
            save_model(out / "last.safetensors", epoch=epoch, top1=val["top1"])
            if is_best:
                save_model(out / "best.safetensors", epoch=epoch, top1=val["top1"])
        save_state(epoch, 0, finished=epoch == cfg.epochs)
        last_save = time.monotonic()
        if dist.main:
            write_metrics(out / "metrics.csv", history)

    elapsed += time.monotonic() - started
    checksums = None
    if dist.world_size > 1:  # every rank must end with the same weights: record each one's sum
        mine = float(sum(p.detach().double().sum().item() for p in raw_model.parameters()))
        checksums = [None] * dist.world_size
        torch.distributed.all_gather_object(checksums, mine)
    summary = None
    if dist.main:
        summary = _write_summary(out, cfg, raw_model, history, best_top1, best_epoch, elapsed,
                                 "finished", micro_batch=micro_batch,
                                 accum_steps=math.ceil(per_rank_batch / micro_batch),
                                 world_size=dist.world_size, param_checksums=checksums)
        if board is not None:
            board.close()
    if dist.world_size > 1:
        box = [summary]
        torch.distributed.broadcast_object_list(box, src=0)
        summary = box[0]
    return summary


def _resumed_config(out: Path, config, overrides: dict) -> Config:
    """The saved config, with what the caller gave explicitly on top (a warning when that
    changes a value that affects the results)."""
    saved = json.loads((out / "config.json").read_text())
    if config is None:
        given = {}
    elif isinstance(config, Config):
        defaults = Config()
        given = {k: v for k, v in config.as_dict().items() if v != getattr(defaults, k)}
    elif isinstance(config, dict):
        given = dict(config)
    else:
        given = read_config_file(config)
    given.update(overrides)
    cfg = resolve(make_config(saved, **given))
    changed = sorted(k for k in given if k not in RUNTIME_FIELDS and saved.get(k) != getattr(cfg, k))
    if changed:
        warnings.warn(f"resuming {out} with changed {', '.join(changed)}: the run will not "
                      f"match an uninterrupted one", stacklevel=3)
    return cfg


def _in_memory(data_name: str) -> bool:
    return not str(data_name).startswith("imagefolder:")


def _augment(cfg: Config):
    """The dataset's default augmentation, with what the config sets explicitly on top."""
    from .data import default_augment
    wanted = dict(flip=cfg.flip, crop_padding=cfg.crop_padding, cutout=cfg.cutout,
                  autoaugment=cfg.autoaugment)
    return replace(default_augment(cfg.data), **{k: v for k, v in wanted.items() if v is not None})


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _write_summary(out: Path, cfg: Config, model, history, best_top1, best_epoch, wall_time,
                   status, **extra) -> dict:
    from .measure import profile
    prof = profile(model)
    final = history[-1] if history else {}
    rates = [r["images_per_s"] for r in history]
    summary = dict(model=cfg.model, data=cfg.data, seed=cfg.seed, recipe=cfg.recipe,
                   epochs=len(history), final_top1=final.get("top1"), best_top1=best_top1 if history else None,
                   best_epoch=best_epoch, final_top5=final.get("top5"),
                   final_val_loss=final.get("val_loss"), params=prof.params, macs=prof.macs,
                   resolution=prof.resolution, wall_time_s=wall_time,
                   images_per_s=sum(rates) / len(rates) if rates else None, status=status,
                   out=str(out), **extra)
    write_json(out / "summary.json", summary)
    return summary


# -- evaluate a checkpoint -------------------------------------------------------------------------

def evaluate(checkpoint, data=None, *, data_dir=None, tta_flip: bool = False, use_ema: bool = True,
             batch_size: int = 256, device: str = "auto", subset=None) -> dict:
    """top-1 / top-5 (percent), loss and image count of a model file or run directory on a
    dataset's validation split (default: the dataset it was trained on)."""
    from .data import load_data, make_loader
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                          else "cpu" if device == "auto" else device)
    model, meta = ckpt.load_model_file(checkpoint, use_ema=use_ema, map_location=device)
    data = data or meta.get("dataset")
    if not data:
        raise ValueError(f"{checkpoint} does not say which dataset it was trained on; pass --data")
    dataset = load_data(data, data_dir=data_dir or meta.get("data_dir"),
                        device=device if _in_memory(data) else "cpu", val_subset=subset)
    if dataset.info.num_classes != model.num_classes:
        raise ValueError(f"{data} has {dataset.info.num_classes} classes but the model "
                         f"predicts {model.num_classes}")
    channels = model.in_chans if model.in_chans != dataset.info.in_chans else None
    loader = make_loader(dataset.val, batch_size=batch_size, resolution=model.spec.resolution,
                         train=False, seed=0, epoch=0, channels=channels, device=device)
    amp = autocast(device, resolve_precision("auto", device))
    result = evaluate_model(model, loader, device=device, amp=amp, tta_flip=tta_flip)
    return dict(result, weights=meta["weights"], model=meta["model"], data=data)
