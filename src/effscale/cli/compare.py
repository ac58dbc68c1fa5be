"""`effscale compare DIR [DIR ...]`: studies and searches side by side."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "compare", help="one table and one top-1-vs-MACs plot of several studies or searches",
        description="Merge the models of several study, budgets-study or search directories "
                    "(mean ± std of top-1 over each model's finished seeds) into one table, "
                    "printed as Markdown; with --out also compare.csv, compare.md and "
                    "accuracy_vs_macs.png/.svg there. Results on different datasets are "
                    "refused unless --allow-mixed.")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="study, budgets-study or search "
                                                          "directories")
    p.add_argument("--out", help="directory for compare.csv, compare.md and the plot (created "
                                 "if missing; earlier compare files there are replaced)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="allow directories on different datasets in one table")
    return p


def run(args) -> int:
    from pathlib import Path

    from ..io.files import check_output
    from ..io.table import render
    from ..reporting.compare import compare_rows, display, write_compare
    rows = compare_rows(args.dirs, allow_mixed=args.allow_mixed)
    if not rows:
        raise ValueError("the directories hold no planned models")
    if args.out:
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a directory")
        inputs = [Path(d) for d in args.dirs]
        for name, suffix, kind in (("compare.csv", ".csv", "text"), ("compare.md", ".md", "text"),
                                   ("accuracy_vs_macs.png", ".png", "PNG"),
                                   ("accuracy_vs_macs.svg", ".svg", "SVG")):
            check_output(out / name, suffixes=(suffix,), kinds=(kind,), inputs=inputs,
                         flag="--out", fix="choose another --out")
        if any(out.resolve() == d.resolve() for d in inputs if d.exists()):
            raise ValueError(f"--out {out} is one of the compared directories; choose another")
    print(render(display(rows), "markdown"))
    if args.out:
        paths = write_compare(rows, Path(args.out))
        print(f"wrote {paths['csv']}, {paths['md']} and {paths['figure'][0]}")
    return 0
