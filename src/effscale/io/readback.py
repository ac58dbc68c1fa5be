"""Checking what effscale reads back before trusting it (torch-free).

Every JSON and CSV file effscale wrote and reads again (a run's summary.json, config.json and
metrics.csv; study.json and search.json; a model file's metadata) may have been hand-edited,
truncated or replaced. A reader here checks the form, the types and the ranges of what it
uses and raises ValueError with one line naming the file and the key, so that a corrupted
file ends a command with one line (exit 2) instead of a traceback deep in a table, or worse,
a table silently computed from wrong numbers.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

# A classifier this wide is already ~0.5 GB at B0's 1280 features; more than ImageNet-21k's
# 21,841 classes, and refused before a model (or anything else) is allocated for it.
MAX_CLASSES = 100_000
MAX_CHANNELS = 1024   # input channels of a model file
MAX_EPOCHS = 10 ** 6
MAX_COUNT = 10 ** 18  # parameters, MACs, images: beyond any real network or data set
PERCENT = (0, 100)

# (kind, low, high); a kind ending in "?" also takes null. "num" is a finite number, "float"
# any number (a diverged run's loss is NaN), "name" a single path component (it is joined
# under the directory: "../x" would send runs or reports elsewhere).
SUMMARY_FIELDS = {
    "model": ("str", None, None), "data": ("str", None, None), "recipe": ("str?", None, None),
    "seed": ("int", 0, 2 ** 63), "epochs": ("int", 0, MAX_EPOCHS),
    "final_top1": ("num?", *PERCENT), "best_top1": ("num?", *PERCENT),
    "final_top5": ("num?", *PERCENT), "best_epoch": ("int", 0, MAX_EPOCHS),
    "final_val_loss": ("float?", None, None), "params": ("int", 0, MAX_COUNT),
    "macs": ("int", 0, MAX_COUNT), "wall_time_s": ("num", 0, None),
    "images_per_s": ("num?", 0, None), "status": ("str", None, None),
}
FINISHED_NEEDS = ("final_top1",)  # what the tables read of a finished run
METRIC_COLUMNS = {"epoch": ("int", 1, MAX_EPOCHS), "top1": ("num", *PERCENT),
                  "top5": ("num?", *PERCENT), "raw_top1": ("num?", *PERCENT),
                  "train_loss": ("float?", None, None), "val_loss": ("float?", None, None),
                  "lr": ("num?", 0, None), "images_per_s": ("num?", 0, None),
                  "wall_time": ("num?", 0, None)}
MODEL_META_FIELDS = {"model": ("str", None, None), "num_classes": ("int", 1, MAX_CLASSES),
                     "stem_stride": ("int", 1, 2), "in_chans": ("int", 1, MAX_CHANNELS),
                     "bn": ("str", None, None), "drop_rate": ("num?", 0, 1),
                     "drop_path_rate": ("num?", 0, 1), "resolution": ("int?", 1, None),
                     "dataset": ("str?", None, None), "data_dir": ("str?", None, None),
                     "split_seed": ("int?", 0, 2 ** 63), "val_fraction": ("num?", 0, 1),
                     "class_names": ("list?", None, None), "epoch": ("int?", 0, MAX_EPOCHS),
                     "top1": ("num?", *PERCENT)}
BN_KINDS = ("torch", "tf")
KINDS = {"int": "an integer", "num": "a finite number", "float": "a number",
         "str": "a string", "bool": "true or false", "dict": "a JSON object",
         "list": "a JSON list", "name": "a plain file name"}


def show(value) -> str:
    """A value as it appears in the message: short, on one line."""
    text = json.dumps(value, default=repr) if not isinstance(value, float) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fits(value, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("num", "float"):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return number and (kind == "float" or math.isfinite(value))
    if kind == "name":
        return (isinstance(value, str) and value not in ("", ".", "..")
                and "/" not in value and "\\" not in value and "\0" not in value)
    return isinstance(value, {"str": str, "bool": bool, "dict": dict, "list": list}[kind])


def check_value(value, kind: str, low=None, high=None, *, file, key: str, what: str = "key"):
    """`value` if it is of `kind` (see the field tables) within [low, high]; else ValueError
    naming the file, the key (`what` says what kind of key: "line 3, column"), what was
    expected and what is there."""
    nullable = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and nullable:
        return value
    span = ""
    if low is not None or high is not None:
        span = f" in [{'-inf' if low is None else f'{low:g}'}, " \
               f"{'inf' if high is None else f'{high:g}'}]"
    if not _fits(value, kind) or (kind in ("int", "num") and not (
            (low is None or value >= low) and (high is None or value <= high))):
        raise ValueError(f"{file}: {what} {key!r}: expected {KINDS[kind]}{span}, got "
                         f"{show(value)}{_type_of(value)}; the file was changed by hand or "
                         f"is damaged")
    return value


def _type_of(value) -> str:
    return "" if value is None else f" ({type(value).__name__})"


def check_fields(value, fields: dict, *, file, where: str = "", required=()) -> dict:
    """`value` if it is a JSON object whose `required` keys are there and whose `fields`
    (those present) pass `check_value`; `where` prefixes the key in messages ('runs.x.')."""
    if not isinstance(value, dict):
        what = f"key {where.rstrip('.')!r}" if where else "the file"
        raise ValueError(f"{file}: {what}: expected a JSON object, got {show(value)}"
                         f"{_type_of(value)}")
    for key in required:
        if key not in value:
            raise ValueError(f"{file}: key {where + key!r} is missing; the file was changed "
                             f"by hand or is damaged")
    for key, (kind, low, high) in fields.items():
        if key in value:
            check_value(value[key], kind, low, high, file=file, key=where + key)
    return value


def read_json(path: str | Path, what: str = "file"):
    """The JSON value in `path`; ValueError naming the file when it is not JSON text."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not JSON text (not UTF-8)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep; an int of 5,000 digits
        raise ValueError(f"{what} {path} is not usable JSON: {str(exc).splitlines()[0]}"
                         ) from None


