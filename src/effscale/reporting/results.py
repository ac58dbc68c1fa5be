"""Results of a study (or a coefficient search) as files: `results.csv`, `results.md`, plots,
and `report.html` + `report.md`.

Everything is recomputed from the run directories (summary.json, metrics.csv) and the plan
in study.json, so a report can be regenerated at any time, also from a partly finished study.
A report is a list of sections rendered twice, to Markdown and to self-contained HTML (inline
CSS, images as data URIs, no script, no network), so the two never disagree.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..io.files import write_text
from ..io.records import load_study, read_run, read_runs
from ..io.table import render
from ..model.profile import STRATEGIES
from . import stats
from .render import Bullets, Figure, Heading, Note, Para, Pre, Table
from .tables import (PAPER_LEVEL, RUN_COLUMNS, comparison_rows, cost_rows, display_rows,
                     macs_unit, measure_label, name_notes, run_rows, table7_rows)

# -- reading runs ---------------------------------------------------------------------------


def _num(value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


# -- the study's tables (pure functions of plan + runs) -------------------------------------

def model_rows(plan: dict, runs: dict[str, dict], metric: str = "final_top1") -> list[dict]:
    """One row per (strategy, level) model: the plan's numbers and the seeds' results.

    `runs` maps run key -> read_run(); only finished runs count."""
    rows = []
    measured = plan.get("measured") or {}
    for m in plan["models"]:
        cost = measured.get(m["model"]) or {}
        keys = [k for k, r in plan["runs"].items()
                if r["strategy"] == m["strategy"] and r["level"] == m["level"]]
        done = {plan["runs"][k]["seed"]: runs[k]["summary"] for k in keys
                if k in runs and runs[k]["finished"]}
        top1 = {s: _num(v.get(metric)) for s, v in done.items()}
        mean, std, n = stats.mean_std(top1.values())
        rows.append({
            "strategy": m["strategy"], "level": m["level"], "model": m["model"],
            "d": m["d"], "w": m["w"], "r": m["r"], "res": m["resolution"],
            "params": m["params"], "macs": m["macs"], "target_macs": m["target_macs"],
            "ratio": round(m["macs"] / m["target_macs"], 4),
            "top1_mean": None if mean is None else round(mean, 3),
            "top1_std": None if std is None else round(std, 3),
            "n": n, "planned": len(keys),
            "best_top1_mean": _round(_mean(_num(v.get("best_top1")) for v in done.values())),
            "best_epoch": _round(_mean(_num(v.get("best_epoch")) for v in done.values()), 1),
            "wall_time_s": _round(_mean(_num(v.get("wall_time_s")) for v in done.values()), 1),
            "train_img_s": cost.get("train_img_s"), "latency_ms": cost.get("latency_ms"),
            "peak_mib": cost.get("peak_mib"), "measure_device": cost.get("device"),
            "per_seed": top1,
        })
    return rows


def _round(x, digits=3):
    return None if x is None else round(x, digits)


CSV_COLUMNS = ["strategy", "level", "model", "d", "w", "r", "res", "params", "macs",
               "target_macs", "ratio", "top1_mean", "top1_std", "n", "best_top1_mean",
               "best_epoch", "wall_time_s", "train_img_s", "latency_ms", "peak_mib",
               "measure_device"]


def curves(plan: dict, runs: dict[str, dict]) -> dict:
    """{level: {strategy: [(epoch, mean val top-1 over seeds), ...]}}; the baseline is shown
    in every level's panel, as the starting point of every scaling strategy."""
    by_model: dict[tuple, dict[int, list[float]]] = {}
    for key, r in plan["runs"].items():
        run = runs.get(key)
        if not run:
            continue
        for row in run["metrics"]:
            epoch, top1 = _num(row.get("epoch")), _num(row.get("top1"))
            if epoch is None or top1 is None:
                continue
            by_model.setdefault((r["strategy"], r["level"]), {}).setdefault(
                int(epoch), []).append(top1)
    levels = sorted({lv for (s, lv) in by_model if s != "baseline"}) or ["1"]
    out = {}
    for level in levels:
        panel = {}
        for (strategy, lv), epochs in sorted(by_model.items(),
                                             key=lambda kv: STRATEGIES.index(kv[0][0])):
            if lv == level or strategy == "baseline":
                panel[strategy] = [(e, sum(v) / len(v)) for e, v in sorted(epochs.items())]
        out[level] = panel
    return out


