"""Results of a study at several training budgets (`experiments.budgets`): how each strategy's
top-1 moves with the epochs, whether the top budget is near the plateau, the Holm-corrected
comparison at each budget, and whether the ranking of the strategies is stable across budgets.

Everything is read from the sub-studies' own results (`results.write_results`), so the
combined tables can be rewritten at any time, also from a partly finished study.
"""

from __future__ import annotations

from pathlib import Path

from ..io.files import write_text
from ..io.records import load_study
from ..io.table import render
from ..model.profile import STRATEGIES
from . import stats
from .render import Bullets, Figure, Heading, Note, Para, Pre, Table, to_html, to_markdown
from .tables import measured_columns, short_name

PLATEAU_POINTS = 0.3  # near the plateau: the top budget moves a 3-seed mean by <= this


def _budgets(study_dir: Path) -> dict[int, dict]:
    """{epochs: write_results() of that budget's sub-study}."""
    from .results import write_results
    record = load_study(study_dir)
    return {int(e): write_results(study_dir / name) for e, name in record["studies"].items()}


def model_key(row: dict) -> tuple[str, str]:
    return row["strategy"], row["level"]


def budget_rows(results: dict[int, dict]) -> list[dict]:
    """One row per (budget, strategy, level): the long table of results.csv."""
    return [{"epochs": epochs, "strategy": r["strategy"], "level": r["level"],
             "model": r["model"], "params": r["params"], "macs": r["macs"],
             "top1_mean": r["top1_mean"], "top1_std": r["top1_std"], "n": r["n"],
             "planned": r["planned"], "train_time_s": r["wall_time_s"],
             **{k: r[k] for k in MEASURED}}
            for epochs, res in sorted(results.items()) for r in res["rows"]]


MEASURED = ("train_img_s", "latency_ms", "peak_mib", "measure_device")


def by_model(results: dict[int, dict]) -> list[tuple[tuple[str, str], dict[int, dict]]]:
    """[((strategy, level), {epochs: row})] in the strategies' order: each model across the
    budgets that have it."""
    found: dict[tuple, dict[int, dict]] = {}
    for epochs in sorted(results):
        for r in results[epochs]["rows"]:
            found.setdefault(model_key(r), {})[epochs] = r
    return [(key, found[key])
            for key in sorted(found, key=lambda k: (STRATEGIES.index(k[0]), k[1]))]


def cost_rows(results: dict[int, dict]) -> list[dict]:
    """Per model: each run's training time at each budget (mean over seeds, on the machine
    that trained it) and the cost measured once per model (shared by every budget)."""
    budgets = sorted(results)
    out = []
    for key, rows in by_model(results):
        any_row = next(iter(rows.values()))
        line = {"strategy": key[0], "level": key[1], "model": short_name(any_row)}
        for epochs in budgets:
            t = rows.get(epochs, {}).get("wall_time_s")
            line[f"train time {epochs} ep (s)"] = "" if t is None else f"{t:.0f}"
        line.update(measured_columns(any_row, any_row.get("measure_device") or ""))
        out.append(line)
    return out


def change_rows(results: dict[int, dict]) -> list[dict]:
    """Per model: top-1 at each budget, the change from the budget before, and whether the
    last change is within PLATEAU_POINTS (near the plateau)."""
    budgets = sorted(results)
    out = []
    for key, rows in by_model(results):
        line = {"strategy": key[0], "level": key[1]}
        previous = None
        for epochs in budgets:
            r = rows.get(epochs)
            mean = r["top1_mean"] if r else None
            line[f"{epochs} ep"] = stats.format_pm(mean, r["top1_std"] if r else None,
                                                    r["n"] if r else 0)
            if epochs != budgets[0]:
                line[f"change to {epochs}"] = ("" if mean is None or previous is None
                                               else f"{mean - previous:+.2f}")
            previous = mean
        last = line.get(f"change to {budgets[-1]}", "")
        line["plateau"] = "" if not last else ("yes" if abs(float(last)) <= PLATEAU_POINTS
                                               else "no")
        out.append(line)
    return out


def comparison_rows(results: dict[int, dict]) -> list[dict]:
    """The Holm-corrected paired comparisons of every budget (each budget its own family)."""
    out = []
    for epochs, res in sorted(results.items()):
        for c in res["comparisons"]:
            out.append({"epochs": epochs, "level": c.level, "compound vs": c.other, "n": c.n,
                        "mean diff": "" if c.diff is None else f"{c.diff:+.2f}",
                        "95% CI": "" if c.ci_low is None else f"[{c.ci_low:+.2f}, "
                                                              f"{c.ci_high:+.2f}]",
                        "p (Holm)": "" if c.p_adj is None else stats.format_p(c.p_adj),
                        "verdict": c.verdict})
    return out


