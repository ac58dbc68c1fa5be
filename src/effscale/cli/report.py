"""`effscale report DIR`: report.html (self-contained) and report.md of a study or search."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser(
        "report", help="write report.html and report.md for a study or search directory",
        description="Recompute results.csv/.md and the plots from the run directories and "
                    "write one self-contained report.html (no network needed to view it) and "
                    "its Markdown twin report.md in the directory (replacing the ones "
                    "there; a report.html or report.md that holds anything else is refused).")
    p.add_argument("study_dir", help="a directory written by effscale study or effscale search")
    p.add_argument("--no-cams", action="store_true", help="skip the class-activation-map figure")
    p.add_argument("--images", type=int, default=6, help="images in the CAM figure (default 6)")
    p.add_argument("--measure", action="store_true",
                   help="first measure the cost (train/infer img/s, batch-1 latency, peak "
                        "memory) of every model that has no measurement yet, on this machine, "
                        "training nothing (a study, or every budget of one)")
    p.add_argument("--device", help="with --measure: where to measure (default: the study's "
                                    "device if this machine has it, else the CPU)")
    return p


def check_report_paths(study_dir: str) -> None:
    """DIR must be a directory, and its report.html / report.md (when they exist) reports: an
    HTML file, a text file; not a directory, an input or another kind of file."""
    from pathlib import Path
    from ..io.files import check_output
    where = Path(study_dir)
    if where.exists() and not where.is_dir():
        raise ValueError(f"{where} is a file; give a study or search directory")
    inputs = [where / name for name in ("study.json", "search.json", "results.csv")]
    fix = "move it away, or copy the study elsewhere"
    check_output(where / "report.html", suffixes=(".html",), kinds=("HTML",), inputs=inputs,
                 flag="report", fix=fix)
    check_output(where / "report.md", suffixes=(".md",), kinds=("text",), inputs=inputs,
                 flag="report", fix=fix)


def run(args) -> int:
    from ..reporting.pages import report
    check_report_paths(args.study_dir)
    if args.images < 1:
        raise ValueError(f"--images must be >= 1, got {args.images}")
    if args.device and not args.measure:
        raise ValueError("--device applies to --measure only")
    if args.measure:
        from ..experiments.cost import measure_models
        measure_models(args.study_dir, device=args.device)
    report(args.study_dir, cams=not args.no_cams, images=args.images)
    return 0
