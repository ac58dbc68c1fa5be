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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .files import write_json
from .measure import profile
from .names import ALPHA, BETA, GAMMA, parse_name
from .studies import (DATASETS, Job, _check_same_study, check_executor, command_history,
                      compound_base, dataset_shape, environment, execute, parse_floats)
from .table import render

TARGET = 2.0         # FLOPs multiplier per unit of phi (paper eq. 3)
PAPER = (ALPHA, BETA, GAMMA)


@dataclass(frozen=True)
class SearchConfig:
    base: str = "b0@phi=-6,r=0.1652"
    data: str = "digits"
    data_dir: str | None = None
    recipe: str | None = "fast"
    # the default: a 3 x 3 grid around the paper's point, trained like the quick study (10
    # epochs, every model ~98%) in about 5 minutes on 2 cores; widen it with
    # --alphas 1.0:1.4:0.1 --betas 1.0:1.2:0.05 (24 candidates) where there is time
    alphas: tuple[float, ...] = (1.1, 1.2, 1.3)
    betas: tuple[float, ...] = (1.05, 1.1, 1.15)
    tolerance: float = 0.02      # |alpha*beta^2*gamma^2 / 2 - 1| allowed after rounding gamma
    seeds: int = 2
    epochs: int = 10             # the proxy budget
    subset: int | None = None
    val_subset: int | None = None
    stem_stride: int = 1
    batch_size: int | None = None
    jobs: int | None = None      # None: one per GPU, else one per CPU core
    executor: str = "local"      # the executor fields mean what they mean in a study
    address: str | None = None
    cpus_per_run: float | None = None
    gpus_per_run: float | None = None
    device: str | None = None
    precision: str | None = None
    paper: bool = True           # also train the paper's 1.2 / 1.1 / 1.15
    out: str = "runs/search"
    train: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


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


def _key(alpha, beta, seed, paper=False) -> str:
    return f"paper-s{seed}" if paper else f"a{alpha:g}-b{beta:g}-s{seed}"


