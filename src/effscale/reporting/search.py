"""The results of a coefficient search: candidates ranked, a recommendation only when the
seeds support one, the heat map, and the report sections."""

from __future__ import annotations

from pathlib import Path

from ..io.files import write_json, write_text
from ..io.records import load_record, read_runs, search_run_key
from ..io.table import render
from ..model.names import ALPHA, BETA, GAMMA
from .render import Bullets, Figure, Heading, Note, Para, Pre, Table
from .stats import CHANCE_MARGIN, format_pm, format_wall

PAPER = (ALPHA, BETA, GAMMA)


def ranked_rows(record: dict, top1: dict) -> list[dict]:
    """top1: run key -> final top-1 or None. Rows sorted by mean top-1 (best first).
    Pure; unfinished candidates sort last."""
    from .stats import mean_std
    rows = []
    for p in record["points"]:
        keys = [search_run_key(p["alpha"], p["beta"], s, p["paper"]) for s in record["seeds"]]
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


def search_rows(search_dir: Path) -> tuple[dict, list[dict]]:
    """(the search record, its candidates ranked by the finished runs' final top-1)."""
    record = load_record(search_dir, "search")
    top1 = {key: run["summary"].get("final_top1") if run["finished"] else None
            for key, run in read_runs(search_dir, record).items()}
    return record, ranked_rows(record, top1)


def write_search_results(search_dir) -> dict:
    from . import plots
    search_dir = Path(search_dir)
    record, rows = search_rows(search_dir)
    columns = ["rank", "alpha", "beta", "gamma", "product", "paper", "model", "params", "macs",
               "macs_vs_base", "top1_mean", "top1_std", "n"]
    write_text(search_dir / "search_results.csv", render(rows, "csv", columns) + "\n")
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
    write_text(search_dir / "search_results.md", "\n".join(md))
    return {"rows": rows, "best": best_info, "why": why, "paper_rank": paper_rank,
            "figure": figure,
            "record": record}


def _pm(row) -> str:
    return format_pm(row["top1_mean"], row["top1_std"], row["n"], "%")


def display(rows: list[dict]) -> list[dict]:
    return [{"rank": "" if r["rank"] is None else r["rank"],
             "alpha": f"{r['alpha']:g}", "beta": f"{r['beta']:g}", "gamma": f"{r['gamma']:g}",
             "a*b^2*g^2": f"{r['product']:.3f}", "": "paper" if r["paper"] else "",
             "model": r["model"], "params(M)": f"{r['params'] / 1e6:.3f}",
             "MACs vs base": f"{r['macs_vs_base']:.2f}x", "top-1 (%)": _pm(r)} for r in rows]


def search_sections(search_dir, results: dict | None = None) -> tuple[str, list]:
    """Report sections of a search directory (rendered by report.results.report)."""
    res = results or write_search_results(search_dir)
    record, cfg = res["record"], res["record"]["config"]
    title = f"effscale search: {cfg['base']} on {cfg['data']}"
    s: list = []
    if res["best"]:
        b = res["best"]
        s.append(Para(f"Best coefficients on this proxy budget: alpha={b['alpha']:g}, "
                       f"beta={b['beta']:g}, gamma={b['gamma']:g} ({b['top1']}). Use them with "
                       f"`effscale study --coefficients {b['coefficients']}` or in a model name "
                       f"(`{cfg['base']}@phi=2,alpha={b['alpha']:g},beta={b['beta']:g},"
                       f"gamma={b['gamma']:g}` when the base has no phi/res)."))
    else:
        s.append(Note(f"No recommendation: {res['why']}."))
    if res["paper_rank"]:
        s.append(Para(res["paper_rank"][0].upper() + res["paper_rank"][1:] + "."))
    if cfg["seeds"] < 2:
        s.append(Note("One seed per candidate: the ranking has no error bars."))
    s += [Heading("Candidates (ranked by mean final top-1)"),
          Para(f"Each candidate is the base at phi=1 with gamma = sqrt(2 / (alpha beta^2)) "
                f"(rounded to 3 decimals; kept when alpha*beta^2*gamma^2 is within "
                f"{cfg['tolerance']:.0%} of 2 and all coefficients are >= 1). Proxy budget: "
                f"{cfg['epochs']} epochs, train subset {cfg['subset'] or 'all'}, "
                f"{len(record['seeds'])} seeds. MACs vs base shows how close the channel and "
                f"block rounding keep each candidate to the intended 2x."),
          Table(display(res["rows"])),
          Figure(Path(res["figure"][0]), "Mean top-1 over (alpha, beta); red box: best, "
                                          "dashed: the paper's point; – : skipped")]
    skipped = [c for c in record["grid"] if c["skip"]]
    if skipped:
        s.append(Bullets([f"alpha={c['alpha']:g}, beta={c['beta']:g}: skipped, {c['skip']}"
                           for c in skipped]))
    s += [Heading("Reproduce"), Pre("\n".join(record.get("commands", []))),
          Heading("Environment"),
          Table([{"key": k, "value": v} for k, v in record.get("environment", {}).items()]
           + [{"key": "seeds", "value": ", ".join(map(str, record["seeds"]))},
              {"key": "wall time", "value": format_wall(record.get("wall_time_s"))}])]
    return title, s
