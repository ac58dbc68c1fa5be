"""Is the cost predictor real here? Measured training time per image against MACs and against
activations (Dollar, Singh & Girshick, CVPR 2021: activations predict GPU runtime far better
than FLOPs; docs/REFERENCE.md, "Activations [fast]").

Variants (33 by default): the Fashion-MNIST study's strategies (base b0@phi=-10,res=36, 1 input
channel, 10 classes, stem stride 2; depth, width, resolution, compound and fast compound scaling
matched by effscale.experiments.plan.plan_models to 2, 3, 4.3 and 6x the base's MACs, and the
base), then B0-B3 at small resolutions (48, 64, 96 px, same input and classes). All are measured
in one `effscale.model.measure.measure` call: built first, then timed in rounds interleaved
across models, medians over rounds (CPU, 1 torch thread, batch 64, fp32 by default). Then
log(train seconds per image) is fitted by least squares against log(MACs) and against
log(activations); the R^2 of each says which predicts better on this machine. Within each
matched level (equal MACs by construction) it also prints how far the strategies' times spread.

    python benchmarks/cost_model.py --plot results/cost_model.png --json results/cost_model.json
    python benchmarks/cost_model.py --limit 4 --rounds 1 --warmup 0   # a quick check that it runs

Expected to take about 4 minutes on one idle core with the defaults (3 rounds after 1 warm-up
round; estimated from single steps of B3 at 96 px, which with B0-B2 at 96 px take most of it,
not from a full run). A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import effscale  # noqa: E402  (the checkout's, also when not installed)
from effscale.experiments.plan import StudyConfig, plan_models  # noqa: E402
from effscale.model.measure import measure  # noqa: E402
from effscale.model.profile import STRATEGIES, profile  # noqa: E402

BASE = "b0@phi=-10,res=36"  # the Fashion-MNIST study's base (experiments.plan.DATA_DEFAULTS)
IN_CHANS, CLASSES, STEM_STRIDE = 1, 10, 2


def variants(levels: tuple[float, ...], resolutions: tuple[int, ...]) -> list[dict]:
    """The study's matched models (smallest first), then B0-B3 at each resolution."""
    config = StudyConfig(base=BASE, data="fashion-mnist", levels=levels, stem_stride=STEM_STRIDE,
                         strategies=STRATEGIES)
    out, seen = [], set()
    for m in plan_models(config, CLASSES, IN_CHANS):
        if m.model not in seen:
            seen.add(m.model)
            out.append(dict(model=m.model, group=m.strategy, level=m.level))
    for res in resolutions:
        for b in range(4):
            name = f"b{b}@res={res}"
            if name not in seen:
                seen.add(name)
                out.append(dict(model=name, group=f"B0-B3 {res}px", level=None))
    for v in out:
        p = profile(v["model"], num_classes=CLASSES, stem_stride=STEM_STRIDE, in_chans=IN_CHANS)
        v.update(resolution=p.resolution, params=p.params, macs=p.macs, activations=p.activations)
    return out


