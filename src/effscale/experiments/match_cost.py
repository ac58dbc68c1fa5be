"""Matching on what the user pays: measured training time, latency or memory instead of MACs.

`effscale study --match train-time|latency|memory` sizes the depth-, width-, resolution-only
and fast models of each level so that their *measured* cost equals the compound model's (the
compound model stays matched to the level's MACs: its measured cost is the target). For each
model the search starts at its MACs match and walks `match_flops`'s grid of the same
dimension (whole blocks, 0.01 steps of the multiplier, whole pixels), toward the cost: a step
sized as if cost grew as MACs^k (k = 1, then fitted to the two nearest points measured), and
one grid step (the next distinct network) when that lands on a model already measured. It
stops within `CLOSE` of the target, after `SEARCH_ROUNDS` rounds, or when both neighbours of
the best model have been measured. Each round measures every new candidate of every model
together, interleaved (`model.measure.measure` through `cost.measure_entries`), on the
study's device at the study's batch (64 on CPU, 256 on CUDA when it sets none), with the
compound models they aim at: a shared machine's load drifts between rounds, so a round's
values are scaled by how much the compound models' cost moved since the first. A model is
measured once per search (and once per process, so the budgets of one study agree).

Costs, bigger is costlier: train-time is ms per training image (1000 / train_img_s), latency
the batch-1 median in ms, memory the peak MiB of one training step. The plan records them
(after the drift scaling, as the search used them):
`record["matched"] = {"on", "device", "batch", "unit", "measurements": {model: value}}`,
and re-planning with those values (`replay=True`) takes the same steps and measures nothing,
so `plan_differences` is exact. Measured ratios vary by a few percent between runs on a
shared machine; `--max-mismatch` (0.1 for time) says how far a model may land.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from ..model.names import Variant
from ..model.profile import macs_of, match_flops
from .cost import DEFAULT_BATCH, measure_device, measure_entries
from .executors import ray_resources

COSTS = ("macs", "train-time", "latency", "memory")
UNITS = {"train-time": "ms/img", "latency": "ms", "memory": "MiB"}
ROUNDS, WARMUP = 3, 1   # timed and untimed rounds of each measurement
SEARCH_ROUNDS = 3       # rounds of candidates after the MACs matches
CLOSE = 0.01            # a model this close to its target is not searched further
MAX_JUMP = 4.0          # one step changes MACs by at most this factor
# (cost, device, batch, classes, chans, stem, precision, name) -> (entry, value)
_CACHE: dict[tuple, tuple[dict, float]] = {}


def check_match(config) -> None:
    """--match's value, and the compound model it needs (one ValueError line each)."""
    if config.match not in COSTS:
        raise ValueError(f"match must be one of {', '.join(COSTS)}, got {config.match!r}")
    if config.match != "macs" and "compound" not in config.strategies:
        raise ValueError(f"--match {config.match} sizes the models to the compound model's "
                         f"measured cost: add compound to --strategies")


def cost_value(entry: dict, on: str) -> float:
    """The cost `on` of one measurement (a study.json "measured" entry), 6 digits."""
    value = {"train-time": lambda: 1000.0 / entry["train_img_s"],
             "latency": lambda: entry["latency_ms"],
             "memory": lambda: entry["peak_mib"]}[on]()
    return _digits(value)


def _digits(value: float) -> float:
    return float(f"{value:.6g}")


@dataclass(frozen=True)
class CostMatch:
    name: str
    value: float      # its measured cost
    target: float     # the target's measured cost
    ratio: float      # value / target


