"""One training run per run folder: ``run_lock(out)`` holds ``OUT/.lock`` for the run's life.

Two ``python -m train --out SAME`` at once would both write ``last.pt`` and ``metrics.json`` and both
exit 0 with one run on disk. The lock is an exclusive ``fcntl.flock`` on the file, which the kernel
releases when its process dies however it dies, so a lock left by a killed run is told from a live
one exactly: the file still names the dead process, nobody holds it, and the next run takes it over
and says so. The file holds the holder's pid and host, for the message the second run prints.
(flock is advisory and local: on a network file system two hosts may not see each other's lock.)
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.errors import ArtifactError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(out: Path, log: Callable[[str], object] = print) -> Iterator[Path]:
    """Hold ``out/.lock`` within the block; ArtifactError naming the holder's pid if a live process
    holds it. The file is removed on the way out."""
    path = out / LOCK_FILE
    fd = _acquire(path, log)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)  # removed while still locked: a waiting run retries on a new file
        os.close(fd)


def _acquire(path: Path, log: Callable[[str], object]) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ArtifactError(f"cannot create the run lock {path}: {exc.strerror or exc}; pass a writable "
                                "--out") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "another process"
            os.close(fd)
            raise ArtifactError(f"--out {path.parent} is in use: {holder} is training into it (it holds {path}); "
                                "wait for that run to end, or pass another --out") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    stale = _holder(fd)
    if stale:
        log(f"taking over the stale run lock {path} of {stale}: that process ended without releasing it")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
    return fd


def _holder(fd: int) -> str:
    """Who the lock file says holds it (``pid N on HOST``), or "" for a fresh file."""
    return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