# -- writing the results --------------------------------------------------------------------

PLATEAU = "plateau"     # sub-study of the same models trained for twice the epochs, 1 seed
PLATEAU_POINTS = 0.3    # a run has plateaued when doubling its epochs moves top-1 by <= this


def plateau_rows(study_dir: Path, plan: dict, runs: dict[str, dict]) -> list[dict]:
    """Is each model trained to its plateau? Seed 0 of every model of `study_dir/plateau/`
    (the same study with twice the epochs) beside seed 0 of the study itself; empty when
    there is no such sub-study."""
    sub = Path(study_dir) / PLATEAU
    if not (sub / "study.json").is_file():
        return []
    longer = load_study(sub)
    out = []
    for key, r in longer["runs"].items():
        run, base = read_run(sub / "runs" / key), runs.get(key)
        if not (run["finished"] and base and base["finished"]):
            continue
        short = base["summary"]["final_top1"]
        long = run["summary"]["final_top1"]
        out.append({"strategy": r["strategy"], "level": r["level"], "model": r["model"],
                    f"top-1 at {plan['config']['epochs']} ep": f"{short:.2f}",
                    f"top-1 at {longer['config']['epochs']} ep": f"{long:.2f}",
                    "change": f"{long - short:+.2f}",
                    "plateau": "yes" if abs(long - short) <= PLATEAU_POINTS else "no"})
    return out


def cost_note(plan: dict) -> str:
    """What the measured columns are and where they were measured (or that they were not)."""
    measured = list((plan.get("measured") or {}).values())
    if not measured:
        return ("Cost not measured: `effscale report DIR --measure` (or the study's command "
                "again) measures it without training.")
    where = sorted({f"{m.get('hardware') or m['device']} ({m['device']}, batch {m['batch']}, "
                    f"{m['precision']}" + (f", {m['threads']} thread" if m.get("threads") else "")
                    + ")" for m in measured})
    trained = (plan.get("environment") or {}).get("device")
    text = (f"Measured cost, once per model (effscale.model.measure, medians of "
            f"{measured[0].get('rounds', '?')} interleaved rounds): training and batch-1 "
            f"latency on {'; '.join(where)}; peak memory of one training step by "
            f"{measured[0]['peak_method']}. Wall time: each run's own training time on the "
            f"machine that trained it ({trained or 'unknown'}), mean over seeds.")
    if trained and any(m.get("hardware") != trained for m in measured):
        text += (" The cost was measured on another device than the one that trained the "
                 "runs: compare the models with each other, not with the wall time.")
    return text


def _time_unit(rows) -> tuple[str, float]:
    longest = max((r["wall_time_s"] or 0 for r in rows), default=0)
    return ("min", 60.0) if longest >= 600 else ("s", 1.0)


