"""`effscale cam`: class activation maps of a checkpoint, a grid figure, a faithfulness score,
or the same images side by side for several models (--compare)."""

from __future__ import annotations

import sys
import warnings

from ..io.table import render

METHOD_NAMES = ("gradcam", "gradcam++", "layercam", "eigencam", "scorecam")


def add_parser(sub):
    p = sub.add_parser(
        "cam", help="class activation maps of a checkpoint (figure, deletion score)",
        description="Class activation maps (pytorch-grad-cam) of a model file or run directory "
                    "on the first N evaluation images. The target layer is chosen so that the "
                    "map can localise (deepest map >= 4x4), with a warning when the model's "
                    "final map is too small.")
    p.add_argument("checkpoint", help="model file (.safetensors) or run directory")
    p.add_argument("--data", help="dataset name (default: the checkpoint's dataset)")
    p.add_argument("--data-dir", help="where the dataset lives")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--images", type=int, default=8, help="number of images (default 8)")
    p.add_argument("--method", default="gradcam", metavar="METHOD",
                   help=f"one of {', '.join(METHOD_NAMES)} (default gradcam)")
    p.add_argument("--layer", default="auto",
                   help="auto (deepest map >= 4x4), a stage number 1..7, or head")
    p.add_argument("--target", default="predicted",
                   help="class each map explains: predicted, true, a class index or name")
    p.add_argument("--score", action="store_true",
                   help="deletion test: AUC of class probability as the most-activated pixels "
                        "are removed first, vs random order (lower is better)")
    p.add_argument("--steps", type=int, default=10,
                   help="deletion steps (each removes 1/steps of the pixels; default 10)")
    p.add_argument("--compare", nargs="+", metavar="RUN", default=[],
                   help="more runs: the same images side by side, one column per model")
    p.add_argument("--labels", nargs="+", metavar="TITLE",
                   help="column titles for --compare (default: run names)")
    p.add_argument("--raw-weights", action="store_true", help="use raw weights, not the EMA")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0, help="seed of the random deletion baseline")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--out", default="cams.png", help="figure path (default cams.png)")
    return p


def run(args) -> int:
    from ..explain.cam import METHODS, cam, load_data_for

    if args.method.strip().lower() not in METHODS:
        raise ValueError(f"unknown CAM method {args.method!r}; choose from {', '.join(METHODS)}")
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    if args.batch_size < 1 or args.steps < 1:
        raise ValueError("--batch-size and --steps must be >= 1")
    runs = [args.checkpoint] + list(args.compare)
    if args.labels and len(args.labels) != len(runs):
        raise ValueError(f"{len(args.labels)} --labels for {len(runs)} runs")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = []
        # load the dataset once for all models (default: the first checkpoint's dataset)
        data = load_data_for(args.checkpoint, args.data, args.data_dir)
        for path in runs:
            result = cam(path, data, images=args.images, method=args.method, layer=args.layer,
                         target=args.target, data_dir=args.data_dir, split=args.split,
                         score=args.score, steps=args.steps, use_ema=not args.raw_weights,
                         batch_size=args.batch_size, seed=args.seed,
                         out=None if args.compare else args.out)
            results.append(result)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"effscale: warning: {message}", file=sys.stderr)
    if args.compare:
        from ..explain.figures import comparison_figure
        from ..explain.cam import run_title
        titles = args.labels or [run_title(r) for r in runs]
        comparison_figure(results, args.out, titles=titles)

    if len(results) == 1:
        r = results[0]
        print(f"{r.model_name} ({r.weights or 'raw'} weights): {r.method} on {r.layer}, "
              f"{r.layer.reason}")
        print(render(r.rows(), args.format))
    rows = []
    for path, r in zip(runs, results):
        row = {"model": r.model_name, "run": path, "method": r.method, "layer": str(r.layer),
               "correct": f"{int(r.correct.sum())}/{len(r.labels)}"}
        if r.deletion is not None:
            row.update({"deletion_auc": round(r.deletion.cam_auc, 4),
                        "random_auc": round(r.deletion.random_auc, 4),
                        "ratio": round(r.deletion.ratio, 3)})
        rows.append(row)
    if len(results) > 1 or args.score:
        print()
        print(render(rows, args.format))
    if args.score and args.format in ("table", "markdown"):
        print()
        print(f"deletion AUC: mean over images of the target-class probability as the "
              f"most-activated pixels are set to the dataset mean, 1/{args.steps} at a time; "
              f"lower is better; random_auc removes pixels in random order.")
    print(f"wrote {args.out}")
    return 0
