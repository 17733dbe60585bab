"""Publishing an artefact folder so a reader sees the old artefact set or the new one, never a mix.

A build writes everything into a staging folder beside ``--out`` (same file system), and publishing
swaps the two folders: atomically with ``renameat2(RENAME_EXCHANGE)`` where Linux offers it, else by
two renames (then, for an instant, there is no folder at all, which a reader reports as missing rather
than serving half of two exports). Because the whole folder is replaced, ``--out`` must hold nothing
but artefacts; timing caches are carried over into the new folder.

Staging folders are named ``.build-<out>-<pid>-<random>``; one whose process is gone was left by a
killed run and is removed, with a log line, by the next run.
"""
from __future__ import annotations

import contextlib
import ctypes
import fnmatch
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from engine.atomic import DIR_MODE
from engine.client import REPOSITORY_DIR
from engine.errors import ArtifactError, InputError
from engine.spec import (
    MODEL_CARD_FILE,
    ONNX_FILE,
    ONNX_FP16_FILE,
    PARITY_FILE,
    PLAN_FILE,
    PLAN_SIDECAR_FILE,
    SPEC_FILE,
)

from .int8 import FILES as INT8_FILES

TRITON_DIR = REPOSITORY_DIR
ARTEFACT_NAMES = frozenset({ONNX_FILE, ONNX_FP16_FILE, PLAN_FILE, PLAN_SIDECAR_FILE, PARITY_FILE, SPEC_FILE,
                            MODEL_CARD_FILE, TRITON_DIR, *INT8_FILES})
TIMING_CACHES = "timing-*.cache"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _ours(name: str) -> bool:
    return name in ARTEFACT_NAMES or fnmatch.fnmatch(name, TIMING_CACHES) or name.startswith(".build-")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file or holds anything but artefacts: it is replaced as a whole."""
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file; pass a folder (created if missing)")
    foreign = sorted(p.name for p in out.iterdir() if not _ours(p.name)) if out.is_dir() else []
    if foreign:
        raise InputError(
            f"--out {out} holds files that are not artefacts ({', '.join(foreign[:5])}); publishing replaces "
            "the whole folder, so pass an empty folder or one an earlier export wrote"
        )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(out: Path, say: Callable[[str], None]) -> None:
    """Remove staging/swap folders of earlier runs that were killed (their process is gone)."""
    pattern = re.compile(rf"^\.(build|old)-{re.escape(out.name)}-(\d+)-")
    beside = [p for p in out.parent.iterdir() if pattern.match(p.name)] if out.parent.is_dir() else []
    inside = list(out.glob(".build-*")) if out.is_dir() else []  # left by builds before this layout
    for folder in beside + inside:
        match = pattern.match(folder.name)
        if match and _alive(int(match.group(2))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        say(f"removed {folder}, left by an earlier build that was killed")


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` holding ``out``'s timing caches; removed at the end in any case."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".build-{out.name}-{os.getpid()}-", dir=out.parent))
        stage.chmod(DIR_MODE)  # mkdtemp's 0700 would be published as the artefact folder's mode
    except OSError as exc:
        raise ArtifactError(f"cannot write output folder {out}: {exc.strerror or exc}; choose a "
                            "writable --out") from exc
    try:
        for cache in out.glob(TIMING_CACHES) if out.is_dir() else []:
            shutil.copy2(cache, stage / cache.name)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def publish(stage: Path, out: Path) -> None:
    """Make ``stage`` the folder ``out``; the previous ``out`` ends up at ``stage`` (removed by ``staging``)."""
    if not out.exists():
        os.rename(stage, out)
    elif not _exchange(stage, out):
        old = Path(tempfile.mkdtemp(prefix=f".old-{out.name}-{os.getpid()}-", dir=out.parent))
        os.rename(out, old / out.name)
        try:
            os.rename(stage, out)
        except OSError as exc:  # put the old set back: a reader must never be left with nothing
            os.rename(old / out.name, out)
            raise ArtifactError(f"cannot publish {stage} as {out}: {exc}; the previous artefacts are "
                                "unchanged") from exc
        finally:
            if (old / out.name).exists():
                os.rename(old / out.name, stage)
            old.rmdir()
