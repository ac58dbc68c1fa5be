"""Measured cost of a study's models: the budgets people have beside FLOPs.

Every study planned for real measures each of its models once (`model.measure.measure`, all
of them interleaved in one call) on the study's device and keeps the result in study.json
under `"measured": {model name: {train_img_s, infer_img_s, latency_ms, latency_p90_ms,
peak_mib, batch, device, precision, peak_method, threads, hardware}}`. A model measured once
is never measured again: re-planning and re-running the same command leave the numbers (and
take no time). The measurement is not part of the training plan (`plan_differences` never
reads it) and `--no-measure` skips it. A study at several budgets measures each model once
for all its budgets.

`measure_models(study_dir)` adds the missing measurements to a finished study (or to every
budget of a budgets study) without training anything: on the machine it runs on, which the
record names (`device`, `hardware`), so that a GPU study re-profiled on a CPU says so.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ..io.files import write_json
from ..io.records import environment, load_study

ROUNDS, WARMUP = 2, 1            # timed and untimed rounds: a relative cost, kept quick
DEFAULT_BATCH = {"cpu": 64, "cuda": 256}  # when the study sets no training batch
CPU_THREADS = 1                  # as a local study worker trains


def measure_device(requested: str | None, *, fallback_cpu: bool = False, echo=print):
    """The device to measure on ("cpu", "cuda" or "cuda:N"), or None when `requested` is a
    GPU this machine lacks and `fallback_cpu` is False."""
    import torch
    if requested in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(requested).startswith("cuda") and not torch.cuda.is_available():
        if not fallback_cpu:
            return None
        echo(f"note: the study ran on {requested}; no CUDA GPU here, so its models are "
             f"measured on cpu (recorded as such)")
        return "cpu"
    return str(requested)


@contextlib.contextmanager
def _threads(device: str):
    import torch
    before = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(CPU_THREADS)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _entry(m, threads: int, hardware: str) -> dict:
    return {"train_img_s": round(m.train_img_s, 2), "infer_img_s": round(m.infer_img_s, 2),
            "latency_ms": round(m.latency_ms, 4), "latency_p90_ms": round(m.latency_p90_ms, 4),
            "peak_mib": round(m.peak_mib, 3), "batch": m.batch, "device": m.device,
            "precision": m.precision, "peak_method": m.peak_method, "rounds": m.rounds,
            "threads": threads if m.device == "cpu" else None, "hardware": hardware}


def _planned_names(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(m["model"] for r in records for m in r["models"]))


def measure_records(records: list[dict], *, device: str | None = None,
                    fallback_cpu: bool = False, echo=print) -> dict[str, dict]:
    """Measure, once each, the models planned in `records` (study.json dicts of one study or
    of the budgets of one study: same dataset, stem and batch) that none of them holds a
    measurement of; store the measurements in every record (`record["measured"]`). Returns
    {model name: measurement}. A model that cannot be measured (no such GPU, a batch that
    does not fit) is left unmeasured with a warning: the measurement never stops a study."""
    known: dict[str, dict] = {}
    for record in records:
        known.update(record.get("measured") or {})
    missing = [name for name in _planned_names(records) if name not in known]
    if missing:
        known.update(_measure(missing, records[0], device, fallback_cpu, echo))
    for record in records:
        record["measured"] = {m["model"]: known[m["model"]] for m in record["models"]
                              if m["model"] in known}
    return known


def _measure(names: list[str], record: dict, device, fallback_cpu: bool, echo) -> dict:
    cfg = record["config"]
    requested = device or cfg.get("device")
    dev = measure_device(requested, fallback_cpu=fallback_cpu, echo=echo)
    if dev is None:
        echo(f"warning: {requested} requested but no CUDA GPU here: the models' cost is not "
             f"measured")
        return {}
    batch = cfg.get("batch_size") or DEFAULT_BATCH["cuda" if dev.startswith("cuda") else "cpu"]
    t0 = time.time()
    try:
        found = measure_entries(names, device=dev, batch=batch,
                                num_classes=record["num_classes"], in_chans=record["in_chans"],
                                stem_stride=cfg["stem_stride"],
                                precision=cfg.get("precision") or "auto")
    except (ValueError, RuntimeError) as exc:  # an extra: it never stops a study
        echo(f"warning: the models' cost is not measured: {exc}")
        return {}
    echo(f"measured the cost of {len(names)} model{'s' if len(names) > 1 else ''} on {dev} "
         f"(batch {batch}, {ROUNDS} rounds) in {time.time() - t0:.0f}s")
    return found


def measure_entries(names: list[str], *, device: str, batch: int, num_classes: int,
                    in_chans: int, stem_stride: int, precision: str = "auto",
                    rounds: int = ROUNDS, warmup: int = WARMUP) -> dict[str, dict]:
    """{name: the study.json entry} of `names`, measured together (interleaved) on `device`
    (one torch thread on CPU, as a local study worker trains). Raises ValueError or
    RuntimeError when they cannot be measured (e.g. a batch that does not fit)."""
    from ..model.measure import measure
    with _threads(device) as threads:
        found = measure(names, device=device, batch=batch, num_classes=num_classes,
                        in_chans=in_chans, stem_stride=stem_stride, rounds=rounds,
                        warmup=warmup, precision=precision)
    hardware = environment(device)["device"]
    return {m.name: _entry(m, threads, hardware) for m in found}


def study_dirs(study_dir: str | Path) -> list[Path]:
    """The study directories that hold models: the directory itself, or each planned budget
    of a study at several budgets."""
    study_dir = Path(study_dir)
    record = load_study(study_dir)
    if record.get("kind") != "budgets":
        return [study_dir]
    return [study_dir / name for name in record["studies"].values()
            if (study_dir / name / "study.json").is_file()]


def measure_models(study_dir: str | Path, *, device: str | None = None,
                   echo=print) -> dict[str, dict]:
    """Add the missing measurements to a study directory (every budget of a budgets study,
    each model measured once for all of them), training nothing; measurements already there
    are kept. `device`: where to measure (default: the study's device when this machine has
    it, else the CPU, recorded as such). Returns {model name: measurement}."""
    dirs = study_dirs(study_dir)
    records = [load_study(d) for d in dirs]
    if not records:
        return {}
    before = [dict(r.get("measured") or {}) for r in records]
    known = measure_records(records, device=device, fallback_cpu=device is None, echo=echo)
    for d, record, old in zip(dirs, records, before):
        if record["measured"] != old:
            write_json(d / "study.json", record)
    return known
