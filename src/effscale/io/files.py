"""Writing files so that a reader never sees half of one (torch-free)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path


def atomic_write(path: str | Path, write, *, previous: str | Path | None = None) -> None:
    """Call write(tmp_path), then rename over `path`: a reader never sees half a file.

    With `previous`, the file `path` held so far is renamed to it just before the new one
    takes its place: the last good version survives a new one that turns out unreadable. In
    the instant between the two renames only `previous` exists."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL with mode 0o666 lets the kernel apply the process umask, as for any new file
    # (mkstemp's 0600 would need the umask read, which means setting it: not thread-safe)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        write(str(tmp))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, value) -> None:
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")
