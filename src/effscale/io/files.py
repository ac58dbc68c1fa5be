"""Writing files so that a reader never sees half of one (torch-free)."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from pathlib import Path


def atomic_write(path: str | Path, write, *, previous: str | Path | None = None) -> None:
    """Call write(tmp_path), then rename over `path`: a reader never sees half a file.

    With `previous`, the file `path` held so far is renamed to it just before the new one
    takes its place: the last good version survives a new one that turns out unreadable. In
    the instant between the two renames only `previous` exists.

    On failure the temporary file is removed and `path` (and `previous`) are as they were. An
    OS error (disk full, read-only, permission, a file where a directory should be) is raised
    as OSError naming `path` (not the temporary file), also when the writer reports it as its
    own exception (safetensors' SafetensorError, torch's RuntimeError): see `os_error_of`."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL with mode 0o666 lets the kernel apply the process umask, as for any new file
        # (mkstemp's 0600 would need the umask read, which means setting it: not thread-safe)
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            write(str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            if previous is not None and path.exists():
                os.replace(path, previous)
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    except Exception as exc:
        error = os_error_of(exc, tmp)
        if error is None:
            raise
        filename = error.filename
        if filename is None or str(filename) == str(tmp):
            filename = path
        raise OSError(error.errno, error.strerror or os.strerror(error.errno),
                      str(filename)) from exc


# "No space left on device (os error 28)" (Rust's io::Error, as safetensors words it),
# "Os { code: 28, ...}" (its Debug form), "[Errno 28] ..." (Python's)
_ERRNO_IN_TEXT = re.compile(r"os error (\d+)|Os \{ code: (\d+)|\[Errno (\d+)\]")
_LOW_SPACE = 1 << 20  # bytes: a writer that failed with less than this free ran out of space


def os_error_of(exc: BaseException, written: str | Path | None = None) -> OSError | None:
    """The OS error behind a failed write, or None: `exc` itself when it is an OSError with an
    errno, one in its cause chain, or one read from its message (safetensors); torch.save's
    "file write failed" (which drops the errno) counts as ENOSPC when the file system of
    `written` has less than 1 MiB free."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno:
            return seen
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    match = _ERRNO_IN_TEXT.search(str(exc))
    if match:
        number = int(next(g for g in match.groups() if g))
        return OSError(number, os.strerror(number))
    if written is not None and "write failed" in str(exc):
        try:
            free = shutil.disk_usage(Path(written).parent).free
        except OSError:
            return None
        if free < _LOW_SPACE:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")


# -- refusing an output path that would destroy something ------------------------------------------

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"%PDF", "PDF"),
          (b"PK\x03\x04", "zip (a PyTorch .pt / .pth?)"), (b"\x1f\x8b", "gzip"))


def sniff(path: str | Path) -> str | None:
    """What a file holds, from its first bytes: 'PNG', 'JPEG', 'PDF', 'zip ...', 'gzip',
    'safetensors', 'SVG', 'HTML', 'JSON', 'text', or None (unknown: ONNX, binary)."""
    with open(path, "rb") as f:
        head = f.read(64)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) > 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 1:
        return "safetensors"
    text = head.lstrip().lower()
    if text.startswith((b"<?xml", b"<svg")):
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    if text.startswith((b"{", b"[")):
        return "JSON"
    if head and b"\0" not in head and all(32 <= c or c in (9, 10, 13) for c in head[:32]):
        return "text"
    return None


def check_output(path: str | Path, *, suffixes: tuple[str, ...], kinds: tuple[str | None, ...],
                 inputs=(), flag: str, fix: str | None = None) -> None:
    """Refuse (ValueError, one line) an output `path` that is one of the command's `inputs`
    (files or directories), lies inside an input file's place, is a directory, or is an
    existing file of another kind: a suffix not in `suffixes`, or content whose `sniff` is
    not in `kinds`. An existing file of the right kind (or an empty one) may be replaced.
    `fix` ends the message (default: choose another FLAG)."""
    path = Path(path)
    fix = fix or f"choose another {flag}"
    where = path.resolve()
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve() == where:
            raise ValueError(f"{flag} {path} is one of this command's inputs; {fix}")
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory; give a file path")
    if not path.exists():
        return
    if not path.is_file():
        raise ValueError(f"{flag} {path} exists and is not a regular file; {fix}")
    kind = sniff(path) if path.stat().st_size else "empty"
    if kind == "empty" and path.suffix.lower() in suffixes:
        return
    if path.suffix.lower() not in suffixes or kind not in kinds:
        what = kind or (f"a {path.suffix} file" if path.suffix else "an unknown file")
        what = what if what.startswith("a") else f"a {what} file"
        raise ValueError(f"refusing to replace {path}: it holds {what}, not the "
                         f"{'/'.join(suffixes)} this command writes; {fix}")


def checkpoint_inputs(paths) -> list[Path]:
    """The files a command reads for these checkpoints: each path, and for a run directory
    the model files in it (for `check_output`'s inputs)."""
    out = []
    for path in paths:
        if path is None:
            continue
        out.append(Path(path))
        if Path(path).is_dir():
            out += [Path(path) / name for name in ("best.safetensors", "last.safetensors")]
    return out