def ranking(res: dict) -> list[str]:
    """Strategies (and levels) by mean top-1, best first; models with no finished run are
    left out."""
    rows = [r for r in res["rows"] if r["top1_mean"] is not None]
    rows.sort(key=lambda r: -r["top1_mean"])
    levels = {r["level"] for r in rows if r["strategy"] != "baseline"}
    return [r["strategy"] if len(levels) <= 1 or r["strategy"] == "baseline"
            else f"{r['strategy']}@{r['level']}" for r in rows]


def conclusion(results: dict[int, dict]) -> str:
    """What the budgets say, built only from their numbers: the verdict at the top budget and
    how near its plateau it stands, then whether the ranking and the verdicts hold across
    budgets."""
    budgets = sorted(results)
    top = budgets[-1]
    done = [e for e in budgets if any(r["n"] for r in results[e]["rows"])]
    if not done:
        return "No conclusion yet: no budget has a finished run."
    parts = [f"At the top budget ({top} epochs): {results[top]['conclusion']}"]
    changes = change_rows(results)
    moved = [(c["strategy"], c.get(f"change to {top}", "")) for c in changes]
    measured = [(strategy, float(m)) for strategy, m in moved if m]
    far = [(strategy, g) for strategy, g in measured if abs(g) > PLATEAU_POINTS]
    before = budgets[-2] if len(budgets) > 1 else None
    if far:
        gains = ", ".join(f"{strategy} {g:+.2f}" for strategy, g in far)
        parts.append(f"Not yet at the plateau: from {before} to {top} epochs {gains} points "
                     f"(more than {PLATEAU_POINTS}), so the verdict is on networks still "
                     f"improving" + ("" if len(measured) == len(moved) else
                                     f" ({len(moved) - len(measured)} of {len(moved)} "
                                     f"models not yet measured at both budgets)") + ".")
    elif measured and len(measured) == len(moved):
        parts.append(f"Every strategy's mean moved by at most {PLATEAU_POINTS} points from "
                     f"{before} to {top} epochs: the verdict is on networks near their "
                     f"plateau.")
    elif before is not None:
        parts.append(f"The plateau cannot be judged yet: not every strategy has finished "
                     f"runs at {before} and {top} epochs.")
    if len(done) > 1:
        parts += _stability(results, done)
    return " ".join(parts)


def _stability(results: dict[int, dict], done: list[int]) -> list[str]:
    """Whether the ranking and the Holm-corrected verdicts hold across the budgets, judged only
    on what every compared budget has: the strategies finished at all of them, the
    comparisons tested at more than one."""
    common = set.intersection(*(set(ranking(results[e])) for e in done))
    orders = {e: " > ".join(r for r in ranking(results[e]) if r in common) for e in done}
    out = []
    if len(common) < 2:
        out.append("No two strategies are finished at every budget yet: the ranking across "
                   "budgets cannot be compared.")
    elif len(set(orders.values())) == 1:
        out.append(f"The ranking is the same at every budget ({orders[done[0]]}).")
    else:
        out.append("The ranking changes with the budget: " + "; ".join(
            f"{e} epochs: {o}" for e, o in orders.items()) + ".")
    if len(common) < len(set().union(*(ranking(results[e]) for e in done))):
        out[-1] = out[-1][:-1] + " (among the strategies finished at every budget)."
    verdicts = {e: {(c.level, c.other): c.verdict for c in results[e]["comparisons"]
                    if c.verdict != "untested"} for e in done}
    pairs = sorted({k for v in verdicts.values() for k in v})
    tested = [(pair, [e for e in done if pair in verdicts[e]]) for pair in pairs]
    tested = [(pair, budgets) for pair, budgets in tested if len(budgets) > 1]
    shifted = [f"compound vs {other} at {level}: " + ", ".join(
        f"{verdicts[e][(level, other)]} at {e}" for e in budgets)
        for (level, other), budgets in tested
        if len({verdicts[e][(level, other)] for e in budgets}) > 1]
    if shifted:
        out.append("The Holm-corrected verdicts depend on the budget: " + "; ".join(shifted)
                   + ".")
    elif tested:
        out.append("The Holm-corrected verdicts are the same at every budget where they were "
                   "tested.")
    return out


def series(results: dict[int, dict]) -> dict:
    """{strategy: [(epochs, mean, std), ...]} of the models at the top level (and the
    baseline), for the accuracy-vs-epochs figure."""
    out: dict[str, list] = {}
    for epochs, res in sorted(results.items()):
        levels = [r["level"] for r in res["rows"] if r["strategy"] != "baseline"]
        top = levels[-1] if levels else "1"
        for r in res["rows"]:
            if r["top1_mean"] is None or (r["strategy"] != "baseline" and r["level"] != top):
                continue
            out.setdefault(r["strategy"], []).append((epochs, r["top1_mean"], r["top1_std"]))
    return out


def _unfinished(results: dict[int, dict]) -> str:
    """'N of M runs of the E-epoch budget unfinished, ...', or '' when every run finished."""
    missing = [(e, sum(r["planned"] - r["n"] for r in res["rows"]),
                sum(r["planned"] for r in res["rows"])) for e, res in sorted(results.items())]
    return ", ".join(f"{m} of {n} runs of the {e}-epoch budget unfinished"
                     for e, m, n in missing if m)


