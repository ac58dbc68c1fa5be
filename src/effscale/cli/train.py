"""`effscale train`: flags after timm's train.py, generated from train.Config (a flag per key,
its help and allowed values from the field's metadata); a --config file (JSON or TOML) gives
defaults, flags override it, the recipe fills the rest."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

# A Config annotation's flag type: bool first (a bool | None field is a switch), then int,
# float; anything else (str, "str | float | None" for a memory budget) is read as text.
_TYPES = (("bool", bool), ("int", int), ("float", float))


def _flag_type(annotation: str):
    return next((kind for word, kind in _TYPES if word in annotation.split(" | ")), str)


def add_parser(sub):
    from ..training.config import Config
    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a model; flags override --config, which overrides "
                                   "the recipe. Re-run with --resume to continue a run; "
                                   "--overwrite replaces what --out holds.")
    p.add_argument("--config", dest="config_file", default=None,
                   help="JSON or TOML file of config keys")
    for f in fields(Config):  # one flag per config key: the list cannot drift from the config
        flag, kind = "--" + f.name.replace("_", "-"), _flag_type(str(f.type))
        text, choices = f.metadata.get("help"), f.metadata.get("choices")
        if choices:
            text = f"{text + '; ' if text else ''}one of: {', '.join(choices)}"
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text)
    return p


# what a bare `effscale train` is told: the default model is B0 at 224 px, slow on a CPU
QUICK_MODEL = "--model b0@phi=-6,r=0.1652 --stem-stride 1"


def default_model_line(config_file, given: dict) -> str | None:
    """One line naming what will train when neither --model nor the --config file names a
    model (and no saved run is resumed, whose config says it); None otherwise."""
    from ..model.names import parse_name
    from ..training.config import read_config_file, run_config
    overrides = {k: v for k, v in given.items() if k != "wait"}  # train() takes wait apart
    try:
        if "model" in given or (config_file and "model" in read_config_file(config_file)):
            return None
        cfg = run_config(config_file, overrides)
    except (ValueError, OSError):  # train() reports it, in its own words
        return None
    if cfg.quiet or (cfg.resume and (Path(cfg.out) / "config.json").is_file()):
        return None  # --quiet asks for errors only
    return (f"no --model: training {cfg.model} at {parse_name(cfg.model).resolution} px on "
            f"{cfg.data} for {cfg.epochs} epochs (slow on a CPU: try {QUICK_MODEL})")


def run(args) -> int:
    from ..training.engine import NonFiniteLossError, train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config_file")}
    line = default_model_line(args.config_file, given)
    if line:
        import sys
        print(line, file=sys.stderr, flush=True)
    try:
        summary = train(args.config_file, **given)
    except NonFiniteLossError as exc:
        import sys
        print(f"effscale: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
