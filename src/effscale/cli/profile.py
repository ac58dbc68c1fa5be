"""`effscale profile`: params, MACs, FLOPs, activations and activation memory, beside the
paper's numbers; with --measure also measured throughput, latency and peak memory."""

from __future__ import annotations

import sys

from ..experiments.match_cost import COSTS, ROUNDS, UNITS, Measurer, cost_search, walk
from ..model.names import parse_name
from ..model.profile import DIMENSIONS, match_flops, profile
from ..model.spec import PAPER_FLOPS
from ..io.table import render

LEGEND = ("MACs(G): multiply-accumulates of convs + FC, what the paper calls FLOPs; "
          "FLOPs(G): 2 x MACs, torch.utils.flop_counter's convention; "
          "paper(G): the paper's FLOPs column (MACs); "
          "activations: output elements of every conv and the FC per image, the runtime proxy "
          "of Dollar et al. 2021 (docs/REFERENCE.md); "
          "act/img(MB): fp32 activations saved for backward per training image")
MEASURED = ("train_img_s", "train_img_s_min", "train_img_s_max", "infer_img_s",
            "infer_img_s_min", "infer_img_s_max", "latency_ms", "latency_p90_ms", "peak_mib")


def add_parser(sub):
    p = sub.add_parser("profile", help="params, MACs and memory of model names",
                       description="Profile models analytically (no model is built); "
                                   "--measure also builds and times them.")
    p.add_argument("models", nargs="*", default=[], help="model names, e.g. b0 b3 b0@phi=2")
    p.add_argument("--resolution", type=int, help="input size (default: each model's own)")
    p.add_argument("--classes", type=int, default=1000, help="classifier size (default 1000)")
    p.add_argument("--stem-stride", type=int, default=2, choices=(1, 2))
    p.add_argument("--in-chans", type=int, default=3, help="input channels (default 3)")
    p.add_argument("--format", choices=("table", "markdown", "csv", "json"), default="table")
    p.add_argument("--match", metavar="NAME",
                   help="print depth-, width-, resolution-only and compound variants of "
                        "NAME's base at NAME's MACs")
    p.add_argument("--by", choices=COSTS,
                   help="with --match: match on NAME's MACs (default) or its measured "
                        "train-time, latency or memory (--device, --batch; searched from the "
                        "MACs match along the same grid; cost_ratio says how close)")
    m = p.add_argument_group("measured cost (--measure)")
    m.add_argument("--measure", action="store_true",
                   help="also build every model and measure training and inference img/s, "
                        "batch-1 latency and peak training memory (effscale.model.measure)")
    m.add_argument("--device", help="cpu or cuda[:N] (default cpu)")
    m.add_argument("--batch", type=int, help="batch for throughput and memory (default 64)")
    m.add_argument("--rounds", type=int, help="timed rounds, interleaved across models; "
                                              "medians are reported (default 5)")
    return p


def run(args) -> int:
    _check_flags(args)
    names, notes, target = _matched(args)
    costs = _cost_matched(args, names, notes) if args.by not in (None, "macs") else {}
    if not names:
        names = [f"b{i}" for i in range(8)]
    rows = []
    for name in names:
        prof = profile(name, args.resolution, num_classes=args.classes,
                       stem_stride=args.stem_stride, in_chans=args.in_chans)
        base = parse_name(name)
        paper = PAPER_FLOPS.get(base.base) if str(base) == base.base and (
            args.resolution in (None, prof.resolution)) and args.classes == 1000 and (
            args.in_chans == 3) else None
        row = {"model": name, "res": prof.resolution, "params": prof.params,
               "MACs(G)": round(prof.macs / 1e9, 4), "FLOPs(G)": round(prof.flops / 1e9, 4),
               "paper(G)": paper / 1e9 if paper else None,
               "activations": prof.activations,
               "act/img(MB)": round(prof.activation_bytes / 2**20, 1)}
        if args.match:
            row["ratio"] = round(prof.macs / target, 4)
        if costs:
            row["cost_ratio"] = costs.get(name)
        rows.append(row)
    measured_note = None
    if args.measure:
        measured_note = _measure(args, names, rows)
    print(render(rows, args.format))
    if args.format in ("table", "markdown"):
        print()
        print(LEGEND)
        if measured_note:
            print(measured_note)
        for note in notes:
            print(note)
    return 0


