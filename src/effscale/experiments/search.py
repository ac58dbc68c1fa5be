"""`effscale search`: the paper's step 1, a grid search of the compound coefficients.

For each (alpha, beta) on a grid, gamma is derived so that alpha * beta^2 * gamma^2 = 2
(FLOPs double per unit of phi); candidates with gamma < 1 are skipped (the paper requires
alpha, beta, gamma >= 1). Each candidate is `BASE@phi=1,alpha=..,beta=..,gamma=..`, trained
with a proxy budget (few epochs, a data subset) over seeds by the study runner, and ranked by
mean top-1. The paper's 1.2 / 1.1 / 1.15 is trained on the same budget and ranked with them.

The search directory holds `search.json`, `runs/a<alpha>-b<beta>-s<seed>/`,
`search_results.csv` / `.md`, `best_coefficients.json` and `plots/heatmap.{png,svg}`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..data.objects import name_datasets
from ..io.lock import experiment_lock
from ..io.records import (api_command, check_same_runs, command_history, environment,
                          load_record, search_run_key)
from ..model.names import parse_name
from ..model.profile import profile
from ..reporting.search import PAPER, write_search_results
from .configs import SearchConfig
from .executors import check_experiment, train_recorded
from .given_data import check_datasets_executor, check_same_datasets
from .runs import Job, engine_config, failed_keys
from .plan import compound_base, data_shape, parse_floats

TARGET = 2.0         # FLOPs multiplier per unit of phi (paper eq. 3)


def parse_grid(text, what: str) -> tuple[float, ...]:
    """'1.0,1.1,1.2' or 'start:stop:step' (inclusive) -> floats."""
    if isinstance(text, str) and ":" in text:
        parts = parse_floats(text.replace(":", ","), what)
        if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"{what}: {text!r} is not START:STOP:STEP with STEP > 0")
        count = int(math.floor((parts[1] - parts[0]) / parts[2] + 1e-9)) + 1
        return tuple(round(parts[0] + i * parts[2], 6) for i in range(count))
    values = parse_floats(text, what)
    if not values:
        raise ValueError(f"{what}: empty grid")
    return values


def gamma_for(alpha: float, beta: float, target: float = TARGET) -> float:
    """gamma with alpha * beta^2 * gamma^2 = target, rounded to 3 decimals for short names."""
    return round(math.sqrt(target / (alpha * beta * beta)), 3)


def candidates(alphas, betas, *, tolerance: float = 0.02, target: float = TARGET) -> list[dict]:
    """The valid grid points: all coefficients >= 1 and the FLOPs product within tolerance.
    Pure; the skipped points carry the reason (shown as gaps in the heat map)."""
    out = []
    for a in alphas:
        for b in betas:
            g = gamma_for(a, b, target)
            product = a * b * b * g * g
            reason = None
            if a < 1 or b < 1:
                reason = "alpha and beta must be >= 1"
            elif g < 1:
                reason = f"gamma {g:g} < 1 (alpha*beta^2 = {a * b * b:.3f} > {target:g})"
            elif abs(product / target - 1) > tolerance:
                reason = f"alpha*beta^2*gamma^2 = {product:.3f}, off {target:g} by more than " \
                         f"{tolerance:.0%}"
            out.append({"alpha": a, "beta": b, "gamma": g, "product": round(product, 4),
                        "skip": reason})
    return out


def _at_phi(base: str, coefficients, phi: float) -> str:
    cbase = compound_base(parse_name(base), coefficients)
    return str(cbase.with_(phi=round(cbase.phi + phi, 4)))


def resolve_config(values: dict) -> SearchConfig:
    values = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(values) - set(SearchConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown search config key(s): {', '.join(unknown)}")
    for key in ("alphas", "betas"):
        if key in values:
            values[key] = parse_grid(values[key], key)
    config = SearchConfig(**values)
    check_experiment(config)
    if not any(c["skip"] is None for c in candidates(config.alphas, config.betas,
                                                     tolerance=config.tolerance)):
        raise ValueError("no grid point has alpha, beta, gamma >= 1 with "
                         "alpha*beta^2*gamma^2 = 2; widen --alphas / --betas")
    return config


def candidate_points(config: SearchConfig, num_classes: int,
                     in_chans: int) -> tuple[list[dict], list[dict]]:
    """(the grid with skips, the points to train): each kept (alpha, beta) and the paper's
    point as BASE@phi=1 with its MACs, params and resolution."""
    grid = candidates(config.alphas, config.betas, tolerance=config.tolerance)
    points = [dict(c, paper=False) for c in grid if c["skip"] is None]
    if config.paper:
        points.append({"alpha": PAPER[0], "beta": PAPER[1], "gamma": PAPER[2],
                       "product": round(PAPER[0] * PAPER[1] ** 2 * PAPER[2] ** 2, 4),
                       "skip": None, "paper": True})
    for p in points:
        p["model"] = _at_phi(config.base, (p["alpha"], p["beta"], p["gamma"]), 1.0)
        prof = profile(p["model"], num_classes=num_classes, stem_stride=config.stem_stride,
                       in_chans=in_chans)
        p.update(macs=prof.macs, params=prof.params, resolution=prof.resolution)
    return grid, points


def search(config: SearchConfig | dict | None = None, *, command: str | None = None,
           echo=print, wait: bool | None = None, dry_run: bool = False, **overrides) -> dict:
    """Run (or resume) the grid search; returns the ranked rows and the best coefficients.
    The search directory is locked for the whole call: another process on it is refused
    with one line naming it, or, with wait=True, waited for. `dry_run`: print the
    candidates and return the record it would write, training and writing nothing. `data`
    may be Python datasets, as for `study`."""
    values = config.as_dict() if isinstance(config, SearchConfig) else dict(config or {})
    values, datasets = name_datasets({**values, **overrides})
    config = resolve_config(values)
    check_datasets_executor(config, datasets)
    if dry_run:
        return _search(config, command, echo, dry_run=True, datasets=datasets)
    with experiment_lock(config.out, wait=wait, log=echo):
        return _search(config, command, echo, datasets=datasets)


def _candidate_line(p: dict, base_macs: int) -> str:
    name = "paper" if p["paper"] else f"a{p['alpha']:g} b{p['beta']:g}"
    return (f"  {name:>12}  alpha={p['alpha']:g} beta={p['beta']:g} gamma={p['gamma']:g}  "
            f"{p['model']}  {p['macs'] / 1e6:.2f}M MACs ({p['macs'] / base_macs:.2f}x base)")


def _search(config: SearchConfig, command: str | None, echo, dry_run: bool = False,
            datasets=None) -> dict:
    num_classes, in_chans, facts = data_shape(config, datasets)
    grid, points = candidate_points(config, num_classes, in_chans)
    out = Path(config.out)
    runs = {}
    for p in points:
        for seed in range(config.seeds):
            train = engine_config(config, p["model"], seed)
            runs[search_run_key(p["alpha"], p["beta"], seed, p["paper"])] = {
                "alpha": p["alpha"], "beta": p["beta"], "gamma": p["gamma"], "seed": seed,
                "paper": p["paper"], "model": p["model"], "train": train}
    old = load_record(out, "search") if (out / "search.json").is_file() else {}
    check_same_runs(old, runs)
    check_same_datasets(old, facts, config.data)
    commands = command_history(old, command or api_command("search", config.as_dict()))
    base_macs = profile(config.base, num_classes=num_classes, stem_stride=config.stem_stride,
                        in_chans=in_chans).macs
    record = {"kind": "search", "config": config.as_dict(), "grid": grid, "points": points,
              "runs": runs, "base_macs": base_macs, "num_classes": num_classes,
              "in_chans": in_chans, **{k: facts[k] for k in ("train_size", "val_size")
                                       if k in facts},
              "seeds": list(range(config.seeds)), "commands": commands,
              "environment": environment(config.device),
              "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime())}
    echo(f"search {out}: {len(points)} candidates x {config.seeds} seeds on {config.data}, "
         f"{config.epochs} epochs each (proxy budget)")
    if dry_run:
        for p in points:
            echo(_candidate_line(p, base_macs))
        return {"out": str(out), "plan": record, "rows": [], "best": None, "failed": []}
    statuses = train_recorded(out / "search.json", record, old,
                              [Job(k, out / "runs" / k, r["train"]) for k, r in runs.items()],
                              config, echo=echo, datasets=datasets)
    result = write_search_results(out)
    best = result["best"]
    if best:
        echo(f"best: alpha={best['alpha']:g} beta={best['beta']:g} gamma={best['gamma']:g} "
             f"({best['top1']}) -> effscale study --coefficients "
             f"{best['alpha']:g},{best['beta']:g},{best['gamma']:g}")
    else:
        echo(f"no recommendation: {result['why']}")
    if result["paper_rank"]:
        echo(result["paper_rank"])
    from ..reporting.pages import report
    report(out, echo=echo, results=result)
    result.update(out=str(out), failed=failed_keys(statuses))
    return result


