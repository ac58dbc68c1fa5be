"""`effscale SUBCOMMAND ...`: each subcommand lives in effscale/cli/<name>.py with
`add_parser(subparsers)` and `run(args) -> int`. Bad input is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..experiments.ray_executor import MissingExtra
from ..io.lock import Stopped, waiting

COMMANDS = ("profile", "train", "evaluate", "study", "search", "cam", "report", "export")
LOCKING = ("train", "study", "search")  # commands that lock their directory: --wait


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="effscale", description="EfficientNet scaling research toolkit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(f"effscale.cli.{name}")
        p = module.add_parser(sub)
        p.set_defaults(handler=module.run)
        if name in LOCKING:
            p.add_argument("--wait", action="store_true", default=argparse.SUPPRESS,
                           help="when another effscale process is using the directory, wait "
                                "for it to finish (default: refuse with one line naming it)")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        with waiting(getattr(args, "wait", False)):
            return int(args.handler(args) or 0)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError, MissingExtra, ConnectionError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"effscale: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `effscale ... | head`: the reader left; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Stopped as exc:  # SIGTERM / SIGINT: checkpointed; says how to resume
        print(f"effscale: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("effscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
