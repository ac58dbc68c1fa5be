"""`effscale profile`: params, MACs, FLOPs and activation memory, beside the paper's numbers."""

from __future__ import annotations

from ..model.names import parse_name
from ..model.profile import DIMENSIONS, match_flops, profile
from ..model.spec import PAPER_FLOPS
from ..io.table import render

LEGEND = ("MACs(G): multiply-accumulates of convs + FC, what the paper calls FLOPs; "
          "FLOPs(G): 2 x MACs, torch.utils.flop_counter's convention; "
          "paper(G): the paper's FLOPs column (MACs); "
          "act/img(MB): fp32 activations saved for backward per training image")


def add_parser(sub):
    p = sub.add_parser("profile", help="params, MACs and memory of model names",
                       description="Profile models analytically (no model is built).")
    p.add_argument("models", nargs="*", default=[], help="model names, e.g. b0 b3 b0@phi=2")
    p.add_argument("--resolution", type=int, help="input size (default: each model's own)")
    p.add_argument("--classes", type=int, default=1000, help="classifier size (default 1000)")
    p.add_argument("--stem-stride", type=int, default=2, choices=(1, 2))
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--match", metavar="NAME",
                   help="print depth-, width-, resolution-only and compound variants of "
                        "NAME's base at NAME's MACs")
    return p


def run(args) -> int:
    if args.classes < 1:
        raise ValueError(f"--classes must be >= 1, got {args.classes}")
    names = list(args.models)
    notes = []
    if args.match:
        target = profile(args.match, num_classes=args.classes, stem_stride=args.stem_stride).macs
        base = parse_name(args.match).with_(phi=0.0, d=1.0, w=1.0, r=1.0, res=None)
        for dimension in DIMENSIONS:
            m = match_flops(base, dimension, target, stem_stride=args.stem_stride,
                            num_classes=args.classes)
            names.append(m.name)
            if m.within > 0.02:
                notes.append(f"{dimension}: closest is {m.ratio:.3f}x the target "
                             f"({'whole blocks' if dimension == 'depth' else 'rounding'} "
                             f"allow no closer)")
    if not names:
        names = [f"b{i}" for i in range(8)]
    rows = []
    for name in names:
        prof = profile(name, args.resolution, num_classes=args.classes,
                       stem_stride=args.stem_stride)
        base = parse_name(name)
        paper = PAPER_FLOPS.get(base.base) if str(base) == base.base and (
            args.resolution in (None, prof.resolution)) and args.classes == 1000 else None
        row = {"model": name, "res": prof.resolution, "params": prof.params,
               "MACs(G)": round(prof.macs / 1e9, 4), "FLOPs(G)": round(prof.flops / 1e9, 4),
               "paper(G)": paper / 1e9 if paper else None,
               "act/img(MB)": round(prof.activation_bytes / 2**20, 1)}
        if args.match:
            row["ratio"] = round(prof.macs / target, 4)
        rows.append(row)
    print(render(rows, args.format))
    if args.format in ("table", "markdown"):
        print()
        print(LEGEND)
        for note in notes:
            print(note)
    return 0