def check_model_meta(meta, file) -> dict:
    """A model file's `effscale` metadata: what create_model is called with (an absurd class
    count is refused here, before the model is allocated) and what commands read of it."""
    meta = check_fields(meta, MODEL_META_FIELDS, file=file, where="effscale.",
                        required=("model", "num_classes"))
    if meta.get("bn", "torch") not in BN_KINDS:
        raise ValueError(f"{file}: key 'effscale.bn': expected one of {', '.join(BN_KINDS)}, "
                         f"got {show(meta['bn'])}")
    for i, name in enumerate(meta.get("class_names") or []):
        check_value(name, "str", file=file, key=f"effscale.class_names[{i}]")
    # CAM figures index the names by predicted class: fewer names than classes would fail there
    if meta.get("class_names") and len(meta["class_names"]) < meta["num_classes"]:
        raise ValueError(f"{file}: key 'effscale.class_names': {len(meta['class_names'])} "
                         f"names for {meta['num_classes']} classes")
    return meta


# -- a run directory -----------------------------------------------------------------------------

def read_summary(path: str | Path) -> dict:
    """A run's summary.json, checked: the types and ranges of what tables use; a finished run
    must say its model, epochs and top-1."""
    summary = check_fields(read_json(path, "summary"), SUMMARY_FIELDS, file=path,
                           required=("status",))
    if summary["status"] == "finished":
        check_fields(summary, {}, file=path, required=FINISHED_NEEDS)
        for key in FINISHED_NEEDS:
            check_value(summary[key], "num", *PERCENT, file=path, key=key)
    return summary


