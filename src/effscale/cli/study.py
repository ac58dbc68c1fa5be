"""`effscale study`: compound vs single-dimension scaling at matched FLOPs, over seeds."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from ..experiments.configs import StudyConfig, add_flags, given_flags


def add_parser(sub):
    p = sub.add_parser(
        "study", help="compound vs depth/width/resolution/fast scaling at matched FLOPs",
        description="Train the baseline and, at each FLOPs level, the compound model and the "
                    "depth-, width-, resolution-only and fast compound (dWr) models matched to "
                    "the same MACs, over "
                    "seeds; write results.csv/.md, plots and report.html. Re-running the same "
                    "command skips finished runs and resumes interrupted ones. With no flags: "
                    "a quick study on the bundled digits data (a few minutes on CPU).")
    p.add_argument("--config", metavar="FILE",
                   help="study config JSON (keys as the flags, e.g. {\"levels\": [2, 4]}); "
                        "flags override it")
    add_flags(p, StudyConfig)  # every other flag: a StudyConfig field (experiments.configs)
    p.add_argument("--dry-run", action="store_true",
                   help="print the matched plan and an estimated wall time (a few "
                        "training steps of each model timed), and exit without training")
    p.add_argument("--no-estimate", action="store_true",
                   help="with --dry-run: do not time the models for a wall-time estimate")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    return p


def command_line(name: str, args, cls, extra=()) -> str:
    """The command as typed, rebuilt from the parsed flags (sys.argv is not ours when main()
    is called in-process), so the report can say exactly how to reproduce the study: the
    CLI-only `extra` flags first, then the config's in declaration order."""
    import shlex
    argv = ["effscale", name]
    for key in extra:
        value = getattr(args, key, None)
        if value is not None and value is not False:
            argv += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    bools = {f.name: f.default for f in fields(cls) if f.metadata.get("type") is bool}
    for key, value in given_flags(args, cls).items():
        flag = "--" + key.replace("_", "-")
        if key in bools:  # a switch: --no-measure, --no-paper
            argv.append(f"--no-{flag[2:]}" if bools[key] else flag)
        elif value is not None:
            argv += [flag, str(value)]
    return shlex.join(argv)


def run(args) -> int:
    from ..experiments.study import study
    file_values = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"no such study config: {path}")
        try:
            file_values = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"cannot parse study config {path}: {exc}") from None
        if not isinstance(file_values, dict):
            raise ValueError(f"study config {path} must hold a JSON object")
        file_values = {k.replace("-", "_"): v for k, v in file_values.items()}
    flags = given_flags(args, StudyConfig)
    result = study(file_values, dry_run=args.dry_run, report=not args.no_report,
                   command=command_line("study", args, StudyConfig, extra=("config",)),
                   **flags)
    if args.dry_run:
        if not args.no_estimate:
            from ..experiments.estimate import estimate_plan
            estimate_plan(result)
        return 0
    print()
    print(result["conclusion"])
    if result["failed"]:
        print(f"{len(result['failed'])} run(s) failed: {', '.join(result['failed'])}; "
              f"see {result['out']}/logs or re-run to retry")
        return 1
    return 0