def _figures(rows: list[dict], curve_data: dict, plot_dir: Path, title: str) -> dict:
    """{name: [png, svg]}: top-1 against MACs, parameters, each run's measured training time
    and the measured batch-1 latency (each drawn from the rows that have its x), and the
    training curves."""
    from . import plots
    figures = {}

    def against(name, key, xlabel, scale, heading):
        if any(r["top1_mean"] is not None and r[key] is not None for r in rows):
            figures[name] = plots.accuracy_vs(rows, key, plot_dir / name, xlabel=xlabel,
                                              scale=scale, title=heading)
    unit, scale = macs_unit(rows)
    against("accuracy_vs_macs", "macs", f"MACs ({unit})", scale,
            f"Scaling {title} (cf. paper Figure 8)")
    against("accuracy_vs_params", "params", "parameters (M)", 1e6,
            f"Top-1 vs parameters, {title}")
    t_unit, t_scale = _time_unit(rows)
    against("accuracy_vs_train_time", "wall_time_s",
            f"training time per run ({t_unit}, measured, mean over seeds)", t_scale,
            f"Top-1 vs training time, {title}")
    against("accuracy_vs_latency", "latency_ms",
            f"batch-1 latency (ms, measured on {measure_label(rows)})", 1.0,
            f"Top-1 vs batch-1 latency, {title}")
    if any(curve_data.values()):
        figures["training_curves"] = plots.training_curves(curve_data,
                                                           plot_dir / "training_curves")
    return figures


def write_results(study_dir: str | Path) -> dict:
    """results.csv, results.md and plots/ of a study directory; returns what it computed."""
    study_dir = Path(study_dir)
    plan = load_study(study_dir)
    runs = read_runs(study_dir, plan)
    rows = model_rows(plan, runs)
    t7, t7_level = table7_rows(rows, plan["config"]["data"])
    plateau = plateau_rows(study_dir, plan, runs)
    top1 = {(r["strategy"], r["level"]): r["per_seed"] for r in rows}
    levels = list(dict.fromkeys(r["level"] for r in rows if r["strategy"] == "compound"))
    comparisons = stats.compare_all(top1, levels)
    best = max((r["top1_mean"] for r in rows if r["top1_mean"] is not None), default=None)
    text = stats.at_chance(best, plan["num_classes"]) or stats.conclusion(comparisons)
    title = f"{plan['config']['base']} on {plan['config']['data']}"
    figures = _figures(rows, curves(plan, runs), study_dir / "plots", title)
    write_text(study_dir / "results.csv", render(rows, "csv", CSV_COLUMNS) + "\n")
    write_text(study_dir / "runs.csv", render(run_rows(plan, runs), "csv", RUN_COLUMNS) + "\n")
    md = [f"# Results: {title}", "", "## Conclusion", "", text, ""]
    md += [f"![{name}](plots/{name}.png)" for name in figures if name == "accuracy_vs_macs"]
    md += ["", "## Models (top-1 = final-epoch validation accuracy, mean ± std over seeds)", "",
           render(display_rows(rows), "markdown"), "", "## Measured cost", "",
           render(cost_rows(rows), "markdown"), "", cost_note(plan), "", "Model names:", ""]
    md += [f"- {line}" for line in name_notes(rows)]
    md += ["", f"## Beside the paper's Table 7 (our level {t7_level}: closest to the paper's "
           f"~{PAPER_LEVEL:.1f}x B0)", "", render(t7, "markdown") if t7 else "(no rows)", "",
           "## Compound vs each other strategy (paired over seeds)", "",
           render(comparison_rows(comparisons), "markdown") if comparisons else "(none)", ""]
    md += [f"- {c.level}: {c.meaning}" for c in comparisons]
    md += [""]
    if plateau:
        md += ["## Trained to the plateau? (seed 0, twice the epochs)", "",
               render(plateau, "markdown"), ""]
    md += [f"![{name}](plots/{name}.png)" for name in figures if name != "accuracy_vs_macs"]
    write_text(study_dir / "results.md", "\n".join(md) + "\n")
    return {"rows": rows, "table7": t7, "table7_level": t7_level, "comparisons": comparisons,
            "plateau": plateau,
            "conclusion": text, "figures": figures, "plan": plan, "runs": runs}


# -- the report -----------------------------------------------------------------------------

