"""`effscale evaluate CHECKPOINT`: top-1 / top-5 of a model file or run directory."""

from __future__ import annotations

from ..io.table import render


def add_parser(sub):
    p = sub.add_parser("evaluate", help="top-1 / top-5 of a checkpoint",
                       description="Evaluate a model file or run directory (best, else last) "
                                   "on a dataset's validation split; EMA weights when present.")
    p.add_argument("checkpoint", help="model file (.safetensors) or run directory")
    p.add_argument("--data", help="dataset, imagefolder:PATH, csv:FILE or webdataset:DIR "
                                  "(default: the one the "
                                  "model was trained on, its split-off val set split off again)")
    p.add_argument("--data-dir", help="where the dataset files are")
    p.add_argument("--tta-flip", action="store_true", help="average with horizontally flipped images")
    p.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    p.add_argument("--subset", type=int, help="evaluate on this many images only")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    return p


def run(args) -> int:
    from ..training.evaluation import evaluate

    result = evaluate(args.checkpoint, args.data, data_dir=args.data_dir, tta_flip=args.tta_flip,
                      use_ema=not args.raw, batch_size=args.batch_size, device=args.device,
                      subset=args.subset)
    row = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()}
    print(render([row], args.format))
    return 0
