"""`effscale compare DIR [DIR ...]`: several studies, budgets studies and searches in one table
and one top-1-against-MACs plot (what pycls's `sweep_collect` does for its sweeps).

Each directory contributes one row per model (mean ± std of top-1 over its finished seeds),
read from its own record and runs, so nothing is copied or re-trained. Results on different
datasets are not comparable: mixing them is refused unless asked for (`allow_mixed`)."""

from __future__ import annotations

from pathlib import Path

from ..io.files import write_text
from ..io.records import load_study, read_runs
from ..io.table import render
from . import stats
from .tables import macs_unit, short_name

COLUMNS = ["source", "dataset", "epochs", "strategy", "level", "model", "params", "macs",
           "top1_mean", "top1_std", "n"]


def _study_rows(path: Path, plan: dict, source: str) -> list[dict]:
    from .results import model_rows
    runs = read_runs(path, plan)
    cfg = plan["config"]
    return [{"source": source, "dataset": cfg["data"], "epochs": cfg["epochs"],
             **{k: r[k] for k in COLUMNS[3:]}} for r in model_rows(plan, runs)]


def _search_rows(path: Path, source: str) -> list[dict]:
    from .search import search_rows
    record, rows = search_rows(path)
    cfg = record["config"]
    return [{"source": source, "dataset": cfg["data"], "epochs": cfg["epochs"],
             "strategy": "paper point" if r["paper"] else "search",
             "level": f"a={r['alpha']:g},b={r['beta']:g}",
             **{k: r[k] for k in ("model", "params", "macs", "top1_mean", "top1_std", "n")}}
            for r in rows]


def labels(paths: list[str | Path]) -> list[str]:
    """The shortest path endings that tell the directories apart ("a/study", "b/study" for
    two directories both named "study")."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = [1] * len(parts)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not clash:
            return names
        for i in clash:
            depth[i] += 1


def source_rows(path: str | Path, source: str | None = None) -> list[dict]:
    """The model rows of one study, budgets study (every budget) or search directory."""
    path = Path(path)
    source = source or path.resolve().name
    if (path / "search.json").is_file():
        return _search_rows(path, source)
    if not (path / "study.json").is_file():
        raise FileNotFoundError(f"{path} is not a study or search directory (no study.json or "
                                f"search.json)")
    plan = load_study(path)
    if plan.get("kind") == "budgets":
        return [row for sub in plan["studies"].values()
                for row in _study_rows(path / sub, load_study(path / sub), source)]
    return _study_rows(path, plan, source)


def compare_rows(paths: list[str | Path], *, allow_mixed: bool = False) -> list[dict]:
    """Every directory's model rows, in the order given; ValueError when they are on
    different datasets and `allow_mixed` is not set."""
    rows = [row for path, name in zip(paths, labels(paths)) for row in source_rows(path, name)]
    datasets = sorted({str(r["dataset"]) for r in rows})
    if len(datasets) > 1 and not allow_mixed:
        raise ValueError(f"the directories hold results on different datasets "
                         f"({', '.join(datasets)}): their accuracies are not comparable; "
                         f"pass --allow-mixed to put them in one table anyway")
    return rows


def display(rows: list[dict]) -> list[dict]:
    unit, scale = macs_unit(rows)
    return [{"source": r["source"], "dataset": r["dataset"], "epochs": r["epochs"],
             "strategy": r["strategy"], "level": r["level"],
             "model": short_name(r) if r["strategy"] not in ("search", "paper point")
             else r["model"],
             "params(M)": f"{r['params'] / 1e6:.3f}", f"MACs({unit})": f"{r['macs'] / scale:.4g}",
             "top-1 (%)": stats.format_pm(r["top1_mean"], r["top1_std"], r["n"])}
            for r in rows]


def write_compare(rows: list[dict], out: Path) -> dict:
    """compare.csv, compare.md and accuracy_vs_macs.png/.svg in `out`."""
    from .plots import accuracy_by_source
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "compare.csv", render(rows, "csv", COLUMNS) + "\n")
    unit, scale = macs_unit(rows)
    figure = accuracy_by_source(rows, out / "accuracy_vs_macs", xlabel=f"MACs ({unit})",
                                scale=scale)
    write_text(out / "compare.md", "\n".join([
        "# Compared", "", render(display(rows), "markdown"), "",
        "![Top-1 against MACs](accuracy_vs_macs.png)", ""]))
    return {"csv": out / "compare.csv", "md": out / "compare.md", "figure": figure}