CAPTIONS = {
    "accuracy_vs_macs": "Top-1 against MACs per strategy (error bars: std over seeds), the "
                        "layout of the paper's Figure 8",
    "accuracy_vs_params": "Top-1 against parameters",
    "accuracy_vs_train_time": "Top-1 against the measured training time of one run (mean over "
                              "seeds, on the machine that trained it; error bars: std of top-1 "
                              "over seeds): what a budget of hours buys",
    "accuracy_vs_latency": "Top-1 against the measured batch-1 inference latency (median, "
                           "measured on {device}; error bars: std of top-1 over seeds): what "
                           "a latency budget buys",
    "training_curves": "Validation top-1 per epoch of every strategy, mean over seeds: a curve "
                       "still rising at its last epoch has not reached its plateau",
}


def study_sections(study_dir: Path, *, cams: bool, images: int, echo,
                    results: dict | None = None, data=None) -> tuple[str, list]:
    res = results or write_results(study_dir)
    plan, rows = res["plan"], res["rows"]
    cfg = plan["config"]
    title = f"effscale study: {cfg['base']} on {cfg['data']}"
    n_done = sum(1 for r in res["runs"].values() if r["finished"])
    n_all = len(plan["runs"])
    s: list = [Heading("Verdict"), Para(res["conclusion"])]
    if n_done < n_all:
        s.append(Note(f"Partial study: {n_done} of {n_all} runs finished; the numbers "
                          f"below use the finished runs only. Re-run the study command to "
                          f"resume."))
    if cfg["seeds"] < 2:
        s.append(Note("One seed per model: no error bars and no significance tests."))
    device = measure_label(rows)
    figures = [Figure(Path(paths[0]), CAPTIONS[name].format(device=device))
               for name, paths in res["figures"].items()]
    s += figures[:1]  # the verdict, then accuracy against MACs, then the tables
    s += [Heading("Models"),
          Para("top-1 is the final-epoch validation accuracy, mean ± sample std over seeds; "
                "d, w, r multiply the base's depth, width and resolution; ratio is the "
                "model's MACs over its level's target; the full model names are listed "
                "below the cost table."),
          Table(display_rows(rows)),
          Heading("Measured cost"), Table(cost_rows(rows)), Para(cost_note(plan)),
          Para("Model names:"), Bullets(name_notes(rows)),
          Heading("Setup"), Table(_setup_rows(plan, rows)),
          Heading("Beside the paper's Table 7"),
          Para(f"Paper: ImageNet, 350 epochs. Ours: {cfg['data']}, level "
                f"{res['table7_level']} (closest to the paper's ~{PAPER_LEVEL:.1f}x B0). Compare "
                f"the gains over the baseline, not the absolute numbers."),
          Table(res["table7"]),
          Heading("Compound vs each other strategy"),
          Para("Paired over seeds: the per-seed difference compound - other, its mean, 95% "
                "confidence interval and a two-sided paired t-test "
                "(scipy.stats.ttest_rel). Verdicts use the Holm-Bonferroni adjusted p over all "
                "the study's comparisons, so that the family as a whole keeps a 5% chance of "
                "any false 'better' or 'worse'; the raw p is shown beside it."),
          Table(comparison_rows(res["comparisons"])),
          Bullets([f"{c.level}: {c.meaning}" for c in res["comparisons"]])]
    if res["plateau"]:
        s += [Heading("Trained to the plateau?"),
              Para(f"Seed 0 of each model, trained again for twice the epochs (the same "
                    f"schedule stretched, in {PLATEAU}/): a change of at most "
                    f"{PLATEAU_POINTS} points means the study's epochs reach the plateau."),
              Table(res["plateau"])]
    s += [Heading("More plots"), *figures[1:], Heading("Class activation maps")]
    s.append(_cam_section(study_dir, plan, res["runs"], images, echo, data) if cams else
             Note("CAM figure skipped (--no-cams)."))
    s += _provenance(plan)
    return title, s