class Measurer:
    """Measured cost by model name: recorded values first; otherwise measured (unless
    `replay`: then a model not recorded stays unmeasured, and its search ends there)."""

    def __init__(self, on: str, *, device, batch, num_classes: int, in_chans: int,
                 stem_stride: int, precision=None, known: dict | None = None,
                 replay: bool = False, echo=print, measure=None):
        self.on, self.replay, self.echo = on, replay, echo
        self.measure = measure  # None: measure_entries in this process; or on a Ray worker
        self.known = dict(known or {})
        self.device, self.batch = device, batch
        self.shape = dict(num_classes=num_classes, in_chans=in_chans, stem_stride=stem_stride,
                          precision=precision or "auto")
        self.values: dict[str, float] = {}   # every value this plan used
        self.entries: dict[str, dict] = {}   # full measurements taken here (not recorded ones)

    def need(self, names, anchors=()) -> None:
        """Values for `names`. Those measured here are measured together with the `anchors`
        (models already valued: the targets) and scaled by how much the anchors' cost moved
        since they were valued (a shared machine's load drifts between rounds)."""
        names = [n for n in dict.fromkeys(names) if n not in self.values]
        for name in [n for n in names if n in self.known]:
            self.values[name] = float(self.known[name])
        missing = [n for n in names if n not in self.values]
        if not missing or self.replay:
            return
        key = (self.on, self.device, self.batch, *self.shape.values())
        fresh = [n for n in missing if (*key, n) not in _CACHE]
        if fresh:
            anchors = [a for a in dict.fromkeys(anchors) if a in self.values and a not in fresh]
            self.echo(f"measuring the {self.on} of {len(fresh)} model"
                      f"{'s' if len(fresh) > 1 else ''} on {self.device} (batch {self.batch})")
            measure = self.measure or measure_entries
            found = measure(fresh + anchors, device=self.device, batch=self.batch, rounds=ROUNDS,
                            warmup=WARMUP, **self.shape)
            drift = math.exp(statistics.fmean(
                [math.log(self.values[a] / cost_value(found[a], self.on)) for a in anchors]
                or [0.0]))
            for n in fresh:
                _CACHE[(*key, n)] = (found[n], _digits(cost_value(found[n], self.on) * drift))
        for name in missing:
            self.entries[name], self.values[name] = _CACHE[(*key, name)]

    def record(self) -> dict:
        return {"on": self.on, "device": self.device, "batch": self.batch,
                "unit": UNITS[self.on], "measurements": dict(sorted(self.values.items()))}


def study_measurer(config, num_classes: int, in_chans: int, *, known=None, replay=False,
                   echo=print) -> Measurer:
    """The Measurer of a study: its device and batch (64 on CPU, 256 on CUDA by default)."""
    device, measure = config.device, None
    if config.executor == "ray":
        # measured where the runs will train: a worker with a run's resources
        device = config.device or ("cuda" if ray_resources(config)[1] else "cpu")
        measure = _ray_measure(config, echo)
    elif not replay:
        device = measure_device(config.device)
        if device is None:
            raise ValueError(f"--match {config.match} measures on {config.device}, but this "
                             f"machine has no CUDA GPU")
    batch = config.batch_size or DEFAULT_BATCH["cuda" if str(device).startswith("cuda")
                                               else "cpu"]
    return Measurer(config.match, device=device, batch=batch, num_classes=num_classes,
                    in_chans=in_chans, stem_stride=config.stem_stride,
                    precision=config.precision, known=known, replay=replay, echo=echo,
                    measure=measure)


def _ray_measure(config, echo):
    """measure_entries, as one Ray task with a run's CPUs and GPUs."""
    def measure(names, **kwargs):
        from .ray_executor import measure_on_ray
        cpus, gpus = ray_resources(config)
        answer = measure_on_ray(names, address=config.address, cpus_per_run=cpus,
                                gpus_per_run=gpus, **kwargs)
        echo(f"measured on a Ray worker (process {answer['pid']}, {answer['device']})")
        return answer["found"]
    return measure


class _Walk:
    """One model's search along one dimension of match_flops's grid."""

    def __init__(self, variant: Variant, dimension: str, start: str, target: str, *, shape,
                 extra):
        self.variant, self.dimension, self.target = variant, dimension, target
        self.shape, self.extra = shape, extra  # stem_stride, num_classes, in_chans; fast_alpha
        self.tried = [start]
        self.done = False

    def macs(self, name: str) -> int:
        return macs_of(name, **self.shape)

    def nearest(self, macs: float) -> str:
        return match_flops(self.variant, self.dimension, macs, **self.extra, **self.shape).name

    def neighbour(self, name: str, direction: int) -> str | None:
        """The next distinct network of the grid above (+1) or below (-1) `name`."""
        macs, delta = self.macs(name), 0.002
        while delta < 1:
            other = self.nearest(macs * (1 + direction * delta))
            if (self.macs(other) - macs) * direction > 0:
                return other
            delta *= 2
        return None

    def propose(self, values: dict[str, float]) -> str | None:
        target = values[self.target]
        best = self.best(values)
        ratio = values[best] / target
        if abs(ratio - 1) <= CLOSE:
            return None
        k = self.exponent(best, values)
        jump = min(MAX_JUMP, max(1 / MAX_JUMP, ratio ** (-1 / k)))
        name = self.nearest(self.macs(best) * jump)
        if name in self.tried:
            name = self.neighbour(best, -1 if ratio > 1 else 1)
        return None if name is None or name in self.tried else name

    def exponent(self, best: str, values: dict[str, float]) -> float:
        """How cost grows with MACs near `best`: the slope of log cost against log MACs to
        the nearest other model measured (1 without one, or when noise makes it <= 0)."""
        others = [n for n in self.tried if n != best and self.macs(n) != self.macs(best)]
        if not others:
            return 1.0
        near = min(others, key=lambda n: (abs(math.log(self.macs(n) / self.macs(best))), n))
        k = (math.log(values[near] / values[best])
             / math.log(self.macs(near) / self.macs(best)))
        return min(2.0, max(0.25, k)) if k > 0 and math.isfinite(k) else 1.0

    def best(self, values: dict[str, float]) -> str:
        target = values[self.target]
        return min((n for n in self.tried if n in values),
                   key=lambda n: (abs(values[n] / target - 1), n))