CSV_COLUMNS = ["epochs", "strategy", "level", "model", "params", "macs", "top1_mean",
               "top1_std", "n", "planned", "train_time_s", *MEASURED]


def write_budget_results(study_dir: str | Path) -> dict:
    """results.csv, results.md and plots/accuracy_vs_epochs of a budgets directory."""
    from . import plots
    study_dir = Path(study_dir)
    record = load_study(study_dir)
    results = _budgets(study_dir)
    cfg = record["config"]
    title = f"{cfg['base']} on {cfg['data']} at {', '.join(map(str, record['budgets']))} epochs"
    text = conclusion(results)
    figures = {}
    points = series(results)
    if points:
        figures["accuracy_vs_epochs"] = plots.accuracy_vs_epochs(
            points, study_dir / "plots" / "accuracy_vs_epochs",
            title=f"Top-1 against the training budget, {cfg['base']} on {cfg['data']}")
    changes, comparisons = change_rows(results), comparison_rows(results)
    write_text(study_dir / "results.csv",
               render(budget_rows(results), "csv", CSV_COLUMNS) + "\n")
    md = [f"# Results: {title}", ""]
    unfinished = _unfinished(results)
    if unfinished:
        md += [f"**Partial:** {unfinished}. Re-run the study's command to continue.", ""]
    md += ["## Conclusion", "", text, ""]
    md += [f"![{name}](plots/{name}.png)" for name in figures] + [""]
    md += ["## Top-1 at each budget (mean ± std over seeds) and the change per budget", "",
           render(changes, "markdown") if changes else "(no rows)", "",
           "## Measured cost", "", render(cost_rows(results), "markdown"), "",
           "## Compound vs the other strategies at each budget (paired over seeds, "
           "Holm-corrected within each budget)", "",
           render(comparisons, "markdown") if comparisons else "(none)", "",
           "## Ranking by mean top-1", ""]
    md += [f"- {e} epochs: {' > '.join(ranking(res)) or '(no finished runs)'}"
           for e, res in sorted(results.items())]
    md += ["", "Each budget's own tables: " + ", ".join(
        f"[{name}]({name}/results.md)" for name in record["studies"].values()), ""]
    write_text(study_dir / "results.md", "\n".join(md) + "\n")
    return {"record": record, "results": results, "conclusion": text, "changes": changes,
            "comparisons": comparisons, "figures": figures,
            "rows": budget_rows(results)}


def budget_report(study_dir: str | Path, summary: dict | None = None, *, echo=print) -> dict:
    """report.html and report.md of a budgets directory: the verdict, the figure, the
    tables, then how to reproduce it."""
    study_dir = Path(study_dir)
    res = summary or write_budget_results(study_dir)
    record, cfg = res["record"], res["record"]["config"]
    title = (f"effscale study: {cfg['base']} on {cfg['data']} at "
             f"{', '.join(map(str, record['budgets']))} epochs")
    s: list = [Para(res["conclusion"])]
    unfinished = _unfinished(res["results"])
    if unfinished:
        s.append(Note(f"Partial: {unfinished}. Re-run the study's command to continue."))
    for name, paths in res["figures"].items():
        s.append(Figure(Path(paths[0]), "Top-1 of each strategy against the training budget "
                                        "(error bars: std over seeds)"))
    s += [Heading("Top-1 at each budget"),
          Para(f"Mean ± std over seeds; 'plateau' says whether the last budget moved the mean "
               f"by at most {PLATEAU_POINTS} points."),
          Table(res["changes"]),
          Heading("Measured cost"),
          Para(f"Train time: each run's own training time at each budget, mean over seeds, on "
               f"{record.get('environment', {}).get('device', 'the machine that trained it')}; "
               f"speed, batch-1 latency and peak memory: measured once per model before "
               f"training (each budget's results.md says how)."),
          Table(cost_rows(res["results"])),
          Heading("Compound vs the other strategies at each budget"),
          Table(res["comparisons"]),
          Heading("Ranking by mean top-1"),
          Bullets([f"{e} epochs: {' > '.join(ranking(r)) or '(no finished runs)'}"
                   for e, r in sorted(res["results"].items())]),
          Para("Each budget is a study of its own, with its own report: "
               + ", ".join(f"{name}/report.html" for name in record["studies"].values())),
          Heading("Reproduce"), Pre("\n".join(record.get("commands", [])) or "(unknown)"),
          Heading("Environment"),
          Table([{"key": k, "value": v} for k, v in record.get("environment", {}).items()]
                + [{"key": "wall time", "value": stats.format_wall(record.get("wall_time_s"))}])]
    paths = {"html": study_dir / "report.html", "md": study_dir / "report.md"}
    write_text(paths["md"], to_markdown(title, s, study_dir))
    write_text(paths["html"], to_html(title, s, study_dir))
    echo(f"report: {paths['html']} and {paths['md']}")
    return {k: str(v) for k, v in paths.items()}
