"""The configs of a study and a search, each field declared once with its command-line help.

`ExperimentConfig` holds what both experiments share (what to train on, how long, where the
runs execute); `StudyConfig` and `SearchConfig` add their own fields. `add_flags` generates
each command's flags from its dataclass and `given_flags` reads back what the user set, as
`effscale train`'s flags come from `training.config.Config`: the help cannot drift from the
defaults it states.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields

from ..model.names import FAST_ALPHA
from ..model.profile import STRATEGIES
from .executors import EXECUTORS
from .match_cost import COSTS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def option(default=None, help: str | None = None, *, type=str, choices=None, metavar=None,
           group: str | None = None, factory=None, shown=True):
    """A config field and its flag: `help` (a "{default}" in it shows the default; `shown`
    False when the default depends on other values and the help says how), the flag's `type`
    and `choices`, and `group` for flags that exclude each other. A field without help has no
    flag (config files and Python only)."""
    metadata = {"help": help, "type": type, "choices": choices, "metavar": metavar,
                "group": group, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ExperimentConfig:
    base: str = option("b0@phi=-6,r=0.1652", "base model name (default {default})")
    data: str = option("digits", "digits, fashion-mnist, cifar10, cifar100, imagefolder:PATH, "
                                 "csv:FILE or webdataset:DIR (default {default})")
    data_dir: str | None = option(None, "where the dataset files are")
    recipe: str | None = option(None, "training recipe: fast, seed, paper")
    seeds: int = option(2, "seeds per model (default {default})", type=int)
    epochs: int | tuple[int, ...] = option(10, "training epochs (default {default})")
    stem_stride: int = option(1, "1 keeps small images' resolution through the stem "
                                 "(default {default})", type=int, choices=(1, 2))
    subset: int | None = option(None, "train on this many images (stratified)", type=int)
    val_subset: int | None = option(None, "validate on this many images", type=int)
    batch_size: int | None = option(None, "batch size (default: the recipe's)", type=int)
    jobs: int | None = option(None, "runs in parallel: one per GPU, or N CPU processes",
                              type=int)
    executor: str = option("local", "local (default): this machine, --jobs processes; ray: "
                                    "one Ray task per run, on a local Ray or a cluster (pip "
                                    "install 'effscale[ray]'; the output directory must be on "
                                    "a filesystem every node sees)", choices=EXECUTORS)
    address: str | None = option(None, "ray: HOST:PORT or auto to join a running cluster "
                                       "(default: start a local Ray)")
    cpus_per_run: float | None = option(None, "ray: CPUs reserved per run, also its torch "
                                              "threads (default 1)", type=float)
    gpus_per_run: float | None = option(None, "ray: GPUs reserved per run (default 1 with "
                                              "--device cuda, else 0)", type=float)
    device: str | None = option(None, "auto, cpu, cuda, cuda:1 ...")
    precision: str | None = option(None, "auto: bf16 (or fp16) on GPU, fp32 on CPU",
                                   choices=PRECISIONS)
    out: str = option("runs/experiment", "output directory (default {default})")
    train: dict = option(help=None, factory=dict)  # any other training-engine keys

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class StudyConfig(ExperimentConfig):
    seeds: int = option(2, "seeds per model (default 2; 3 with --data fashion-mnist; 1 gives "
                           "no error bars)", type=int)
    epochs: int | tuple[int, ...] = option(10, "training epochs (default per dataset); "
                                               "several (e.g. 12,24,48) run the study at each "
                                               "budget under one directory, reported "
                                               "together")
    stem_stride: int = option(1, "1 keeps small images' resolution through the stem "
                                 "(default per dataset)", type=int, choices=(1, 2))
    base: str = option("b0@phi=-6,r=0.1652", "base model name (default per dataset)")
    preset: str | None = option(None, "seed: the CIFAR-10 study's setup (B0, recipe seed, 35 "
                                      "epochs, compound at B2's MACs) with FLOPs matched and "
                                      ">= 2 seeds", choices=("quick", "seed"))
    levels: tuple[float, ...] = option((), "FLOPs levels as multiples of the base's MACs, "
                                           "e.g. 2,4", group="levels", shown=False)
    phis: tuple[float, ...] = option((), "FLOPs levels as compound phi values, e.g. 1,2",
                                     group="levels", shown=False)
    strategies: tuple[str, ...] = option(STRATEGIES, f"comma list from "
                                                     f"{','.join(STRATEGIES)} (default all)",
                                         shown=False)
    lr: float | None = option(None, "peak learning rate (default: the recipe's per-256 value "
                                    "x batch / 256)", type=float)
    runs_per_gpu: int | None = option(None, "local executor: worker processes sharing each GPU "
                                            "(default: chosen from the memory planner's "
                                            "estimate, 1 for large models)", type=int)
    coefficients: tuple[float, float, float] | None = option(
        None, "compound coefficients alpha,beta,gamma (e.g. from effscale search)",
        metavar="A,B,G")
    fast_alpha: float = option(FAST_ALPHA, "alpha of the fast compound strategy, in [1/3, 1] "
                                           "(default {default}, Dollar et al.'s dWr)",
                               type=float)
    max_mismatch: float = option(0.02, "refuse models whose MACs (or, with --match, measured "
                                       "cost) miss their level by more than this fraction "
                                       "(default {default}; measured ratios vary by a few "
                                       "percent: 0.1 suits time)", type=float)
    out: str = option("runs/study", "study directory (default {default})")
    measure: bool = option(True, "do not measure each model's training and inference speed, "
                                 "batch-1 latency and peak memory (measured once per model "
                                 "on the study's device and kept in study.json; changes no "
                                 "result)", type=bool)
    match: str = option("macs", "what the depth-, width-, resolution-only and fast models are "
                                "matched on: macs (default) or the compound model's measured "
                                "train-time (ms per training image), latency (batch 1) or "
                                "memory (peak MiB of a training step), measured on --device "
                                "at the study's batch when planned and recorded in "
                                "study.json; with --executor ray it is measured on a Ray "
                                "worker with a run's resources", choices=COSTS, shown=False)

    def as_dict(self) -> dict:
        """The record's config; `match` only when it is not macs (records before it lack it)."""
        return {k: v for k, v in super().as_dict().items() if k != "match" or v != "macs"}