def read_metrics(path: str | Path) -> list[dict]:
    """A run's metrics.csv, checked row by row (numbers in range, epochs increasing); the
    rows as csv.DictReader gives them."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a CSV file: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("epoch", "top1") if c not in header]
    if missing:
        raise ValueError(f"{path}: column {missing[0]!r} is missing (header: "
                         f"{show(','.join(header))})")
    last = 0
    for line, row in enumerate(rows, start=2):
        if None in row or None in row.values():
            raise ValueError(f"{path}: line {line} has {'more' if None in row else 'fewer'} "
                             f"fields than the header")
        for column, (kind, low, high) in METRIC_COLUMNS.items():
            if column in row:
                check_value(_cell(row[column], kind), kind, low, high, file=path,
                            key=column, what=f"line {line}, column")
        epoch = int(row["epoch"])
        if epoch <= last:
            raise ValueError(f"{path}: line {line}: epoch {epoch} after epoch {last}; epochs "
                             f"must increase")
        last = epoch
    return rows


def _cell(text: str, kind: str):
    """A CSV cell as the value it stands for: '' is null, numbers are numbers (so that
    check_value judges them), anything else stays text."""
    if text == "":
        return None
    try:
        return int(text) if kind.startswith("int") else float(text)
    except ValueError:
        return text


# -- study and search records ----------------------------------------------------------------

_S, _N = ("str", None, None), ("num", 0, None)
RECORD_FIELDS = {
    "kind": _S, "config": ("dict", None, None), "runs": ("dict", None, None),
    "models": ("list", None, None), "num_classes": ("int", 1, MAX_CLASSES),
    "in_chans": ("int", 1, MAX_CHANNELS), "train_size": ("int?", 1, MAX_COUNT),
    "val_size": ("int?", 1, MAX_COUNT), "seeds": ("list", None, None), "measured": ("dict?", None, None),
    "commands": ("list", None, None), "budgets": ("list", None, None),
    "studies": ("dict", None, None), "base_macs": ("int", 1, MAX_COUNT),
    "points": ("list", None, None), "wall_time_s": ("num?", 0, None)}
NEEDS = {"study": ("config", "runs", "models"), "search": ("config", "runs"),
         "budgets": ("config", "budgets", "studies")}
CONFIG_FIELDS = {"data": _S, "base": _S, "epochs": ("int", 1, MAX_EPOCHS),
                 "seeds": ("int", 1, 10 ** 6), "alphas": ("list", None, None),
                 "betas": ("list", None, None)}
RUN_FIELDS = {
    "study": {"strategy": _S, "level": _S, "seed": ("int", 0, 2 ** 63), "model": _S,
              "train": ("dict", None, None)},
    "search": {"alpha": _N, "beta": _N, "gamma": _N, "seed": ("int", 0, 2 ** 63),
               "paper": ("bool", None, None), "model": _S, "train": ("dict", None, None)}}
MODEL_FIELDS = {"strategy": _S, "level": _S, "model": _S, "target_macs": ("int", 1, MAX_COUNT),
                "macs": ("int", 0, MAX_COUNT), "params": ("int", 0, MAX_COUNT),
                "resolution": ("int", 1, None), "d": _N, "w": _N, "r": _N, "ratio": _N}
MEASURED_FIELDS = {k: ("num?", 0, None) for k in (
    "train_img_s", "infer_img_s", "latency_ms", "latency_p90_ms", "peak_mib")}
MEASURED_FIELDS.update(batch=("int?", 1, None), rounds=("int?", 1, None),
                       device=("str", None, None), precision=("str?", None, None),
                       peak_method=("str?", None, None))


def check_record(record, file) -> dict:
    """A study.json / search.json (or a budgets study.json): the keys effscale plans, trains
    and reports from, with their types and ranges; run keys and sub-study names must be plain
    names (they are joined under the directory)."""
    record = check_fields(record, RECORD_FIELDS, file=file)
    kind = record.get("kind", "study")
    if kind not in NEEDS:
        raise ValueError(f"{file}: key 'kind': expected one of {', '.join(NEEDS)}, got "
                         f"{show(kind)}")
    check_fields(record, {}, file=file, required=NEEDS[kind])
    config = dict(CONFIG_FIELDS, epochs=("list", None, None)) if kind == "budgets" \
        else CONFIG_FIELDS
    check_fields(record["config"], config, file=file, where="config.")
    if kind == "budgets":
        for epochs in record["budgets"]:
            check_value(epochs, "int", 1, MAX_EPOCHS, file=file, key="budgets")
        for epochs, name in record["studies"].items():
            check_value(name, "name", file=file, key=f"studies.{epochs}")
        return record
    for key, run in record["runs"].items():
        check_value(key, "name", file=file, key=f"runs.{key}")
        check_fields(run, RUN_FIELDS[kind], file=file, where=f"runs.{key}.",
                     required=tuple(RUN_FIELDS[kind]))
    for i, model in enumerate(record.get("models", [])):
        check_fields(model, MODEL_FIELDS, file=file, where=f"models[{i}].",
                     required=("strategy", "level", "model", "target_macs", "macs"))
    planned = {(m["strategy"], m["level"]) for m in record.get("models", [])}
    for key, run in record["runs"].items():
        if kind == "study" and (run["strategy"], run["level"]) not in planned:
            raise ValueError(f"{file}: key 'runs.{key}': {run['strategy']} at level "
                             f"{run['level']} is not among the record's models")
    for model, cost in (record.get("measured") or {}).items():
        check_fields(cost, MEASURED_FIELDS, file=file, where=f"measured.{model}.",
                     required=("device",))
    return record


# What identifies a run: a run directory whose config.json or summary.json disagrees on one of
# these was not trained as the record says (edited, or copied in from another study).
IDENTITY = ("model", "data", "seed", "epochs", "recipe", "subset", "val_subset", "stem_stride")


def check_runs_agree(directory: str | Path, record: dict, file) -> None:
    """Refuse a record whose run entries disagree with the runs' own config.json (and the
    summary.json of a finished run): on the keys of IDENTITY that the entry's training config
    sets, and on the model. Runs not started yet have nothing to disagree with."""
    for key, run in record.get("runs", {}).items():
        train = {k: v for k, v in run["train"].items() if k in IDENTITY and v is not None}
        train.setdefault("model", run["model"])
        run_dir = Path(directory) / "runs" / key
        for name in ("config.json", "summary.json"):
            path = run_dir / name
            if not path.is_file():
                continue
            saved = read_summary(path) if name == "summary.json" else check_fields(
                read_json(path, "run config"), {}, file=path)
            finished = saved.get("status", "finished") == "finished"
            for k, planned in train.items():
                if k not in saved or (k == "epochs" and not finished):
                    continue  # a summary has no recipe values; a stopped run fewer epochs
                if saved[k] != planned:
                    raise ValueError(
                        f"{path}: key {k!r} is {show(saved[k])}, but {file} planned "
                        f"{show(planned)} for run {key}: the run is not the one the record "
                        f"describes; restore the file, or move {run_dir} away to re-train it")