def cost_search(walks: dict, measurer: Measurer) -> dict:
    """{key: CostMatch} of every walk ({key: _Walk}): the measured model nearest its target's
    cost, `SEARCH_ROUNDS` rounds of candidates after the starts, each round measured together."""
    measurer.need([w.target for w in walks.values()] + [w.tried[0] for w in walks.values()])
    for w in walks.values():
        if w.target not in measurer.values:
            raise ValueError(f"{w.target} (the target) has no recorded {measurer.on}")
        w.done = w.tried[0] not in measurer.values
    for _ in range(SEARCH_ROUNDS):
        proposals = {}
        for key, w in walks.items():
            name = None if w.done else w.propose(measurer.values)
            w.done = name is None
            if name is not None:
                proposals[key] = name
        if not proposals:
            break
        measurer.need(proposals.values(), [walks[key].target for key in proposals])
        for key, name in proposals.items():
            walks[key].tried.append(name)
            walks[key].done = name not in measurer.values  # replay: not recorded
    out = {}
    for key, w in walks.items():
        if w.tried[0] not in measurer.values:
            continue
        best = w.best(measurer.values)
        value, target = measurer.values[best], measurer.values[w.target]
        out[key] = CostMatch(best, value, target, round(value / target, 4))
    return out


def walk(variant: Variant, dimension: str, start: str, target: str, *, stem_stride: int,
         num_classes: int, in_chans: int, fast_alpha: float | None = None) -> _Walk:
    """A search for the `dimension` variant of `variant` whose cost is `target`'s, from
    `start` (its MACs match, as `match_flops` names it with the same arguments)."""
    extra = {"fast_alpha": fast_alpha} if dimension == "fast" and fast_alpha is not None else {}
    return _Walk(variant, dimension, start, target, extra=extra,
                 shape=dict(stem_stride=stem_stride, num_classes=num_classes,
                            in_chans=in_chans))


def recorded_measurements(record: dict, on: str | None = None) -> dict | None:
    """The measured costs a study.json's plan was matched on (None for a MACs study, or when
    it was matched on another cost than `on`): what `plan_models(..., measured=...)` re-plans
    it with, measuring nothing."""
    matched = record.get("matched") or {}
    return matched.get("measurements") if on in (None, matched.get("on")) else None


def model_entry(entry: dict) -> dict:
    """A planned model as study.json keeps it: without the cost fields of a MACs match."""
    return {k: v for k, v in entry.items()
            if v is not None or k not in ("matched_on", "cost_ratio")}


def refusal(on: str, limit: float, far: list[str]) -> str:
    """The one line that refuses a plan matched on a measured cost."""
    more = f" (and {len(far) - 1} more)" if len(far) > 1 else ""
    return (f"{on} not matched within {limit:.0%}: {far[0]}{more}; measured ratios vary by a "
            f"few percent between runs on a shared machine: re-run, or raise --max-mismatch "
            f"(e.g. 0.1 for time)")


def mismatch_line(m, on: str) -> str:
    """Why a cost-matched model (a PlannedModel) is refused."""
    return (f"{m.strategy} at level {m.level}: {m.model} has {m.cost_ratio:.3f}x the compound "
            f"model's measured {on} ({(m.cost_ratio - 1) * 100:+.1f}%)")
