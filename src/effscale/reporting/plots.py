"""Study and search figures, each written as PNG (for the HTML report) and SVG (for papers).

matplotlib's object API (Figure + Agg canvas) is used instead of pyplot: no global figure
state, no backend switching, safe in worker processes and tests.
"""

from __future__ import annotations

from pathlib import Path

from ..io.files import atomic_write

# one colour and marker per strategy, the same in every figure (colour-blind safe palette)
STYLE = {
    "baseline": ("#000000", "s"),
    "depth": ("#0072B2", "o"),
    "width": ("#E69F00", "^"),
    "resolution": ("#009E73", "D"),
    "compound": ("#D55E00", "*"),
    "fast": ("#CC79A7", "P"),
}


def _figure(width=6.4, height=4.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, stem: Path) -> list[Path]:
    stem = Path(stem)
    fig.tight_layout()
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    # atomic like every other artifact: an interrupted report leaves no half-written image
    atomic_write(paths[0], lambda tmp: fig.savefig(tmp, format="png"))
    import matplotlib
    # reproducible: no date, and element ids hashed from a fixed salt instead of a random one
    with matplotlib.rc_context({"svg.hashsalt": "effscale"}):
        atomic_write(paths[1], lambda tmp: fig.savefig(tmp, format="svg",
                                                       metadata={"Date": None}))
    return paths


def _series(rows: list[dict], x_key: str):
    """Per strategy: points sorted by x (rows without a top-1 or an x are left out). The
    baseline starts every curve, as in the paper's Figure 8, where each scaling curve grows
    out of B0."""
    rows = [r for r in rows if r.get("top1_mean") is not None and r.get(x_key) is not None]
    base = [r for r in rows if r["strategy"] == "baseline"]
    series = {}
    for strategy in STYLE:
        pts = [r for r in rows if r["strategy"] == strategy]
        if strategy != "baseline":
            if not pts:
                continue
            pts = base + pts
        if pts:
            series[strategy] = sorted(pts, key=lambda r: r[x_key])
    return series


def accuracy_vs(rows: list[dict], x_key: str, stem: Path, *, xlabel: str, scale: float,
                title: str) -> list[Path]:
    """Top-1 (mean over seeds, error bar = std) against rows[x_key] / scale (MACs, params,
    training time per run, batch-1 latency), one line per strategy."""
    fig = _figure()
    ax = fig.add_subplot()
    for strategy, pts in _series(rows, x_key).items():
        colour, marker = STYLE[strategy]
        xs = [r[x_key] / scale for r in pts]
        ys = [r["top1_mean"] for r in pts]
        errs = [r.get("top1_std") or 0.0 for r in pts]
        ax.errorbar(xs, ys, yerr=errs, color=colour, marker=marker, capsize=3,
                    linestyle="-" if strategy != "baseline" else "none",
                    markersize=9 if strategy == "compound" else 6, label=strategy)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, stem)


LINES = ("-", "--", ":", "-.")  # one per compared directory


def accuracy_by_source(rows: list[dict], stem: Path, *, xlabel: str, scale: float) -> list[Path]:
    """`effscale compare`: top-1 against MACs / scale, colour per strategy, line style per
    directory (and budget), so that the same strategy in two studies reads as one colour."""
    fig = _figure()
    ax = fig.add_subplot()
    groups: dict = {}
    for r in rows:
        if r["top1_mean"] is not None:
            groups.setdefault((r["source"], r["epochs"], r["strategy"]), []).append(r)
    sources = list(dict.fromkeys((source, epochs) for source, epochs, _ in groups))
    for (source, epochs, strategy), pts in groups.items():
        pts.sort(key=lambda r: r["macs"])
        colour, marker = STYLE.get(strategy, ("#555555", "."))
        ax.errorbar([r["macs"] / scale for r in pts], [r["top1_mean"] for r in pts],
                    yerr=[r.get("top1_std") or 0.0 for r in pts], color=colour, marker=marker,
                    capsize=3, linestyle=LINES[sources.index((source, epochs)) % len(LINES)],
                    label=f"{source} ({epochs} ep): {strategy}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    ax.set_title("Compared: top-1 against MACs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    return _save(fig, stem)


def training_curves(curves: dict, stem: Path) -> list[Path]:
    """curves: {level label: {strategy: [(epoch, mean val top-1), ...]}}; one panel per level."""
    levels = list(curves)
    fig = _figure(4.2 * max(1, len(levels)), 3.8)
    for i, level in enumerate(levels):
        ax = fig.add_subplot(1, max(1, len(levels)), i + 1)
        for strategy, points in curves[level].items():
            if not points:
                continue
            colour, marker = STYLE.get(strategy, ("#555555", "."))
            ax.plot([p[0] for p in points], [p[1] for p in points], color=colour,
                    marker=marker, markersize=4, label=strategy)
        ax.set_xlabel("epoch")
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("val top-1 (%), mean over seeds")
        ax.set_title("baseline" if level == "1" else f"level {level}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, stem)


def heatmap(alphas: list[float], betas: list[float], values: dict, stem: Path, *,
            paper: tuple[float, float] | None = None, best: tuple[float, float] | None = None,
            title: str = "") -> list[Path]:
    """values: {(alpha, beta): mean top-1 or None}; rows alpha, columns beta."""
    import numpy as np
    grid = np.full((len(alphas), len(betas)), np.nan)
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            v = values.get((a, b))
            if v is not None:
                grid[i, j] = v
    fig = _figure(max(6.0, 1.2 * len(betas) + 2.6), max(3.6, 0.9 * len(alphas) + 1.8))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(grid)
    image = ax.imshow(masked, cmap="viridis", origin="lower", aspect="auto")
    fig.colorbar(image, ax=ax, label="top-1 (%), mean over seeds")
    ax.set_xticks(range(len(betas)), [f"{b:g}" for b in betas])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("beta (width)")
    ax.set_ylabel("alpha (depth)")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for i in range(len(alphas)):
        for j in range(len(betas)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] < middle else "black")
            else:  # gamma would be < 1 (or the run is missing)
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="#999999")
    if best is not None and best[0] in alphas and best[1] in betas:
        ax.add_patch(_box(betas.index(best[1]), alphas.index(best[0]), "#ff3333"))
    note = ""
    if paper is not None:
        note = f"paper: alpha={paper[0]:g}, beta={paper[1]:g}"
        if paper[0] in alphas and paper[1] in betas:
            ax.add_patch(_box(betas.index(paper[1]), alphas.index(paper[0]), "#ffffff", "--"))
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    return _save(fig, stem)


def _box(x, y, colour, style="-"):
    from matplotlib.patches import Rectangle
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=2,
                     linestyle=style)


def accuracy_vs_epochs(series: dict, stem: Path, *, title: str) -> list[Path]:
    """series: {strategy: [(epochs, mean top-1, std or None), ...]}: how each strategy's
    accuracy moves with the training budget (Bello et al. 2021), one line per strategy."""
    fig = _figure()
    ax = fig.add_subplot()
    budgets = sorted({p[0] for points in series.values() for p in points})
    for strategy, points in series.items():
        colour, marker = STYLE.get(strategy, ("#555555", "."))
        ax.errorbar([p[0] for p in points], [p[1] for p in points],
                    yerr=[p[2] or 0.0 for p in points], color=colour, marker=marker, capsize=3,
                    markersize=9 if strategy == "compound" else 6, label=strategy)
    ax.set_xscale("log", base=2)
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.set_xlabel("training budget (epochs, log scale)")
    ax.set_ylabel("top-1 accuracy (%), mean ± std over seeds")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, stem)
