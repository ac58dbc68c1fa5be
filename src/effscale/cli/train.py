"""`effscale train`: flags after timm's train.py. Every flag is a key of train.Config; a
--config file (JSON or TOML) gives defaults, flags override it, the recipe fills the rest."""

from __future__ import annotations

import argparse
import json

# (flag, type, help); the config key is the flag with '-' -> '_'. Booleans get --no-X too.
FLAGS = [
    ("--model", str, "model name, e.g. b0, b3, b0@phi=-2,res=64 (default b0)"),
    ("--data", str, "digits, fashion-mnist, cifar10, cifar100 or imagefolder:PATH (default digits)"),
    ("--data-dir", str, "where the dataset files are (default: the dataset's usual place)"),
    ("--out", str, "run directory (default runs/<data>-<model>-s<seed>)"),
    ("--recipe", str, "seed, paper or fast (default fast); see effscale/recipes.py"),
    ("--epochs", int, "epochs (default: the recipe's)"),
    ("--batch-size", int, "global batch size over all ranks and micro-batches (default: the "
                          "recipe's, halved for small data; see --min-steps-per-epoch)"),
    ("--lr", float, "peak learning rate (default: lr-per-256 x batch / 256)"),
    ("--lr-per-256", float, "peak learning rate per 256 images"),
    ("--seed", int, "random seed (default 0)"),
    ("--optimizer", str, "rmsprop, rmsprop_tf, sgd or adamw"),
    ("--momentum", float, None), ("--alpha", float, "RMSprop squared-gradient decay"),
    ("--eps", float, None), ("--weight-decay", float, None),
    ("--decay-bn-bias", bool, "apply weight decay to BN weights and biases"),
    ("--schedule", str, "exponential, step or cosine"),
    ("--warmup-epochs", float, None), ("--warmup-start", float, "warm-up starts at this x peak lr"),
    ("--warmup-fraction", float, "the warm-up lasts at least this fraction of the run's steps"),
    ("--momentum-at-peak", float, "momentum at the peak lr, cycled against it (fast: 0.85)"),
    ("--min-steps-per-epoch", int, "halve the default batch until an epoch has this many steps"),
    ("--zero-init", bool, "residual blocks start as the identity, the classifier at 0 (fast: on)"),
    ("--decay-rate", float, None), ("--decay-epochs", float, None),
    ("--label-smoothing", float, None), ("--ema-decay", float, "weight EMA decay, 0 for none"),
    ("--drop-path-rate", float, "stochastic depth rate"),
    ("--autoaugment", str, "none, autoaugment or randaugment"),
    ("--flip", bool, "random horizontal flips"),
    ("--crop-padding", int, "random crop padding in native pixels"),
    ("--cutout", int, "cutout square side in native pixels, 0 for none"),
    ("--grad-clip", float, "max gradient norm, 0 for none"),
    ("--stem-stride", int, "1 keeps small images' resolution through the stem (default 2)"),
    ("--in-chans", int, "model input channels (default: the data's)"),
    ("--subset", int, "train on this many images only"),
    ("--val-subset", int, "validate on this many images only"),
    ("--pretrained", str, "fine-tune from this model file or weights file"),
    ("--pretrained-lr-scale", float, "lr multiplier when fine-tuning"),
    ("--device", str, "auto, cpu, cuda, cuda:1 ..."),
    ("--precision", str, "auto, fp32, bf16 or fp16 (auto: bf16/fp16 on GPU, fp32 on CPU)"),
    ("--compile", bool, "torch.compile the model"),
    ("--channels-last", bool, "NHWC memory format (default on)"),
    ("--grad-checkpointing", bool, "recompute blocks in backward to save memory"),
    ("--memory-budget", str, "plan micro-batches for this much memory, e.g. 8GB"),
    ("--sync-bn", bool, "synchronise BatchNorm statistics across ranks"),
    ("--workers", int, "data worker processes for imagefolder"),
    ("--eval-batch-size", int, None),
    ("--resume", bool, "continue the run in --out"),
    ("--checkpoint-minutes", float, "checkpoint at least this often (default 10)"),
    ("--checkpoint-steps", int, "also checkpoint every N steps"),
    ("--skip-nonfinite", bool, "skip steps whose loss is NaN/inf instead of stopping"),
    ("--quiet", bool, "no progress bar: one line per epoch"),
]


def add_parser(sub):
    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a model; flags override --config, which overrides "
                                   "the recipe. Re-run with --resume to continue a run.")
    p.add_argument("--config", dest="config_file", default=None,
                   help="JSON or TOML file of config keys")
    for flag, kind, text in FLAGS:
        if kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction,
                           default=argparse.SUPPRESS, help=text)
        else:
            p.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text)
    return p


def run(args) -> int:
    from ..train.engine import NonFiniteLossError, train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "handler", "config_file")}
    try:
        summary = train(args.config_file, **given)
    except NonFiniteLossError as exc:
        import sys
        print(f"effscale: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
