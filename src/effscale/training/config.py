"""What a run depends on: the `Config` schema, reading it (dict, JSON/TOML file, keywords),
filling the recipe's values and checking every value before anything is loaded."""

from __future__ import annotations

import difflib
import json
import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..model.memory import parse_bytes
from ..model.names import model_spec
from ..data.augment import AUTOAUGMENT_POLICIES
from ..data.sources import DATASETS
from .recipes import OPTIMIZERS, RECIPES, SCHEDULES, fit_batch, get_recipe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def flag(default, help: str | None = None, *, choices: tuple | None = None,
         range: str | None = None, neutral: bool = False):
    """A Config field that is also an `effscale train` flag: its help text, for the
    enumerations the values it may take (listed in the CLI's help) and for numbers the range
    they must lie in: "[0, 1)", "[0, 1]", ">= 0", "> 0" (`_check` enforces both). The field's
    annotation is its type (`check_types` enforces it, whatever the source of the value).
    `neutral`: the value changes how or where a run executes or logs, never its numbers
    (RUNTIME_FIELDS: what re-planning a study and resuming a run may ignore)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range,
                                            "neutral": neutral})


@dataclass(frozen=True)
class Config:
    """Everything a run depends on, as plain values. None means "the recipe's value"."""
    # what to train, on what, where to
    model: str = flag("b0", 'model name, e.g. b0, b3, b0@phi=-2,res=64 (default b0)')
    data: str = flag("digits", 'the dataset (default digits): a built-in name, imagefolder:PATH '
                     '(PATH/train/<class>/*, val/ optional), csv:FILE (columns path,label'
                     '[,split], paths relative to FILE) or webdataset:DIR (DIR/train/*.tar, '
                     'DIR/val/*.tar)', choices=DATASETS)
    data_dir: str | None = flag(None,
                                "where the dataset files are (default: the dataset's usual "
                                'place)', neutral=True)
    out: str | None = flag(None, 'run directory (default runs/<data>-<model>-s<seed>)',
                           neutral=True)
    recipe: str = flag("fast",
                       'the training recipe (default fast; training/recipes.py)',
                       choices=tuple(RECIPES))
    seed: int = flag(0, 'random seed (default 0)', range=">= 0")
    stem_stride: int = flag(2, "1 keeps small images' resolution through the stem (default 2)")
    in_chans: int | None = flag(None, "model input channels (default: the data's)",
                                range=">= 1")
    pretrained: str | None = flag(None, 'fine-tune from this model file or weights file')
    subset: int | None = flag(None, 'train on this many images only', range=">= 1")
    val_subset: int | None = flag(None, 'validate on this many images only', range=">= 1")
    val_fraction: float = flag(0.1,
                               'of each class, split off for validation (by --seed) where csv: '
                               'or imagefolder: data has no val split (default 0.1)',
                               range="(0, 1)")
    # recipe values (see recipes.py); None: take the recipe's
    epochs: int | None = flag(None, "epochs (default: the recipe's)", range=">= 1")
    batch_size: int | None = flag(None,
                                  'global batch size over all ranks and micro-batches (default: '
                                  "the recipe's, halved for small data; see "
                                  '--min-steps-per-epoch)', range=">= 1")
    lr: float | None = flag(None, 'peak learning rate (default: lr-per-256 x batch / 256)',
                            range=">= 0")
    lr_per_256: float | None = flag(None, 'peak learning rate per 256 images', range=">= 0")
    optimizer: str | None = flag(None, "the optimizer (default: the recipe's)", choices=OPTIMIZERS)
    momentum: float | None = flag(None, range="[0, 1)")
    alpha: float | None = flag(None, 'RMSprop squared-gradient decay', range="[0, 1)")
    eps: float | None = flag(None, range=">= 0")
    weight_decay: float | None = flag(None, range=">= 0")
    decay_bn_bias: bool | None = flag(None, 'apply weight decay to BN weights and biases')
    schedule: str | None = flag(None,
                                'the learning-rate schedule after warm-up',
                                choices=SCHEDULES)
    warmup_epochs: float | None = flag(None, range=">= 0")
    warmup_start: float | None = flag(None, 'warm-up starts at this x peak lr',
                                      range="[0, 1]")
    decay_rate: float | None = flag(None, range="[0, 1]")
    decay_epochs: float | None = flag(None, range=">= 0")
    label_smoothing: float | None = flag(None, range="[0, 1)")
    ema_decay: float | None = flag(None, 'weight EMA decay, 0 for none', range="[0, 1)")
    drop_path_rate: float | None = flag(None, 'stochastic depth rate', range="[0, 1)")
    autoaugment: str | None = flag(None,
                                   'an augmentation policy from torchvision',
                                   choices=AUTOAUGMENT_POLICIES)
    flip: bool | None = flag(None, 'random horizontal flips')
    crop_padding: int | None = flag(None, 'random crop padding in native pixels',
                                    range=">= 0")
    cutout: int | None = flag(None, 'cutout square side in native pixels, 0 for none',
                              range=">= 0")
    grad_clip: float | None = flag(None, 'max gradient norm, 0 for none', range=">= 0")
    pretrained_lr_scale: float | None = flag(None, 'lr multiplier when fine-tuning',
                                             range=">= 0")
    warmup_fraction: float | None = flag(None,
                                         "the warm-up lasts at least this fraction of the run's "
                                         'steps', range="[0, 1]")
    momentum_at_peak: float | None = flag(None,
                                          'momentum at the peak lr, cycled against it (fast: '
                                          '0.85)', range="[0, 1)")
    min_steps_per_epoch: int | None = flag(None,
                                           'halve the default batch until an epoch has this many '
                                           'steps', range=">= 0")
    zero_init: bool | None = flag(None,
                                  'residual blocks start as the identity, the classifier at 0 '
                                  '(fast: on)')
    # speed and memory
    device: str = flag("auto", 'auto, cpu, cuda, cuda:1 ...', neutral=True)
    precision: str = flag("auto", 'auto: bf16 (or fp16) on GPU, fp32 on CPU', choices=PRECISIONS)
    compile: bool = flag(False, 'torch.compile the model', neutral=True)
    channels_last: bool = flag(True, 'NHWC memory format (default on)')
    grad_checkpointing: bool = flag(False, 'recompute blocks in backward to save memory')
    memory_budget: str | float | None = flag(None,
                                             'plan micro-batches for this much memory, e.g. 8GB',
                                             neutral=True)
    sync_bn: bool = flag(False, 'synchronise BatchNorm statistics across ranks')
    workers: int | None = flag(None, 'processes decoding imagefolder:, csv: and Python data, '
                               'kept across epochs (default: the available cores)',
                               range=">= 0", neutral=True)
    eval_batch_size: int = flag(256, range=">= 1", neutral=True)
    # safety and output
    resume: bool = flag(False, 'continue the run in --out', neutral=True)
    overwrite: bool = flag(False,
                           'train into --out whatever it holds: replace the run there (one '
                           'line says what), leave other files alone', neutral=True)
    checkpoint_minutes: float = flag(10.0, 'checkpoint at least this often (default 10)',
                                     range="> 0", neutral=True)
    checkpoint_steps: int = flag(0, 'also checkpoint every N steps', range=">= 0",
                                 neutral=True)
    skip_nonfinite: bool = flag(False, 'skip steps whose loss is NaN/inf instead of stopping')
    quiet: bool = flag(False, 'no progress bar: one line per epoch', neutral=True)

    def as_dict(self) -> dict:
        return asdict(self)


# fields that change how a run is executed or logged, or where, never its numbers: marked
# once, on the field (flag(neutral=True))
RUNTIME_FIELDS = frozenset(f.name for f in fields(Config) if f.metadata["neutral"])


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
    """The one merge of a run's config: defaults < recipe < `config` (a Config, a dict or a
    JSON/TOML file path) < keyword overrides (the CLI's flags), every key known, every value
    of its field's type (`check_types`) and in its range (`_check`). Values that depend on
    the data (an unset batch size, and the lr from it) stay None until `fit_to_data`."""
    values = _given(config)
    unknown = sorted({k for k in [*values, *overrides] if k not in FIELD_TYPES}, key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), FIELD_TYPES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if len(unknown) == 1 and close else ""
        raise ValueError(f"unknown config key(s): {', '.join(_show(k) for k in unknown[:5])}"
                         f"{', ...' if len(unknown) > 5 else ''}{hint}")
    # each source whole: a bad value in a file is refused even where a flag overrides it
    given = {k: v for k, v in {**check_types(values), **check_types(overrides)}.items()
             if v is not None}  # None: not given (the recipe's, or the default)
    recipe = get_recipe(given.get("recipe", Config.recipe))
    cfg = Config(**{**{k: v for k, v in recipe.items() if k != "batch_size"}, **given})
    if cfg.out is None:
        cfg = replace(cfg, out=str(Path("runs") / f"{_slug(cfg.data)}-{_slug(cfg.model)}"
                                                  f"-s{cfg.seed}"))
    _check(cfg)
    return cfg


def _given(config) -> dict:
    """The values of a Config, a dict or a config file, as a dict."""
    if config is None:
        return {}
    if isinstance(config, Config):
        return config.as_dict()
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        return read_config_file(config)
    raise ValueError(f"config must be a Config, a dict or a JSON/TOML file path, got "
                     f"{_show(config)} ({type(config).__name__})")


def fit_to_data(cfg: Config, train_size: int) -> Config:
    """The one step that needs the data: an unset batch size becomes the recipe's, fitted to
    `train_size` images (`fit_batch`), and an unset lr lr_per_256 x batch / 256 (times
    pretrained_lr_scale when fine-tuning). Given values are kept; fitting twice is harmless."""
    if cfg.batch_size is None:
        cfg = replace(cfg, batch_size=fit_batch(get_recipe(cfg.recipe)["batch_size"],
                                                train_size, cfg.min_steps_per_epoch))
    if cfg.lr is None:
        scale = cfg.pretrained_lr_scale if cfg.pretrained else 1.0
        cfg = replace(cfg, lr=cfg.lr_per_256 * cfg.batch_size / 256 * scale)
        _check(cfg)  # a derived lr can still be out of range (inf from a huge batch)
    return cfg


# -- types: one check for every source (flags, JSON/TOML files, keywords, a study's train) -------

# a field's type, from its annotation: "int | None" -> ("int", "None")
FIELD_TYPES = {f.name: tuple(part.strip() for part in str(f.type).split("|"))
               for f in fields(Config)}
_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a number",
             "str": "a string"}
_INT_LIMIT = 2 ** 63  # what torch and numpy take; beyond it nothing a run does makes sense


def check_types(values: dict) -> dict:
    """`values` with every value checked against its field's type; ValueError (one line
    naming the key, the value and the type wanted) for the first that is not.

    Nothing is coerced: "0.1" is not a number and "no" not a boolean (flags arrive typed
    from argparse); a boolean is not a number; an integer is a number (lr: 1 is 1.0); None
    only where the field allows it. NumPy scalars become the plain Python number."""
    checked = {}
    for key, value in values.items():
        checked[key] = _typed(key, value, FIELD_TYPES[key])
    return checked


def _typed(key: str, value, kinds: tuple):
    if value is None and "None" in kinds:
        return None
    is_bool = isinstance(value, (bool, np.bool_))
    if "bool" in kinds and is_bool:
        return bool(value)
    if "int" in kinds and isinstance(value, numbers.Integral) and not is_bool:
        if not -_INT_LIMIT <= value < _INT_LIMIT:
            raise ValueError(f"config key {key!r}: {_show(value)} is out of range "
                             f"(integers lie within +-2**63)")
        return int(value)
    if "float" in kinds and isinstance(value, numbers.Real) and not is_bool:
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"config key {key!r}: expected a finite number, got "
                             f"{_show(value)} ({type(value).__name__})")
        return int(value) if isinstance(value, numbers.Integral) else number
    if "str" in kinds and isinstance(value, str):
        return value
    wanted = " or ".join(_EXPECTED[k] for k in kinds if k in _EXPECTED)
    if "int" in kinds and "float" not in kinds and isinstance(value, float) and not is_bool:
        wanted += " (a whole number, without a decimal point)"
    raise ValueError(f"config key {key!r}: expected {wanted}, got {_show(value)} "
                     f"({type(value).__name__})")


def _show(value, limit: int = 40) -> str:
    """A value as one short line, for messages."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run_config(config=None, overrides: dict | None = None) -> Config:
    """The config of a train() call, before it is fitted to the data: merged (`make_config`),
    or, on resume of an existing run directory, its saved config with what the caller gave on
    top; then the files it reads must exist."""
    overrides = overrides or {}
    cfg = make_config(config, **overrides)
    if cfg.resume and (Path(cfg.out) / "config.json").is_file():
        cfg = _resumed_config(Path(cfg.out), config, overrides)
    check_paths(cfg)
    return cfg


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in str(text)).strip("_")


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _check(cfg: Config) -> None:
    """Every value of a merged config (typed already: `make_config` checks what it is given):
    its field's range and choices, then the checks that need several values, the model name,
    the memory budget and the paths."""
    for f in fields(Config):
        value, choices, bounds = getattr(cfg, f.name), f.metadata["choices"], f.metadata["range"]
        if value is None:
            continue
        if choices and f.name not in ("data", "recipe") and value not in choices:
            raise ValueError(f"unknown {f.name} {value!r}; choose one of {', '.join(choices)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        if bounds and not _within(value, bounds):
            raise ValueError(f"{f.name} must be {'in ' if bounds[0] in '[(' else ''}{bounds}, "
                             f"got {value}")
    _need(cfg.out != "", "out must not be empty; give a directory")
    _need(cfg.schedule != "step" or cfg.decay_epochs > 0, "schedule 'step' needs decay_epochs > 0")
    _need(cfg.stem_stride in (1, 2), f"stem_stride must be 1 or 2, got {cfg.stem_stride}")
    try:
        parse_bytes(cfg.memory_budget)
    except (ValueError, OverflowError) as exc:
        if "memory_budget" in str(exc):
            raise
        raise ValueError(f"memory_budget {cfg.memory_budget!r} is not a size like 8GB, 512MiB "
                         f"or 80e9") from None
    try:
        model_spec(cfg.model, stem_stride=cfg.stem_stride)  # a bad name fails before data loads
    except (OverflowError, ZeroDivisionError):
        raise ValueError(f"model {_show(cfg.model)} scales the network out of range") from None


def check_paths(cfg: Config) -> None:
    """The files a run reads exist (before anything is built or written). Not part of
    `make_config`: re-planning a committed study compares values and must not need the
    machine that trained it."""
    if cfg.pretrained and not Path(cfg.pretrained).exists():
        raise FileNotFoundError(f"no such pretrained weights file: {_show(cfg.pretrained, 200)}")
    if cfg.data_dir and not Path(cfg.data_dir).exists():
        raise FileNotFoundError(f"no such data directory: {_show(cfg.data_dir, 200)}")


def _within(value: float, bounds: str) -> bool:
    """Whether `value` lies in `bounds`: "[0, 1)", "(0, 1]", ">= 0", "> 0" (see `flag`)."""
    if bounds[0] in "[(":
        low, high = (float(x) for x in bounds[1:-1].split(","))
        above = low <= value if bounds[0] == "[" else low < value
        return above and (value <= high if bounds[-1] == "]" else value < high)
    op, bound = bounds.split()
    return value >= float(bound) if op == ">=" else value > float(bound)


def _resumed_config(out: Path, config, overrides: dict) -> Config:
    """The saved config (merged and fitted when the run started), with what the caller gave
    on top; a warning names every given value that differs from the saved one and affects
    the results."""
    try:
        saved = json.loads((out / "config.json").read_text())
        if not isinstance(saved, dict):
            raise ValueError("not an object of config keys")
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot resume from {out / 'config.json'}: "
                         f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                         f"pass --overwrite instead of --resume to replace it") from None
    # what the caller gave: a Config is a whole config (every value it holds counts), a dict,
    # a file and the keywords only their own keys; compared with the saved run below
    given = {k: v for k, v in _given(config).items() if v is not None}
    given.update(overrides)
    cfg = make_config(saved, **given)
    changed = sorted(k for k in given
                     if k not in RUNTIME_FIELDS and saved.get(k) != getattr(cfg, k))
    if changed:
        warnings.warn(f"resuming {out} with changed {', '.join(changed)}: the run will not "
                      f"match an uninterrupted one", stacklevel=4)
    return cfg