def fit(x: list[float], y: list[float]) -> dict:
    """Least squares log(y) = a + b log(x): slope b, intercept a, R^2 and the residuals."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    design = np.stack([np.ones_like(lx), lx], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, ly, rcond=None)
    residual = ly - (a + b * lx)
    total = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / total if total > 0 else float("nan")
    return dict(slope=float(b), intercept=float(a), r2=r2, residuals=residual.tolist())


def spreads(rows: list[dict]) -> list[str]:
    """Per matched level: max/min over the strategies of time, MACs and activations."""
    lines = []
    levels = sorted({r["level"] for r in rows if r["level"] not in (None, "1")}, key=float)
    for level in levels:
        group = [r for r in rows if r["level"] == level]
        if len(group) < 2:
            continue
        ratio = {k: max(r[k] for r in group) / min(r[k] for r in group)
                 for k in ("ms_per_img", "macs", "activations")}
        fastest = min(group, key=lambda r: r["ms_per_img"])
        slowest = max(group, key=lambda r: r["ms_per_img"])
        lines.append(f"level {level}x ({len(group)} strategies): train time/img spread "
                     f"{ratio['ms_per_img']:.2f}x ({fastest['group']} fastest, {slowest['group']} "
                     f"slowest) at a MACs spread of {ratio['macs']:.2f}x; activations spread "
                     f"{ratio['activations']:.2f}x")
    return lines


def table(rows: list[dict], fits: dict) -> str:
    head = ("model", "group", "res", "MACs(M)", "acts(M)", "params(M)", "train img/s",
            "min-max", "ms/img", "MACs fit x", "acts fit x")
    cells = []
    for i, r in enumerate(rows):
        lo, hi = r["train_img_s_spread"]
        cells.append((r["model"], r["group"] + (f" {r['level']}x" if r["level"] else ""),
                      str(r["resolution"]), f"{r['macs'] / 1e6:.2f}",
                      f"{r['activations'] / 1e6:.3f}", f"{r['params'] / 1e6:.2f}",
                      f"{r['train_img_s']:.1f}", f"{lo:.0f}-{hi:.0f}", f"{r['ms_per_img']:.3f}",
                      f"{math.exp(fits['macs']['residuals'][i]):.2f}",
                      f"{math.exp(fits['activations']['residuals'][i]):.2f}"))
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.append("MACs fit x / acts fit x: measured time / the fit's prediction")
    return "\n".join(lines)


def plot(rows: list[dict], fits: dict, path: str) -> None:
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["group"] for r in rows))
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, label in ((axes[0], "macs", "MACs per image"),
                           (axes[1], "activations", "activations per image (conv + FC outputs)")):
        for g in groups:
            pts = [r for r in rows if r["group"] == g]
            ax.scatter([r[key] for r in pts], [r["ms_per_img"] for r in pts], s=22,
                       color=colours[g], label=g)
        xs = np.geomspace(min(r[key] for r in rows), max(r[key] for r in rows), 50)
        f = fits[key]
        ax.plot(xs, np.exp(f["intercept"]) * xs ** f["slope"] * 1e3, "k--", lw=1)
        ax.set(xscale="log", yscale="log", xlabel=label,
               title=f"{label.split(' per')[0]}: R^2 {f['r2']:.3f}, slope {f['slope']:.2f}")
        ax.grid(True, which="both", alpha=0.3)
        for axis in (ax.xaxis, ax.yaxis):  # plain numbers (3, 5e+06), not 3 x 10^0
            axis.set_major_formatter(matplotlib.ticker.LogFormatter())
            axis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False))
    axes[0].set_ylabel("training time per image (ms)")
    axes[1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--levels", default="2,3,4.3,6", help="MACs levels of the study's strategies")
    p.add_argument("--resolutions", default="48,64,96", help="B0-B3 input sizes")
    p.add_argument("--limit", type=int, help="measure only the first N variants (a quick check)")
    p.add_argument("--plot", metavar="PNG", help="write the two-panel scatter plot here")
    p.add_argument("--json", metavar="PATH", help="write the raw data and fits here")
    args = p.parse_args(argv)
    try:
        args.levels = tuple(float(x) for x in args.levels.split(",") if x.strip())
        args.resolutions = tuple(int(x) for x in args.resolutions.split(",") if x.strip())
    except ValueError:
        p.error("--levels and --resolutions are comma-separated numbers")
    if args.limit is not None and args.limit < 2:
        p.error("--limit must be >= 2 (a fit needs two points)")
    return args


def main(argv=None) -> int:
    start = time.perf_counter()
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    todo = variants(args.levels, args.resolutions)
    if args.limit:
        todo = todo[:args.limit]
    print(f"effscale {effscale.__version__}, torch {torch.__version__}, {args.device} "
          f"({platform.processor() or platform.machine()}, torch threads: "
          f"{torch.get_num_threads()}); {len(todo)} variants, batch {args.batch}, timed rounds: "
          f"{args.rounds} after warm-up rounds: {args.warmup}", flush=True)
    try:
        results = measure([v["model"] for v in todo], device=args.device, batch=args.batch,
                          num_classes=CLASSES, in_chans=IN_CHANS, stem_stride=STEM_STRIDE,
                          rounds=args.rounds, warmup=args.warmup)
    except ValueError as exc:
        print(f"cost_model: error: {exc}", file=sys.stderr)
        return 2
    rows = []
    for v, m in zip(todo, results):
        row = dict(v, **m.as_dict())
        row["ms_per_img"] = 1e3 / m.train_img_s
        rows.append(row)
    seconds = [r["ms_per_img"] / 1e3 for r in rows]
    fits = {key: fit([r[key] for r in rows], seconds) for key in ("macs", "activations")}
    infer = {key: fit([r[key] for r in rows], [1 / r["infer_img_s"] for r in rows])["r2"]
             for key in ("macs", "activations")}
    print()
    print(table(rows, fits))
    print()
    for key, name in (("macs", "MACs"), ("activations", "activations")):
        f = fits[key]
        print(f"log(train s/img) ~ log({name}): R^2 {f['r2']:.3f}, slope {f['slope']:.3f} "
              f"(inference: R^2 {infer[key]:.3f})")
    better, worse = sorted(("macs", "activations"), key=lambda k: -fits[k]["r2"])
    label = {"macs": "MACs", "activations": "activations"}
    print(f"=> {label[better]} predict training time better here (R^2 {fits[better]['r2']:.3f} "
          f"vs {fits[worse]['r2']:.3f} for {label[worse]}), {len(rows)} variants, "
          f"{args.device}, batch {args.batch}")
    for line in spreads(rows):
        print(line)
    if len(rows) < 10:
        print(f"(only {len(rows)} variants: a check that the script runs, not evidence)")
    if args.plot:
        plot(rows, fits, args.plot)
        print(f"plot: {args.plot}")
    if args.json:
        payload = dict(
            meta=dict(script="benchmarks/cost_model.py", argv=sys.argv[1:] if argv is None
                      else list(argv),
                      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
                          timespec="seconds"),
                      device=args.device, cpu=platform.processor() or platform.machine(),
                      threads=torch.get_num_threads(), torch=torch.__version__,
                      effscale=effscale.__version__, batch=args.batch, rounds=args.rounds,
                      warmup=args.warmup, base=BASE, in_chans=IN_CHANS, classes=CLASSES,
                      stem_stride=STEM_STRIDE, levels=list(args.levels),
                      resolutions=list(args.resolutions), elapsed_s=round(
                          time.perf_counter() - start, 1)),
            fits={k: {kk: vv for kk, vv in f.items()} for k, f in fits.items()},
            infer_r2=infer, better=better, rows=rows)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str))
        print(f"json: {args.json}")
    print(f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