def _check_flags(args) -> None:
    if args.classes < 1:
        raise ValueError(f"--classes must be >= 1, got {args.classes}")
    if args.in_chans < 1:
        raise ValueError(f"--in-chans must be >= 1, got {args.in_chans}")
    from ..model.names import MAX_RESOLUTION  # the bound a name's res= has
    if args.resolution is not None and not 0 < args.resolution <= MAX_RESOLUTION:
        raise ValueError(f"--resolution must be in (0, {MAX_RESOLUTION}] pixels, got "
                         f"{args.resolution}")
    by = args.by not in (None, "macs")
    if by and not args.match:
        raise ValueError(f"--by {args.by}: only used with --match NAME")
    if not args.measure:
        given = [flag for flag, value in (("--device", args.device), ("--batch", args.batch),
                                          ("--rounds", args.rounds)) if value is not None
                 and not (by and flag != "--rounds")]
        if given:
            raise ValueError(f"{', '.join(given)}: only used with --measure"
                             + (" (or --match with --by)" if by else ""))
        if args.batch is not None and args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        return
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    if args.rounds is not None and args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1, got {args.rounds}")
    if not args.models and not args.match:
        raise ValueError("--measure needs model names (or --match); B0-B7 at full size "
                         "would take long")


def _matched(args) -> tuple[list[str], list[str], int | None]:
    """The names to profile (the given ones, then --match's variant per dimension), notes on
    matches more than 2% off, and --match's target MACs (None without it)."""
    names, notes, target = list(args.models), [], None
    if args.match:
        target = profile(args.match, num_classes=args.classes, stem_stride=args.stem_stride,
                         in_chans=args.in_chans).macs
        base = parse_name(args.match).with_(phi=0.0, d=1.0, w=1.0, r=1.0, res=None, fast=1.0)
        for dimension in DIMENSIONS:
            m = match_flops(base, dimension, target, stem_stride=args.stem_stride,
                            num_classes=args.classes, in_chans=args.in_chans)
            names.append(m.name)
            if m.within > 0.02:
                notes.append(f"{dimension}: closest is {m.ratio:.3f}x the target "
                             f"({'whole blocks' if dimension == 'depth' else 'rounding'} "
                             f"allow no closer)")
    return names, notes, target


def _cost_matched(args, names: list[str], notes: list[str]) -> dict[str, float]:
    """Replace --match's variants in `names` by those whose measured cost (--by) is NAME's,
    searched from the MACs matches (experiments.match_cost); {variant: measured ratio}."""
    from ..experiments.cost import measure_device
    device = measure_device(args.device or "cpu")
    if device is None:
        raise ValueError(f"--device {args.device}: no CUDA GPU here")
    batch = args.batch or 64
    shape = dict(stem_stride=args.stem_stride, num_classes=args.classes, in_chans=args.in_chans)
    measurer = Measurer(args.by, device=device, batch=batch, **shape,
                        echo=lambda line: print(line, file=sys.stderr))  # stdout: the table
    base = parse_name(args.match).with_(phi=0.0, d=1.0, w=1.0, r=1.0, res=None, fast=1.0)
    first = len(names) - len(DIMENSIONS)  # the MACs matches, one per dimension, come last
    walks = {i: walk(base, dimension, names[i], args.match, **shape)
             for i, dimension in zip(range(first, len(names)), DIMENSIONS)}
    found = cost_search(walks, measurer)
    for i, hit in found.items():
        names[i] = hit.name
    notes[:] = [n for n in notes if n.split(":")[0] not in DIMENSIONS]  # MACs notes: moot
    notes.append(f"cost_ratio: measured {args.by} ({UNITS[args.by]}) / {args.match}'s, on "
                 f"{device}, batch {batch}, medians of {ROUNDS} rounds (searched from the MACs "
                 f"match along the same grid); measured ratios vary by a few percent between "
                 f"runs")
    return {hit.name: hit.ratio for hit in found.values()}


def _measure(args, names: list[str], rows: list[dict]) -> str:
    """Add the measured columns to `rows`; return the legend line that says how."""
    import torch  # only --measure needs torch

    from ..model.measure import LATENCY_CALLS, measure

    warmup = 2
    results = measure(names, device=args.device or "cpu", batch=args.batch or 64,
                      num_classes=args.classes, in_chans=args.in_chans,
                      stem_stride=args.stem_stride, resolution=args.resolution,
                      rounds=args.rounds or 5, warmup=warmup)
    for row, m in zip(rows, results):
        values = (m.train_img_s, *m.train_img_s_spread, m.infer_img_s, *m.infer_img_s_spread,
                  m.latency_ms, m.latency_p90_ms, m.peak_mib)
        row.update({column: round(value, 3 if column.startswith("latency") else 1)
                    for column, value in zip(MEASURED, values)})
    m = results[0]
    threads = f" (torch threads: {torch.get_num_threads()})" if m.device.startswith("cpu") else ""
    return (f"measured on {m.device}{threads}, batch {m.batch}, {m.precision}, "
            f"channels_last={m.channels_last}: medians of {m.rounds} rounds interleaved across "
            f"models after {warmup} warm-up rounds (_min/_max: spread over the rounds); train: "
            f"forward, label-smoothed CE, backward, SGD step; infer: no_grad eval forward; "
            f"latency: batch 1, median and p90 of {LATENCY_CALLS} calls per round; peak_mib: "
            f"one training step, {m.peak_method}")
