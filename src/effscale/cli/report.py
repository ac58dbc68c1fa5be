"""`effscale report DIR`: report.html (self-contained) and report.md of a study or search."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "report", help="write report.html and report.md for a study or search directory",
        description="Recompute results.csv/.md and the plots from the run directories and "
                    "write one self-contained report.html (no network needed to view it) and "
                    "its Markdown twin report.md in the directory.")
    p.add_argument("study_dir", help="a directory written by effscale study or effscale search")
    p.add_argument("--no-cams", action="store_true", help="skip the class-activation-map figure")
    p.add_argument("--images", type=int, default=6, help="images in the CAM figure (default 6)")
    return p


def run(args) -> int:
    from ..report.pages import report
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    report(args.study_dir, cams=not args.no_cams, images=args.images)
    return 0
