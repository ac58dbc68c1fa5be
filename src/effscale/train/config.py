"""What a run depends on: the `Config` schema, reading it (dict, JSON/TOML file, keywords),
filling the recipe's values and checking every value before anything is loaded."""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..model.memory import parse_bytes
from ..model.names import model_spec
from ..data.augment import AUTOAUGMENT_POLICIES
from ..data.sources import DATASETS
from .recipes import OPTIMIZERS, RECIPE_FIELDS, RECIPES, SCHEDULES, fit_batch, get_recipe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def flag(default, help: str | None = None, *, choices: tuple | None = None):
    """A Config field that is also an `effscale train` flag: its help text and, for the
    enumerations, the values it may take (listed in the CLI's help; `_check` enforces them)."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Config:
    """Everything a run depends on, as plain values. None means "the recipe's value"."""
    # what to train, on what, where to
    model: str = flag("b0", 'model name, e.g. b0, b3, b0@phi=-2,res=64 (default b0)')
    data: str = flag("digits", 'the dataset (default digits)', choices=DATASETS)
    data_dir: str | None = flag(None,
                                "where the dataset files are (default: the dataset's usual "
                                'place)')
    out: str | None = flag(None, 'run directory (default runs/<data>-<model>-s<seed>)')
    recipe: str = flag("fast",
                       'the training recipe (default fast; train/recipes.py)',
                       choices=tuple(RECIPES))
    seed: int = flag(0, 'random seed (default 0)')
    stem_stride: int = flag(2, "1 keeps small images' resolution through the stem (default 2)")
    in_chans: int | None = flag(None, "model input channels (default: the data's)")
    pretrained: str | None = flag(None, 'fine-tune from this model file or weights file')
    subset: int | None = flag(None, 'train on this many images only')
    val_subset: int | None = flag(None, 'validate on this many images only')
    # recipe values (see recipes.py); None: take the recipe's
    epochs: int | None = flag(None, "epochs (default: the recipe's)")
    batch_size: int | None = flag(None,
                                  'global batch size over all ranks and micro-batches (default: '
                                  "the recipe's, halved for small data; see "
                                  '--min-steps-per-epoch)')
    lr: float | None = flag(None, 'peak learning rate (default: lr-per-256 x batch / 256)')
    lr_per_256: float | None = flag(None, 'peak learning rate per 256 images')
    optimizer: str | None = flag(None, "the optimizer (default: the recipe's)", choices=OPTIMIZERS)
    momentum: float | None = flag(None)
    alpha: float | None = flag(None, 'RMSprop squared-gradient decay')
    eps: float | None = flag(None)
    weight_decay: float | None = flag(None)
    decay_bn_bias: bool | None = flag(None, 'apply weight decay to BN weights and biases')
    schedule: str | None = flag(None,
                                'the learning-rate schedule after warm-up',
                                choices=SCHEDULES)
    warmup_epochs: float | None = flag(None)
    warmup_start: float | None = flag(None, 'warm-up starts at this x peak lr')
    decay_rate: float | None = flag(None)
    decay_epochs: float | None = flag(None)
    label_smoothing: float | None = flag(None)
    ema_decay: float | None = flag(None, 'weight EMA decay, 0 for none')
    drop_path_rate: float | None = flag(None, 'stochastic depth rate')
    autoaugment: str | None = flag(None,
                                   'an augmentation policy from torchvision',
                                   choices=AUTOAUGMENT_POLICIES)
    flip: bool | None = flag(None, 'random horizontal flips')
    crop_padding: int | None = flag(None, 'random crop padding in native pixels')
    cutout: int | None = flag(None, 'cutout square side in native pixels, 0 for none')
    grad_clip: float | None = flag(None, 'max gradient norm, 0 for none')
    pretrained_lr_scale: float | None = flag(None, 'lr multiplier when fine-tuning')
    warmup_fraction: float | None = flag(None,
                                         "the warm-up lasts at least this fraction of the run's "
                                         'steps')
    momentum_at_peak: float | None = flag(None,
                                          'momentum at the peak lr, cycled against it (fast: '
                                          '0.85)')
    min_steps_per_epoch: int | None = flag(None,
                                           'halve the default batch until an epoch has this many '
                                           'steps')
    zero_init: bool | None = flag(None,
                                  'residual blocks start as the identity, the classifier at 0 '
                                  '(fast: on)')
    # speed and memory
    device: str = flag("auto", 'auto, cpu, cuda, cuda:1 ...')
    precision: str = flag("auto", 'auto: bf16 (or fp16) on GPU, fp32 on CPU', choices=PRECISIONS)
    compile: bool = flag(False, 'torch.compile the model')
    channels_last: bool = flag(True, 'NHWC memory format (default on)')
    grad_checkpointing: bool = flag(False, 'recompute blocks in backward to save memory')
    memory_budget: str | float | None = flag(None,
                                             'plan micro-batches for this much memory, e.g. 8GB')
    sync_bn: bool = flag(False, 'synchronise BatchNorm statistics across ranks')
    workers: int | None = flag(None, 'data worker processes for imagefolder')
    eval_batch_size: int = flag(256)
    # safety and output
    resume: bool = flag(False, 'continue the run in --out')
    checkpoint_minutes: float = flag(10.0, 'checkpoint at least this often (default 10)')
    checkpoint_steps: int = flag(0, 'also checkpoint every N steps')
    skip_nonfinite: bool = flag(False, 'skip steps whose loss is NaN/inf instead of stopping')
    quiet: bool = flag(False, 'no progress bar: one line per epoch')

    def as_dict(self) -> dict:
        return asdict(self)


# fields that change how a run is executed or logged, never its numbers
RUNTIME_FIELDS = {"resume", "quiet", "device", "workers", "checkpoint_minutes",
                  "checkpoint_steps", "compile", "eval_batch_size", "memory_budget"}


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


def resolve(cfg: Config, train_size: int | None = None) -> Config:
    """Fill recipe values, the batch size, the lr and the run directory; check every value.

    An unset batch size is the recipe's, fitted to the data (`fit_batch`) once `train_size`
    is known; until then it and a batch-derived lr stay None. Resolving twice is harmless."""
    recipe = get_recipe(cfg.recipe)
    filled = {k: getattr(recipe, k) for k in RECIPE_FIELDS
              if getattr(cfg, k) is None and k != "batch_size"}
    cfg = replace(cfg, **filled)
    if cfg.batch_size is None and train_size is not None:
        cfg = replace(cfg, batch_size=fit_batch(recipe.batch_size, train_size,
                                                cfg.min_steps_per_epoch))
    if cfg.lr is None and cfg.batch_size is not None:
        scale = cfg.pretrained_lr_scale if cfg.pretrained else 1.0
        cfg = replace(cfg, lr=cfg.lr_per_256 * cfg.batch_size / 256 * scale)
    if cfg.out is None:
        cfg = replace(cfg, out=str(Path("runs") / f"{_slug(cfg.data)}-{_slug(cfg.model)}-s{cfg.seed}"))
    _check(cfg)
    return cfg


def run_config(config=None, overrides: dict | None = None) -> Config:
    """The resolved config of a train() call: on resume of an existing run directory, its
    saved config with what the caller gave explicitly on top."""
    overrides = overrides or {}
    cfg = resolve(make_config(config, **overrides))
    if cfg.resume and (Path(cfg.out) / "config.json").is_file():
        cfg = _resumed_config(Path(cfg.out), config, overrides)
    return cfg


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in str(text)).strip("_")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check(cfg: Config) -> None:
    _need(isinstance(cfg.epochs, int) and cfg.epochs >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    _need(cfg.batch_size is None or isinstance(cfg.batch_size, int) and cfg.batch_size >= 1,
          f"batch_size must be >= 1, got {cfg.batch_size}")
    _need(cfg.lr is None or cfg.lr >= 0 and math.isfinite(cfg.lr), f"lr must be >= 0, got {cfg.lr}")
    _need(cfg.optimizer in OPTIMIZERS, f"unknown optimizer {cfg.optimizer!r}; choose {', '.join(OPTIMIZERS)}")
    _need(cfg.schedule in SCHEDULES, f"unknown schedule {cfg.schedule!r}; choose {', '.join(SCHEDULES)}")
    _need(cfg.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    _need(cfg.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {cfg.warmup_epochs}")
    _need(0 <= cfg.warmup_fraction <= 1, f"warmup_fraction must be in [0, 1], got {cfg.warmup_fraction}")
    _need(cfg.momentum_at_peak is None or 0 <= cfg.momentum_at_peak < 1,
          f"momentum_at_peak must be in [0, 1), got {cfg.momentum_at_peak}")
    _need(cfg.schedule != "step" or cfg.decay_epochs > 0, "schedule 'step' needs decay_epochs > 0")
    _need(0 <= cfg.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {cfg.label_smoothing}")
    _need(0 <= cfg.ema_decay < 1, f"ema_decay must be in [0, 1), got {cfg.ema_decay}")
    _need(cfg.weight_decay >= 0, f"weight_decay must be >= 0, got {cfg.weight_decay}")
    _need(cfg.subset is None or cfg.subset >= 1, f"subset must be >= 1, got {cfg.subset}")
    _need(cfg.val_subset is None or cfg.val_subset >= 1, f"val_subset must be >= 1, got {cfg.val_subset}")
    _need(cfg.stem_stride in (1, 2), f"stem_stride must be 1 or 2, got {cfg.stem_stride}")
    _need(cfg.checkpoint_minutes > 0, f"checkpoint_minutes must be > 0, got {cfg.checkpoint_minutes}")
    _need(cfg.checkpoint_steps >= 0, f"checkpoint_steps must be >= 0, got {cfg.checkpoint_steps}")
    _need(cfg.workers is None or cfg.workers >= 0, f"workers must be >= 0, got {cfg.workers}")
    _need(cfg.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {cfg.eval_batch_size}")
    parse_bytes(cfg.memory_budget)
    model_spec(cfg.model, stem_stride=cfg.stem_stride)  # a bad name fails before data loads
    if cfg.pretrained and not Path(cfg.pretrained).exists():
        raise FileNotFoundError(f"no such pretrained weights file: {cfg.pretrained}")
    if cfg.data_dir and not Path(cfg.data_dir).exists():
        raise FileNotFoundError(f"no such data directory: {cfg.data_dir}")


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
                      f"match an uninterrupted one", stacklevel=4)
    return cfg
