"""`effscale SUBCOMMAND ...`: each subcommand lives in effscale/cli/<name>.py with
`add_parser(subparsers)` and `run(args) -> int`. Bad input is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..experiments.ray_executor import MissingExtra

COMMANDS = ("profile", "train", "evaluate", "study", "search", "cam", "report", "export")


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
        module.add_parser(sub).set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
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
    except KeyboardInterrupt:
        print("effscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
