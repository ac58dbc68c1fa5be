"""How a study's rows read in tables: short model names (the full names listed once below the
table), the models table, the measured-cost table, the paper's Table 7 beside ours, the paired
comparisons, and one row per run (`runs.csv`).

Tables are split so that each fits a 1280-px page without scrolling sideways (the report's
Chromium test measures it): the accuracy columns and the measured-cost columns are two tables.
"""

from __future__ import annotations

import math

from ..model.names import parse_name
from ..model.profile import STRATEGIES
from . import stats

# The paper's Table 7 (docs/REFERENCE.md): scaling B0 one dimension at a time vs compound.
PAPER_TABLE7 = {
    "baseline": ("B0", 0.4, 77.3),
    "depth": ("d=4", 1.8, 79.0),
    "width": ("w=2", 1.8, 78.9),
    "resolution": ("r=2", 1.9, 79.1),
    "compound": ("d=1.4, w=1.2, r=1.3", 1.8, 81.1),
}
PAPER_LEVEL = 1.8 / 0.39  # the paper's Table 7 compares at ~4.6x B0's FLOPs


def macs_unit(rows) -> tuple[str, float]:
    biggest = max((r["macs"] for r in rows), default=0)
    return ("G", 1e9) if biggest >= 1e9 else ("M", 1e6)


def _fmt(value, spec: str) -> str:
    return "" if value is None else spec.format(value)


def measure_label(rows: list[dict]) -> str:
    """The device the rows' cost was measured on ("cpu", "cuda"), or "" when none was
    measured; "mixed" when they differ (each row's CSV column says which)."""
    devices = {r["measure_device"] for r in rows if r.get("measure_device")}
    return "" if not devices else devices.pop() if len(devices) == 1 else "mixed"


def short_name(row: dict) -> str:
    """The one knob a strategy turned ("d=9.29" for depth, "phi=3.84" for compound, "base"
    for the baseline): full names such as `b0@d=0.161506,w=0.385543,r=0.160714,phi=3.84`
    would widen every table. Rows of other strategies keep their full name."""
    try:
        v = parse_name(row["model"])
    except ValueError:
        return row["model"]
    knob = {"baseline": "base", "depth": f"d={v.d:.3g}", "width": f"w={v.w:.3g}",
            "resolution": f"res={v.resolution}", "compound": f"phi={v.phi:g}",
            "fast": f"fast={v.fast:g}"}
    return knob.get(row["strategy"], row["model"])


def name_notes(rows: list[dict]) -> list[str]:
    """'depth d=9.29: b0@d=9.29,res=36,phi=-10', once per model: the full names, for the list
    below the tables."""
    return [f"{r['strategy']} {short_name(r)} (level {r['level']}): {r['model']}" for r in rows]


def display_rows(rows: list[dict]) -> list[dict]:
    """The models table as people read it: what each model is and how accurate."""
    unit, scale = macs_unit(rows)
    return [{
        "strategy": r["strategy"], "level": r["level"], "model": short_name(r),
        "d": f"{r['d']:.3g}", "w": f"{r['w']:.3g}", "r": f"{r['r']:.3g}", "res": r["res"],
        "params(M)": f"{r['params'] / 1e6:.3f}", f"MACs({unit})": f"{r['macs'] / scale:.4g}",
        "ratio to target": f"{r['ratio']:.3f}",
        "top-1 (%)": stats.format_pm(r["top1_mean"], r["top1_std"], r["n"]),
        "n": f"{r['n']}/{r['planned']}",
        "best epoch": "" if r["best_epoch"] is None else f"{r['best_epoch']:g}",
    } for r in rows]


def cost_rows(rows: list[dict]) -> list[dict]:
    """The measured-cost table: each run's own training time (mean over seeds) and, measured
    once per model, training speed, batch-1 latency and peak memory (columns name the device)."""
    device = measure_label(rows)
    return [{
        "strategy": r["strategy"], "level": r["level"], "model": short_name(r),
        "top-1 (%)": _fmt(r["top1_mean"], "{:.2f}"),
        "wall time (s)": _fmt(r["wall_time_s"], "{:.0f}"),
        **measured_columns(r, device),
    } for r in rows]


def measured_columns(row: dict, device: str) -> dict:
    """A model's measured speed, batch-1 latency and peak memory as table cells, the columns
    naming the device they were measured on."""
    on = f", {device}" if device else ""
    return {f"train (img/s{on})": _fmt(row.get("train_img_s"), "{:.0f}"),
            f"latency (ms{on})": _fmt(row.get("latency_ms"), "{:.2f}"),
            f"peak (MiB{on})": _fmt(row.get("peak_mib"), "{:.1f}")}


