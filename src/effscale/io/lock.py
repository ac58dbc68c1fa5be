"""Coordination between processes (torch-free): one process per directory (`dir_lock`), and
stopping cleanly on SIGTERM / SIGINT (`stop_signals`, `Stopped`).

A study, search or run directory is locked with `DIR/.effscale.lock`, held with fcntl.flock:
the kernel releases it when its process dies, however it dies, so a lock left by a killed
process is never mistaken for a live one. The file records the holder (pid, host, since) for
the message a second process gets; a file left behind by a killed holder is taken over with one
log line. The holder removes the file when it lets go, so a finished directory holds none.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

LOCK_FILE = ".effscale.lock"
_WAIT = contextvars.ContextVar("effscale_wait", default=False)  # the CLI's --wait


@contextlib.contextmanager
def waiting(wait: bool):
    """The default of dir_lock's wait for the block (the CLI's --wait)."""
    token = _WAIT.set(bool(wait))
    try:
        yield
    finally:
        _WAIT.reset(token)


class Stopped(KeyboardInterrupt):
    """Training stopped on a signal after writing a checkpoint; `code` is the exit status the
    command should end with (128 + the signal number: 143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.code = signum, 128 + signum


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# -- one process per directory ---------------------------------------------------------------------

def _holder(path: Path) -> dict:
    try:
        value = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe(holder: dict) -> str:
    pid = holder.get("pid", "?")
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    since = holder.get("since")
    when = f" (since {time.strftime('%H:%M', time.localtime(since))})" if since else ""
    return f"process {pid}{where}{when}"


def _try_lock(path: Path, wait: bool) -> int | None:
    """An fd of `path` holding its flock, or None when another process holds it (not wait).
    The file may be replaced while we wait (its holder removes it): lock the one at `path`."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # its holder removed it as we took it: lock the new one


@contextlib.contextmanager
def dir_lock(directory, *, wait: bool | None = None, log=print, flag: str = "--wait"):
    """Hold DIR/.effscale.lock for the block (the directory is created if need be, and
    removed again if the block leaves it empty). Another holder: ValueError naming it
    (one line), or with wait=True, one log line and then wait for it (wait None: the
    `waiting` default, the CLI's --wait)."""
    wait = _WAIT.get() if wait is None else wait
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = _try_lock(path, wait=False)
    if fd is None:
        holder = _describe(_holder(path))
        if not wait:
            _remove_if_empty(directory, created)
            raise ValueError(f"{directory} is in use by {holder}; wait for it, or pass {flag}")
        log(f"{directory} is in use by {holder}; waiting for it to finish")
        fd = _try_lock(path, wait=True)
    try:
        stale = _holder(path)
        if stale.get("pid") is not None:
            log(f"{directory}: taking over the lock of {_describe(stale)}, which is no longer "
                f"running")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.time()}).encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding it: a waiter then retries on a new file
        os.close(fd)
        _remove_if_empty(directory, created)


def _remove_if_empty(directory: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only if empty: a refused command leaves nothing behind


# -- stopping on SIGTERM / SIGINT ------------------------------------------------------------------

class StopSignals:
    """Records SIGTERM / SIGINT instead of dying, for the caller to act on at a safe point
    (`requested`: the signal number, 0 while none came). A second signal stops at once,
    unless it comes within REPEAT seconds of the first: that is the same stop delivered twice
    (Ctrl-C reaches a whole process group, and a study also passes it on to its workers)."""

    REPEAT = 2.0

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = 0
        self.agreed = 0  # set by the caller once every process agreed to stop (training: ranks)
        self.first_at = 0.0
        self._previous: dict = {}

    def repeated(self) -> bool:
        """Whether a signal now is a second request (not the first, delivered twice)."""
        return bool(self.requested) and time.monotonic() - self.first_at > self.REPEAT

    def _handle(self, signum, frame):
        if self.repeated():  # asked twice: stop now, from the last checkpoint
            raise KeyboardInterrupt
        if not self.requested:
            self.requested, self.first_at = signum, time.monotonic()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; elsewhere signals behave as before
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


@contextlib.contextmanager
def stop_signals():
    """A StopSignals installed for the block, the previous handlers restored after it."""
    signals = StopSignals()
    signals.install()
    try:
        yield signals
    finally:
        signals.restore()


@contextlib.contextmanager
def experiment_lock(directory, *, wait: bool | None = None, log=print):
    """A study's or search's directory lock for the whole command; a run stopped in this
    process by SIGTERM / SIGINT is reported as the experiment's stop (re-run the command)."""
    with dir_lock(directory, wait=wait, log=log):
        try:
            yield
        except Stopped as exc:
            if "re-run the same command" in str(exc):
                raise
            raise Stopped(f"stopped by {signal_name(exc.signum)}; every run keeps its last "
                          f"checkpoint: re-run the same command to continue", exc.signum) from None
