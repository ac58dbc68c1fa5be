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
             "planned": r["planned"], "train_time_s": r["wall_time_s"]}
            for epochs, res in sorted(results.items()) for r in res["rows"]]


def change_rows(results: dict[int, dict]) -> list[dict]:
    """Per model: top-1 at each budget, the change from the budget before, and whether the
    last change is within PLATEAU_POINTS (near the plateau)."""
    budgets = sorted(results)
    by_model: dict[tuple, dict[int, dict]] = {}
    for epochs in budgets:
        for r in results[epochs]["rows"]:
            by_model.setdefault(model_key(r), {})[epochs] = r
    out = []
    for key in sorted(by_model, key=lambda k: (STRATEGIES.index(k[0]), k[1])):
        rows = by_model[key]
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
        top = rows.get(budgets[-1])
        line[f"train time at {budgets[-1]} ep (s)"] = (
            "" if not top or top["wall_time_s"] is None else f"{top['wall_time_s']:.0f}")
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
    if len(budgets) > 1 and all(m for _, m in moved):
        far = [(s, float(m)) for s, m in moved if abs(float(m)) > PLATEAU_POINTS]
        before = budgets[-2]
        if not far:
            parts.append(f"Every strategy's mean moved by at most {PLATEAU_POINTS} points from "
                         f"{before} to {top} epochs: the verdict is on networks near their "
                         f"plateau.")
        else:
            gains = ", ".join(f"{s} {g:+.2f}" for s, g in far)
            parts.append(f"Not yet at the plateau: from {before} to {top} epochs {gains} "
                         f"points (more than {PLATEAU_POINTS}), so the verdict is on networks "
                         f"still improving.")
    elif len(budgets) > 1:
        parts.append("The plateau cannot be judged yet: some budgets have no finished runs.")
    ranks = {e: ranking(results[e]) for e in done}
    verdicts = {e: {(c.level, c.other): c.verdict for c in results[e]["comparisons"]}
                for e in done}
    if len(done) > 1:
        orders = {e: " > ".join(r) for e, r in ranks.items()}
        if len(set(orders.values())) == 1:
            parts.append(f"The ranking is the same at every budget ({orders[done[0]]}).")
        else:
            parts.append("The ranking changes with the budget: " + "; ".join(
                f"{e} epochs: {o}" for e, o in orders.items()) + ".")
        pairs = sorted({k for v in verdicts.values() for k in v})
        shifted = [f"compound vs {other} at {level}: " + ", ".join(
            f"{verdicts[e].get((level, other), 'not run')} at {e}" for e in done)
            for level, other in pairs
            if len({verdicts[e].get((level, other)) for e in done}) > 1]
        if shifted:
            parts.append("The Holm-corrected verdicts depend on the budget: "
                         + "; ".join(shifted) + ".")
        else:
            parts.append("The Holm-corrected verdicts are the same at every budget.")
    return " ".join(parts)


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


CSV_COLUMNS = ["epochs", "strategy", "level", "model", "params", "macs", "top1_mean",
               "top1_std", "n", "planned", "train_time_s"]


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
    md = [f"# Results: {title}", "", "## Conclusion", "", text, ""]
    md += [f"![{name}](plots/{name}.png)" for name in figures] + [""]
    md += ["## Top-1 at each budget (mean ± std over seeds) and the change per budget", "",
           render(changes, "markdown") if changes else "(no rows)", "",
           "## Compound vs the other strategies at each budget (paired over seeds, "
           "Holm-corrected within each budget)", "",
           render(comparisons, "markdown") if comparisons else "(none)", "",
           "## Ranking by mean top-1", ""]
    md += [f"- {e} epochs: {' > '.join(ranking(res))}" for e, res in sorted(results.items())]
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
    missing = [(e, sum(r["planned"] - r["n"] for r in rs["rows"]))
               for e, rs in sorted(res["results"].items())]
    s: list = [Para(res["conclusion"])]
    if any(m for _, m in missing):
        s.append(Note("Partial: " + ", ".join(f"{m} run(s) of the {e}-epoch budget unfinished"
                                              for e, m in missing if m)
                      + ". Re-run the command to continue."))
    for name, paths in res["figures"].items():
        s.append(Figure(Path(paths[0]), "Top-1 of each strategy against the training budget "
                                        "(error bars: std over seeds)"))
    s += [Heading("Top-1 at each budget"),
          Para(f"Mean ± std over seeds; 'plateau' says whether the last budget moved the mean "
               f"by at most {PLATEAU_POINTS} points. Train time: one run's measured training "
               f"time on {record.get('environment', {}).get('device', 'the device used')}."),
          Table(res["changes"]),
          Heading("Compound vs the other strategies at each budget"),
          Table(res["comparisons"]),
          Heading("Ranking by mean top-1"),
          Bullets([f"{e} epochs: {' > '.join(ranking(r))}"
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
