"""Atomic file writes: a crash or an error mid-write never leaves a half file under the final name."""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .errors import ArtifactError

# mkstemp creates 0600 files and mkdtemp 0700 folders; published artefacts get the mode a plain
# open() / mkdir() would give them under the user's umask (a Triton container or a service running
# as another user must be able to read them).
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK
TMP_SUFFIX = ".tmp"  # temp files are ``.<name>.<random>.tmp`` beside the final file


def _tmp_prefix(final: Path) -> str:
    return f".{final.name}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    The temporary file lives in the same folder so the final ``os.replace`` is atomic on POSIX.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_tmp_prefix(final), suffix=TMP_SUFFIX, dir=final.parent)
    except OSError as exc:
        raise ArtifactError(
            f"cannot write {final}: {exc.strerror or exc}; choose a writable output folder"
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(_FILE_MODE)
    try:
        yield tmp
        os.replace(tmp, final)
    except ArtifactError:
        raise
    except OSError as exc:  # disk full, quota, a folder vanished: name the file the user asked for
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise ArtifactError(
            f"writing {final} failed: {exc.strerror or exc}; "
            + ("free some space or write elsewhere" if full else "choose a writable file path")
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()


def remove_stale_temps(path: str | os.PathLike[str], older_than_s: float, log: logging.Logger) -> None:
    """Delete the temp files of ``path``'s writes untouched for ``older_than_s`` (left by a killed
    process), one warning each; files another process removes first, or that are not ours, are skipped."""
    final = Path(path)
    if not final.parent.is_dir():
        return
    now = time.time()
    for tmp in final.parent.glob(f"{_tmp_prefix(final)}*{TMP_SUFFIX}"):
        try:
            st = tmp.stat()
            age = now - st.st_mtime
            if age > older_than_s:
                tmp.unlink()
                log.warning("removed %s (%d bytes), left by a save killed %.0f s ago", tmp, st.st_size, age)
        except OSError:
            continue


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_with(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> Path:
    """Atomically produce ``path`` with ``writer(tmp_path)``, for libraries that want a file name."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def read_json_object(path: str | os.PathLike[str], what: str, fix: str) -> dict[str, Any]:
    """Read a JSON object the project wrote; ArtifactError naming ``what`` and ``fix`` otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise ArtifactError(f"no {what} at {path}; {fix}") from exc
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {what} {path}: {exc}; {fix}") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{what} {path} holds {type(data).__name__}, expected a JSON object; {fix}")
    return data