def _setup_rows(plan: dict, rows: list[dict]) -> list[dict]:
    cfg = plan["config"]
    return [
        {"setting": "base", "value": cfg["base"]},
        {"setting": "dataset", "value": f"{cfg['data']} ({plan['num_classes']} classes)"},
        {"setting": "levels", "value": ", ".join(f"{x:g}x" for x in cfg["levels"])
         or ", ".join(f"phi={x:g}" for x in cfg["phis"])},
        {"setting": "strategies", "value": ", ".join(cfg["strategies"])},
        {"setting": "seeds", "value": ", ".join(map(str, plan["seeds"]))},
        {"setting": "epochs", "value": cfg["epochs"]},
        {"setting": "recipe", "value": cfg["recipe"] or "engine default"},
        {"setting": "stem stride", "value": cfg["stem_stride"]},
        {"setting": "train subset", "value": cfg["subset"] or "all"},
        {"setting": "coefficients (alpha, beta, gamma)",
         "value": ", ".join(f"{c:g}" for c in cfg["coefficients"])
         if cfg["coefficients"] else "1.2, 1.1, 1.15 (paper)"},
        {"setting": "FLOPs matching", "value": f"every model within "
         f"{cfg['max_mismatch']:.0%} of its level's MACs (worst "
         f"{max(abs(r['ratio'] - 1) for r in rows):.1%})" if rows else ""},
        {"setting": "wall time", "value": stats.format_wall(plan.get("wall_time_s"))
         + (" (one pool with the other budgets' runs)" if plan.get("wall_time_shared") else "")},
    ]


def _provenance(plan: dict) -> list:
    """How to reproduce the study and where it ran."""
    env = plan.get("environment", {})
    return [Heading("Reproduce"),
            Para("The command(s) that produced this study (re-running resumes it):"),
            Pre("\n".join(plan.get("commands", [])) or "(unknown)"),
            Heading("Environment"),
            Table([{"key": k, "value": v} for k, v in env.items()]
             + [{"key": "seeds", "value": ", ".join(map(str, plan["seeds"]))},
                {"key": "study created", "value": plan.get("created")},
                {"key": "report generated",
                 "value": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}])]


def _cam_section(study_dir: Path, plan: dict, runs: dict, images: int, echo, data=None):
    """The side-by-side CAM figure of seed 0 of each model at the largest level (and the
    baseline), on `data` (Python datasets) or the study's dataset; a clear note instead when
    CAMs are unavailable or fail."""
    cfg = plan["config"]
    levels = [m["level"] for m in plan["models"] if m["strategy"] != "baseline"]
    top = levels[-1] if levels else "1"
    chosen = [(k, r) for k, r in plan["runs"].items() if r["seed"] == 0
              and (r["level"] == top or r["strategy"] == "baseline")
              and runs.get(k, {}).get("finished")]
    if not chosen:
        return Note("CAM figure: no finished seed-0 runs yet.")
    out_path = study_dir / "plots" / "cams.png"
    caption = (f"Grad-CAM of the same validation images, seed 0, level {top} "
               f"(and the baseline)")
    weights = [study_dir / "runs" / k / "last.safetensors" for k, _ in chosen]
    if out_path.is_file() and not all(w.is_file() for w in weights):
        # committed results keep each run's record but not its weights: keep the figure
        # drawn when they were there instead of losing it
        return Figure(out_path, caption + " (drawn when the runs' weights were present)")
    try:
        from ..explain.cam import compare_figure
        compare_figure([study_dir / "runs" / k for k, _ in chosen],
                       cfg["data"] if data is None else data, out_path,
                       images=images, method="gradcam",
                       labels=[r["strategy"] for _, r in chosen],  # it adds the model name
                       data_dir=cfg.get("data_dir"))
    except Exception as exc:  # CAMs are an extra: the report must still be written
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        echo(f"note: CAM figure unavailable ({type(exc).__name__}: {reason})")
        return Note(f"CAM figure unavailable: {type(exc).__name__}: {reason}")
    if not out_path.is_file():
        return Note("CAM figure unavailable: compare_figure wrote no file.")
    return Figure(out_path, caption)