def resolve_config(values: dict) -> SearchConfig:
    values = {k: v for k, v in values.items() if v is not None}
    unknown = sorted(set(values) - set(SearchConfig.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown search config key(s): {', '.join(unknown)}")
    for key in ("alphas", "betas"):
        if key in values:
            values[key] = parse_grid(values[key], key)
    config = SearchConfig(**values)
    parse_name(config.base)
    if config.seeds < 1 or int(config.seeds) != config.seeds:
        raise ValueError(f"seeds must be a whole number >= 1, got {config.seeds}")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.jobs is not None and config.jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {config.jobs}")
    check_executor(config)
    if config.data not in DATASETS and not config.data.startswith("imagefolder:"):
        raise ValueError(f"unknown dataset {config.data!r}; choose from {', '.join(DATASETS)} "
                         f"or imagefolder:PATH")
    if not any(c["skip"] is None for c in candidates(config.alphas, config.betas,
                                                     tolerance=config.tolerance)):
        raise ValueError("no grid point has alpha, beta, gamma >= 1 with "
                         "alpha*beta^2*gamma^2 = 2; widen --alphas / --betas")
    return config


def search(config: SearchConfig | dict | None = None, *, command: str | None = None,
           echo=print, **overrides) -> dict:
    """Run (or resume) the grid search; returns the ranked rows and the best coefficients."""
    values = config.as_dict() if isinstance(config, SearchConfig) else dict(config or {})
    values.update(overrides)
    config = resolve_config(values)
    num_classes, in_chans = dataset_shape(config.data, config.data_dir)
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
    out = Path(config.out)
    runs = {}
    for p in points:
        for seed in range(config.seeds):
            train = dict(config.train)
            train.update(model=p["model"], data=config.data, seed=seed, epochs=config.epochs,
                         stem_stride=config.stem_stride, quiet=True)
            for key in ("data_dir", "recipe", "subset", "val_subset", "batch_size", "device",
                        "precision"):
                if getattr(config, key) is not None:
                    train[key] = getattr(config, key)
            runs[_key(p["alpha"], p["beta"], seed, p["paper"])] = {
                "alpha": p["alpha"], "beta": p["beta"], "gamma": p["gamma"], "seed": seed,
                "paper": p["paper"], "model": p["model"], "train": train}
    old = load_search(out) if (out / "search.json").is_file() else {}
    _check_same_study(old, runs)
    commands = command_history(old, command)
    base_macs = profile(config.base, num_classes=num_classes, stem_stride=config.stem_stride,
                        in_chans=in_chans).macs
    record = {"kind": "search", "config": config.as_dict(), "grid": grid, "points": points,
              "runs": runs, "base_macs": base_macs, "num_classes": num_classes,
              "in_chans": in_chans, "seeds": list(range(config.seeds)), "commands": commands,
              "environment": environment(config.device),
              "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime())}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "search.json", record)
    echo(f"search {out}: {len(points)} candidates x {config.seeds} seeds on {config.data}, "
         f"{config.epochs} epochs each (proxy budget)")
    t0 = time.time()
    statuses = execute([Job(k, out / "runs" / k, r["train"]) for k, r in runs.items()],
                       config, log_dir=out / "logs", echo=echo)
    record["wall_time_s"] = round(old.get("wall_time_s", 0) + time.time() - t0, 1)
    write_json(out / "search.json", record)
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
    from .reporting import report
    report(out, echo=echo)
    result.update(out=str(out), failed=[k for k, s in statuses.items() if s.startswith("failed")])
    return result


def load_search(path) -> dict:
    import json
    file = Path(path) / "search.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a search directory (no search.json)")
    return json.loads(file.read_text())


def ranked_rows(record: dict, top1: dict) -> list[dict]:
    """top1: run key -> final top-1 or None. Rows sorted by mean top-1 (best first).
    Pure; unfinished candidates sort last."""
    from .stats import mean_std
    rows = []
    for p in record["points"]:
        keys = [_key(p["alpha"], p["beta"], s, p["paper"]) for s in record["seeds"]]
        mean, std, n = mean_std(top1.get(k) for k in keys)
        rows.append({"alpha": p["alpha"], "beta": p["beta"], "gamma": p["gamma"],
                     "product": p["product"], "paper": p["paper"], "model": p["model"],
                     "params": p["params"], "macs": p["macs"],
                     "macs_vs_base": round(p["macs"] / record["base_macs"], 3),
                     "top1_mean": None if mean is None else round(mean, 3),
                     "top1_std": None if std is None else round(std, 3), "n": n})
    rows.sort(key=lambda r: (r["top1_mean"] is None, -(r["top1_mean"] or 0)))
    for r in rows:  # competition ranking: ties share the better rank ("1, 2, 2, 4")
        r["rank"] = None if r["top1_mean"] is None else 1 + sum(
            1 for o in rows if o["top1_mean"] is not None and o["top1_mean"] > r["top1_mean"])
    return rows


CHANCE_MARGIN = 5.0   # points above chance below which a candidate has learned nothing useful


def recommend(rows: list[dict], num_classes: int, alpha: float = 0.05) -> tuple[dict | None, str]:
    """(the row to recommend or None, why). Pure.

    A search recommends coefficients only when its best candidate is separated from the
    runner-up beyond the seed spread (Welch's t-test at `alpha`); candidates at chance, tied,
    trained on one seed or within each other's spread give no recommendation, and the reason
    says which. The paper's point competes like any other candidate."""
    ranked = [r for r in rows if r["rank"] is not None]
    if len(ranked) < 2:
        return None, "fewer than two candidates have finished: nothing to compare"
    top, second = ranked[0], ranked[1]
    chance = 100.0 / num_classes
    if top["top1_mean"] <= chance + CHANCE_MARGIN:
        return None, (f"every candidate is at chance (best {_pm(top)}, chance {chance:.1f}%): "
                      f"the proxy budget trains none of them; raise --epochs or --subset")
    if top["top1_mean"] == second["top1_mean"]:
        tied = sum(r["top1_mean"] == top["top1_mean"] for r in ranked)
        return None, f"{tied} candidates are tied at {top['top1_mean']:.2f}%"
    if top["n"] < 2 or second["n"] < 2:
        return None, (f"one seed per candidate: the best ({_pm(top)}) and the runner-up "
                      f"({_pm(second)}) cannot be told apart from seed noise; run --seeds 3")
    p = _welch_p(top, second)
    if not p < alpha:
        return None, (f"the best ({_coeffs(top)}: {_pm(top)}) is not separated from the "
                      f"runner-up ({_coeffs(second)}: {_pm(second)}) beyond their seed spread "
                      f"(Welch's t-test p={p:.2f}); more seeds or epochs could separate them")
    return top, (f"separated from the runner-up ({_coeffs(second)}: {_pm(second)}) beyond the "
                 f"seed spread (Welch's t-test p={p:.3f})")


def _welch_p(a: dict, b: dict) -> float:
    from scipy import stats
    if not a["top1_std"] and not b["top1_std"]:  # identical seeds on both: t is infinite
        return 0.0 if a["top1_mean"] != b["top1_mean"] else 1.0
    return float(stats.ttest_ind_from_stats(a["top1_mean"], a["top1_std"], a["n"],
                                            b["top1_mean"], b["top1_std"], b["n"],
                                            equal_var=False).pvalue)


def _coeffs(row) -> str:
    name = f"alpha={row['alpha']:g}, beta={row['beta']:g}, gamma={row['gamma']:g}"
    return f"the paper's {name}" if row["paper"] else name


def write_search_results(search_dir) -> dict:
    from . import plots
    from .reporting import read_run
    search_dir = Path(search_dir)
    record = load_search(search_dir)
    top1 = {}
    for key in record["runs"]:
        run = read_run(search_dir / "runs" / key)
        top1[key] = run["summary"].get("final_top1") if run["finished"] else None
    rows = ranked_rows(record, top1)
    columns = ["rank", "alpha", "beta", "gamma", "product", "paper", "model", "params", "macs",
               "macs_vs_base", "top1_mean", "top1_std", "n"]
    (search_dir / "search_results.csv").write_text(render(rows, "csv", columns) + "\n")
    best, why = recommend(rows, record.get("num_classes", 10))
    paper_row = next((r for r in rows if r["paper"]), None)
    ranked = [r for r in rows if r["rank"] is not None]
    paper_rank = None
    if paper_row and paper_row["rank"] and best:
        paper_rank = (f"the paper's alpha=1.2, beta=1.1, gamma=1.15 ranks {paper_row['rank']} "
                      f"of {len(ranked)} on this budget ({_pm(paper_row)})")
    best_info = None
    stale = search_dir / "best_coefficients.json"
    if best:
        best_info = {"alpha": best["alpha"], "beta": best["beta"], "gamma": best["gamma"],
                     "top1": _pm(best), "model": best["model"], "why": why,
                     "coefficients": f"{best['alpha']:g},{best['beta']:g},{best['gamma']:g}"}
        write_json(stale, best_info)
    elif stale.is_file():  # an earlier, now overruled recommendation must not linger
        stale.unlink()
    cfg = record["config"]
    values = {(r["alpha"], r["beta"]): r["top1_mean"] for r in rows if not r["paper"]}
    figure = plots.heatmap(list(cfg["alphas"]), list(cfg["betas"]), values,
                           search_dir / "plots" / "heatmap",
                           paper=(PAPER[0], PAPER[1]),
                           best=(best["alpha"], best["beta"]) if best else None,
                           title=f"{cfg['base']} at phi=1 on {cfg['data']}, "
                                 f"{cfg['epochs']} epochs\ngamma = sqrt(2 / (alpha beta^2))")
    md = [f"# Coefficient search: {cfg['base']} on {cfg['data']}", "",
          render(display(rows), "markdown"), ""]
    if best_info:
        md += [f"Best: {_coeffs(best)} ({best_info['top1']}), {why}; use "
               f"`--coefficients {best_info['coefficients']}`.", ""]
    else:
        md += [f"No recommendation: {why}.", ""]
    if paper_rank:
        md += [paper_rank[0].upper() + paper_rank[1:] + ".", ""]
    md += ["![heat map](plots/heatmap.png)", ""]
    (search_dir / "search_results.md").write_text("\n".join(md))
    return {"rows": rows, "best": best_info, "why": why, "paper_rank": paper_rank,
            "figure": figure,
            "record": record}


def _pm(row) -> str:
    if row["top1_mean"] is None:
        return "not run"
    if row["top1_std"] is None:
        return f"{row['top1_mean']:.2f}% (n=1)"
    return f"{row['top1_mean']:.2f} ± {row['top1_std']:.2f}% (n={row['n']})"


def display(rows: list[dict]) -> list[dict]:
    return [{"rank": "" if r["rank"] is None else r["rank"],
             "alpha": f"{r['alpha']:g}", "beta": f"{r['beta']:g}", "gamma": f"{r['gamma']:g}",
             "a*b^2*g^2": f"{r['product']:.3f}", "": "paper" if r["paper"] else "",
             "model": r["model"], "params(M)": f"{r['params'] / 1e6:.3f}",
             "MACs vs base": f"{r['macs_vs_base']:.2f}x", "top-1 (%)": _pm(r)} for r in rows]


def search_sections(search_dir) -> tuple[str, list]:
    """Report sections of a search directory (rendered by reporting.report)."""
    res = write_search_results(search_dir)
    record, cfg = res["record"], res["record"]["config"]
    title = f"effscale search: {cfg['base']} on {cfg['data']}"
    s: list = []
    if res["best"]:
        b = res["best"]
        s.append(("p", f"Best coefficients on this proxy budget: alpha={b['alpha']:g}, "
                       f"beta={b['beta']:g}, gamma={b['gamma']:g} ({b['top1']}). Use them with "
                       f"`effscale study --coefficients {b['coefficients']}` or in a model name "
                       f"(`{cfg['base']}@phi=2,alpha={b['alpha']:g},beta={b['beta']:g},"
                       f"gamma={b['gamma']:g}` when the base has no phi/res)."))
    else:
        s.append(("note", f"No recommendation: {res['why']}."))
    if res["paper_rank"]:
        s.append(("p", res["paper_rank"][0].upper() + res["paper_rank"][1:] + "."))
    if cfg["seeds"] < 2:
        s.append(("note", "One seed per candidate: the ranking has no error bars."))
    s += [("h2", "Candidates (ranked by mean final top-1)"),
          ("p", f"Each candidate is the base at phi=1 with gamma = sqrt(2 / (alpha beta^2)) "
                f"(rounded to 3 decimals; kept when alpha*beta^2*gamma^2 is within "
                f"{cfg['tolerance']:.0%} of 2 and all coefficients are >= 1). Proxy budget: "
                f"{cfg['epochs']} epochs, train subset {cfg['subset'] or 'all'}, "
                f"{len(record['seeds'])} seeds. MACs vs base shows how close the channel and "
                f"block rounding keep each candidate to the intended 2x."),
          ("table", display(res["rows"])),
          ("img", Path(res["figure"][0]), "Mean top-1 over (alpha, beta); red box: best, "
                                          "dashed: the paper's point; – : skipped")]
    skipped = [c for c in record["grid"] if c["skip"]]
    if skipped:
        s.append(("list", [f"alpha={c['alpha']:g}, beta={c['beta']:g}: skipped, {c['skip']}"
                           for c in skipped]))
    s += [("h2", "Reproduce"), ("pre", "\n".join(record.get("commands", []))),
          ("h2", "Environment"),
          ("table", [{"key": k, "value": v} for k, v in record.get("environment", {}).items()]
           + [{"key": "seeds", "value": ", ".join(map(str, record["seeds"]))},
              {"key": "wall time", "value": f"{record.get('wall_time_s', 0):.0f} s"}])]
    return title, s
