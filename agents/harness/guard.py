"""Guards of a run's output directory: checked before any work, and held by one run at a time.

    check_out_dir(out)                     # a file, or a path under a file, or no write permission: OutDirError
    with RunLock(out, "refuel train ..."): # a second run on the same OUT is refused, naming the holder's pid
        ...

The lock is ``OUT/.refuel.lock``: an ``fcntl.flock`` held for the whole run (the kernel drops it when the
process dies, however it dies) on a file that records the holder's pid, host, command and start time. A lock
file whose lock nobody holds was left by a run that died: it is taken over, and the run says so. Where
``flock`` is missing (Windows), the recorded pid is checked instead.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger(__name__)
LOCK_NAME = ".refuel.lock"


class OutDirError(ValueError):
    """``--out`` cannot hold a run's output; the message says why and what to do."""


class LockedError(RuntimeError):
    """Another live run holds the lock of this output directory."""


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output directory that cannot be used, before any work: an existing file, a path below a
    file, or a directory (or its nearest existing parent) without write permission. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutDirError(f"{flag} {path} is a file, not a directory; give a directory (it is created if missing)")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutDirError(f"{flag} {path}: {probe} is a file, so {path} cannot be a directory; choose another {flag}")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise OutDirError(f"{flag} {path}: no permission to write in {probe}; choose a directory you can write to")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if info.get("started") else "?"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started {started}"
            + (f": `{info['command']}`" if info.get("command") else ""))


class RunLock:
    """An exclusive lock on a run's output directory (see the module doc). Re-entrant neither across
    processes nor within one: a second ``acquire`` on the same directory raises :class:`LockedError`."""

    def __init__(self, out: str | Path, command: str = ""):
        self.out, self.command = Path(out), command
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None
        self.took_over: dict | None = None
        """The record of a dead run whose lock this one took over, if any."""

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise LockedError(self._held_message(self._read())) from None
                    try:  # the holder may have released (and removed) the file between our open and flock
                        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                    except FileNotFoundError:
                        same = False
                    if not same:
                        os.close(fd)
                        continue
                self._claim(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return self

    def _claim(self, fd: int) -> None:
        """Record this run in the lock file; a record left there is a dead run's (a live one holds the flock)."""
        previous = self._read()
        if previous.get("pid") and previous.get("pid") != os.getpid():
            same_host = previous.get("host") == socket.gethostname()
            if fcntl is None and same_host and _alive(int(previous["pid"])):
                raise LockedError(self._held_message(previous))
            self.took_over = previous
            log.warning("[lock] %s was left by a run that is no longer running (%s); taking it over",
                        self.path, _describe(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        os.fsync(fd)

    def _held_message(self, info: dict) -> str:
        pid = info.get("pid", "?")
        return (f"{self.out} is in use by another run ({_describe(info)}); wait for it to finish, stop it "
                f"(`kill {pid}`: it stops cleanly and a later run resumes), or give another --out")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # unlink while still holding the lock: no one sees a stale record
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