@dataclass(frozen=True)
class SearchConfig(ExperimentConfig):
    recipe: str | None = option("fast", "training recipe (default {default})")
    # the default: a 3 x 3 grid around the paper's point, trained like the quick study (10
    # epochs, every model ~98%) in about 5 minutes on 2 cores; widen it with
    # --alphas 1.0:1.4:0.1 --betas 1.0:1.2:0.05 (24 candidates) where there is time
    alphas: tuple[float, ...] = option((1.1, 1.2, 1.3), "grid: 1.0,1.1,1.2 or "
                                                        "START:STOP:STEP, inclusive (default "
                                                        "{default}; a wider one: 1.0:1.4:0.1)")
    betas: tuple[float, ...] = option((1.05, 1.1, 1.15), "grid (default {default}; a wider "
                                                         "one: 1.0:1.2:0.05)")
    tolerance: float = option(0.02, "allowed |alpha*beta^2*gamma^2/2 - 1| after rounding "
                                    "(default {default})", type=float)
    epochs: int = option(10, "proxy budget: epochs per candidate (default {default})",
                         type=int)
    subset: int | None = option(None, "proxy budget: training images", type=int)
    paper: bool = option(True, "do not train the paper's 1.2/1.1/1.15 for comparison",
                         type=bool)
    out: str = option("runs/search", "search directory (default {default})")


def _shown(value) -> str:
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_flags(parser, cls) -> None:
    """One flag per field of `cls` that has help: `--name-with-dashes`, typed, its default
    named in the help; a bool field that defaults to True becomes `--no-NAME`. Unset flags
    are absent from the parsed namespace (`given_flags`)."""
    groups: dict = {}
    for f in fields(cls):
        meta = f.metadata
        if meta.get("help") is None:
            continue
        default = f.default if f.default is not MISSING else None
        text = meta["help"].replace("{default}", _shown(default))
        where = parser
        if meta["group"]:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            where = groups[meta["group"]]
        name = f.name.replace("_", "-")
        if meta["type"] is bool:
            where.add_argument(f"--no-{name}" if default else f"--{name}", dest=f.name,
                               action="store_const", const=not default,
                               default=argparse.SUPPRESS, help=text)
            continue
        where.add_argument(f"--{name}", type=meta["type"], choices=meta["choices"],
                           metavar=meta["metavar"], default=argparse.SUPPRESS, help=text)


def given_flags(args, cls) -> dict:
    """{field: value} of the flags the user gave (the others are absent, not None)."""
    return {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}


def flag_keys(cls) -> tuple[str, ...]:
    """The fields that are flags, in declaration order."""
    return tuple(f.name for f in fields(cls) if f.metadata.get("help") is not None)
