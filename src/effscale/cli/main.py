"""`effscale SUBCOMMAND ...`: each subcommand lives in effscale/cli/<name>.py with
`add_parser(subparsers)` and `run(args) -> int`. Bad input is one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from pathlib import Path

from ..experiments.ray_executor import MissingExtra
from ..io.lock import Stopped, waiting

COMMANDS = ("profile", "train", "evaluate", "study", "search", "cam", "report", "compare",
            "export")
LOCKING = ("train", "study", "search")  # commands that lock their directory: --wait


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="effscale", description="EfficientNet scaling research toolkit")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
    args = None
    try:
        args = build_parser().parse_args(argv)
        with waiting(getattr(args, "wait", False)):
            return int(args.handler(args) or 0)
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `effscale ... | head`: the reader left; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        if exc.errno is None or isinstance(exc, ConnectionError):  # our own one-line messages
            return _one_line(exc)
        print(os_error_line(exc, getattr(args, "command", None)), file=sys.stderr)
        return 2
    except (ValueError, MissingExtra) as exc:
        return _one_line(exc)
    except Stopped as exc:  # SIGTERM / SIGINT: checkpointed; says how to resume
        print(f"effscale: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("effscale: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> int:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    print(f"effscale: error: {message}", file=sys.stderr)
    return 2


_WRITING = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_NOT_DIR = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR}


def os_error_line(exc: OSError, command: str | None = None) -> str:
    """One line for an OS error: the path, the cause with its errno, and what to do
    (`effscale: cannot write runs/x/state.pt: No space left on device (errno 28); free space
    and re-run with --resume`)."""
    cause = f"{exc.strerror or os.strerror(exc.errno)} (errno {exc.errno})"
    if exc.filename is None:
        return f"effscale: error: {cause}"
    path = str(exc.filename)
    verb = "write" if exc.errno in _WRITING | _NOT_DIR else "use"
    again = "re-run with --resume" if command == "train" else "re-run the same command"
    hint = {errno.ENOSPC: f"free space and {again}", errno.EDQUOT: f"free space and {again}",
            errno.EROFS: "the file system is read-only; choose a writable location",
            errno.EACCES: "no permission; choose a location you may write to",
            errno.EPERM: "no permission; choose a location you may write to"}.get(exc.errno)
    if exc.errno in _NOT_DIR:
        hint = _in_the_way(path)
    data = os.environ.get("EFFSCALE_DATA")
    if data and _inside(path, data) and exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        hint = f"EFFSCALE_DATA={data}: point it at a writable directory, or pass --data-dir"
    return f"effscale: cannot {verb} {path}: {cause}" + (f"; {hint}" if hint else "")


def _in_the_way(path: str) -> str | None:
    """'X is a file, not a directory' for the nearest existing parent of `path` that is one."""
    for parent in Path(path).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory; move it or choose another path"
            break
    if Path(path).is_dir():
        return f"{path} is a directory; give a file path"
    return None


def _inside(path: str, directory: str) -> bool:
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(directory))
        return True
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
