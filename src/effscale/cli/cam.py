"""`effscale cam`: class activation maps of a checkpoint, a grid figure, a faithfulness score,
localisation against annotated boxes (--boxes), or the same images side by side for several
models (--compare)."""

from __future__ import annotations

import sys
import warnings

from ..explain.methods import METHODS
from ..io.table import render

FIGURE_SUFFIXES = (".png", ".svg", ".pdf", ".jpg", ".jpeg")


def _images(text: str) -> int | None:
    """--images: a count >= 1, or `all` (None)."""
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--images must be a number >= 1 or 'all', got {text!r}")
    return value


def add_parser(sub):
    p = sub.add_parser(
        "cam", help="class activation maps of a checkpoint (figure, deletion score, localisation)",
        description="Class activation maps (pytorch-grad-cam) of a model file or run directory "
                    "on class-balanced evaluation images. The target layer is chosen by "
                    "measurement (--layer auto): the candidate stage whose map peaks, shown to "
                    "the model alone, keep its class most probable. With --boxes, how often the "
                    "map's peak falls in each image's annotated box.")
    p.add_argument("checkpoint", help="model file (.safetensors) or run directory")
    p.add_argument("--data", help="dataset name (default: the checkpoint's dataset)")
    p.add_argument("--data-dir", help="where the dataset lives")
    p.add_argument("--split", choices=("val", "train"), default="val")
    p.add_argument("--images", type=str, default=None, metavar="N|all",
                   help="number of images, one of each class in turn (default 8; with --boxes, "
                        "all the boxed images)")
    p.add_argument("--method", default="gradcam", metavar="METHOD",
                   help=f"one of {', '.join(METHODS)} (default gradcam)")
    p.add_argument("--layer", default="auto",
                   help="auto (the stage whose map peaks carry the class evidence, measured on "
                        "these images; the output says which and why), a stage number 1..7, "
                        "or head")
    p.add_argument("--target", default="predicted",
                   help="class each map explains: predicted, true, a class index or name")
    p.add_argument("--boxes", metavar="FILE",
                   help="JSON file: image path (relative to the image folder, e.g. "
                        "val/cat/1.jpg; for built-in datasets the index in the split) -> "
                        "[x0, y0, x1, y1] in source pixels. Reports how often the map's peak, "
                        "and how much of its energy, falls in the box (mapped through the eval "
                        "resize and centre crop)")
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
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the choice of images within each class and of the random "
                        "orders of the deletion test")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--out", default="cams.png",
                   help="figure path, .png/.svg/.pdf/.jpg (default cams.png); an existing image "
                        "there is replaced, anything else (an input, another kind of file, a "
                        "directory) is refused")
    return p


def run(args) -> int:
    from ..explain.cam import load_boxes

    if args.batch_size < 1 or args.steps < 1:
        raise ValueError("--batch-size and --steps must be >= 1")
    runs = [args.checkpoint] + list(args.compare)
    if args.labels and len(args.labels) != len(runs):
        raise ValueError(f"{len(args.labels)} --labels for {len(runs)} runs")
    from ..io.files import check_output, checkpoint_inputs
    check_output(args.out, suffixes=FIGURE_SUFFIXES, kinds=("PNG", "SVG", "PDF", "JPEG"),
                 inputs=checkpoint_inputs([*runs, args.boxes, args.data_dir]), flag="--out")
    # a bad boxes file fails before any checkpoint or image is read
    boxes = load_boxes(args.boxes) if args.boxes else None
    if args.images is None:  # default: 8, or every boxed image
        images = None if boxes else 8
    else:
        images = _images(args.images)
    results = _compute(args, runs, images, boxes)
    _print(args, runs, results, boxes)
    print(f"wrote {args.out}")
    return 0


def _compute(args, runs, images, boxes) -> list:
    """The CamResults of every run (and the figure), its warnings printed once each."""
    from ..explain.cam import cam, compare_figure

    options = dict(images=images, method=args.method, layer=args.layer, target=args.target,
                   data_dir=args.data_dir, split=args.split, score=args.score, steps=args.steps,
                   use_ema=not args.raw_weights, batch_size=args.batch_size, seed=args.seed,
                   boxes=boxes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # both check the method and read the checkpoint before any data; compare_figure loads
        # the dataset once for every model (default: the first checkpoint's dataset)
        if args.compare:
            results = compare_figure(runs, args.data, args.out, labels=args.labels, **options)
        else:
            results = [cam(args.checkpoint, args.data, out=args.out, **options)]
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"effscale: warning: {message}", file=sys.stderr)
    return results


def _summary(path, r) -> dict:
    row = {"model": r.model_name, "run": path, "method": r.method, "layer": str(r.layer),
           "correct": f"{int(r.correct.sum())}/{len(r.labels)}"}
    if r.localisation is not None:
        row.update({"peak_in_box": round(r.localisation.rate, 4),
                    "energy_in_box": round(r.localisation.energy_rate, 4),
                    "random_peak": round(r.localisation.chance, 4)})
    if r.deletion is not None:
        row.update({"deletion_auc": round(r.deletion.cam_auc, 4),
                    "random_auc": round(r.deletion.random_auc, 4),
                    "ratio": round(r.deletion.ratio, 3)})
    return row


def _print(args, runs, results, boxes) -> None:
    if len(results) == 1:
        r = results[0]
        print(f"{r.model_name} ({r.weights or 'raw'} weights): {r.method} on {r.layer}, "
              f"{r.layer.reason}")
        print(render(r.rows(), args.format))
    if len(results) > 1 or args.score or boxes:
        print()
        print(render([_summary(path, r) for path, r in zip(runs, results)], args.format))
    if args.format not in ("table", "markdown"):
        return
    if boxes:
        lost = results[0].boxes_lost
        left = f"; {lost} boxes fell outside the centre crop and were left out" if lost else ""
        print(f"\nlocalisation on {len(results[0].labels)} boxed {args.split} images: "
              f"peak_in_box = fraction whose map peak lies in the box, energy_in_box = mean "
              f"fraction of the map inside it, random_peak = what a random peak would get "
              f"(the mean box area){left}.")
    if args.score:
        print(f"\ndeletion AUC: mean over images of the target-class probability as the "
              f"most-activated pixels are set to the dataset mean, 1/{args.steps} at a time; "
              f"lower is better; random_auc removes pixels in random order.")