def table7_rows(rows: list[dict], data: str = "ours") -> tuple[list[dict], str | None]:
    """The paper's Table 7 (ImageNet) beside ours (on `data`) at the level closest to the
    paper's (~4.6x B0). The column names say which dataset each number is on."""
    levels = sorted({r["level"] for r in rows if r["strategy"] != "baseline"})
    if not rows:
        return [], None
    base = next((r for r in rows if r["strategy"] == "baseline"), None)
    base_macs = base["macs"] if base else None

    def factor(level):
        r = next(r for r in rows if r["level"] == level)
        return r["target_macs"] / base_macs if base_macs else None

    chosen = None
    if levels and base_macs:
        chosen = min(levels, key=lambda lv: abs(math.log(factor(lv) / PAPER_LEVEL)))
    elif levels:
        chosen = levels[-1]
    out = []
    for strategy in (s for s in STRATEGIES if s in PAPER_TABLE7):  # fast came later
        paper_model, paper_flops, paper_top1 = PAPER_TABLE7[strategy]
        ours = next((r for r in rows if r["strategy"] == strategy
                     and (strategy == "baseline" or r["level"] == chosen)), None)
        if ours is None:
            continue
        delta = (ours["top1_mean"] - base["top1_mean"]
                 if base and ours["top1_mean"] is not None and base["top1_mean"] is not None
                 else None)
        out.append({
            "strategy": strategy,
            "paper model": paper_model, "paper FLOPs(B)": f"{paper_flops:g}",
            "paper top-1 (ImageNet)": f"{paper_top1:.1f}",
            "paper vs B0": f"{paper_top1 - PAPER_TABLE7['baseline'][2]:+.1f}",
            "our model": short_name(ours),
            "our d/w/r": f"{ours['d']:.3g}/{ours['w']:.3g}/{ours['r']:.3g}",
            "our MACs vs base": (f"{ours['macs'] / base_macs:.2f}x" if base_macs else ""),
            f"our top-1 ({data})": stats.format_pm(ours["top1_mean"], ours["top1_std"], ours["n"]),
            "ours vs base": "" if delta is None else f"{delta:+.2f}",
        })
    return out, chosen


def comparison_rows(comparisons: list[stats.Comparison]) -> list[dict]:
    def f(x, fmt="{:+.2f}"):
        return "" if x is None else fmt.format(x)
    return [{
        "level": c.level, "compound vs": c.other, "n": c.n,
        "compound top-1": f(c.compound_mean, "{:.2f}"), "other top-1": f(c.other_mean, "{:.2f}"),
        "mean diff": f(c.diff), "95% CI": ("" if c.ci_low is None
                                           else f"[{c.ci_low:+.2f}, {c.ci_high:+.2f}]"),
        "p (paired t)": "" if c.p is None else stats.format_p(c.p),
        "p (Holm)": "" if c.p_adj is None else stats.format_p(c.p_adj), "verdict": c.verdict,
    } for c in comparisons]


RUN_COLUMNS = ["key", "strategy", "level", "seed", "model", "dataset", "epochs", "recipe",
               "subset", "status", "final_top1", "best_top1", "best_epoch", "wall_time_s",
               "effscale"]


def run_rows(plan: dict, runs: dict[str, dict]) -> list[dict]:
    """One row per planned run (`runs.csv`), finished or not: what `effscale compare` merges
    across studies, and what a notebook reads without parsing directories."""
    version = (plan.get("environment") or {}).get("effscale", "")
    out = []
    for key, entry in plan["runs"].items():
        run = runs.get(key) or {"summary": {}, "finished": False, "metrics": []}
        summary, train = run["summary"], entry.get("train", {})
        status = ("finished" if run["finished"] else "partial" if run["metrics"] else
                  "not started")
        out.append({
            "key": key, "strategy": entry["strategy"], "level": entry["level"],
            "seed": entry["seed"], "model": entry["model"], "dataset": train.get("data"),
            "epochs": train.get("epochs"), "recipe": train.get("recipe"),
            "subset": train.get("subset"), "status": status,
            **{k: summary.get(k) if run["finished"] else None
               for k in ("final_top1", "best_top1", "best_epoch", "wall_time_s")},
            "effscale": version,
        })
    return out
