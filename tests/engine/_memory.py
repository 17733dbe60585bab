"""Peak resident memory of one call, for the bounded-memory Gallery tests (Linux /proc only)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def reset_and_read_peak_mb(reset: bool) -> float:
    """Writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM), so one call's own peak is seen."""
    if reset:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    with open("/proc/self/status") as fh:
        line = next(row for row in fh if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def require_peak_reset() -> None:
    """Skip the calling test where the peak RSS cannot be reset (not Linux, or /proc read-only)."""
    try:
        reset_and_read_peak_mb(reset=True)
    except OSError as exc:
        pytest.skip(f"cannot reset peak RSS here ({exc}); needs Linux /proc/self/clear_refs")


def peak_growth_mb(call: Callable[[], T]) -> tuple[float, T]:
    """(how far ``call`` raised the peak RSS above the RSS before it, in MiB; what it returned)."""
    base = reset_and_read_peak_mb(reset=True)
    result = call()
    return reset_and_read_peak_mb(reset=False) - base, result


def in_fresh_process(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in a newly spawned interpreter (``fn`` importable at module level). A peak measured
    there does not depend on what this long test process freed before: glibc keeps freed heap and
    raises its mmap threshold as it goes, so a later allocation may not raise the RSS at all."""
    import multiprocessing
    import os

    # A fixed mmap threshold: every block of 64 KiB or more is its own mapping, returned when freed, so
    # the peak RSS is the most memory live at once, not what the allocator happened to keep.
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(fn, args)
    finally:
        if saved is None:
            del os.environ["MALLOC_MMAP_THRESHOLD_"]
        else:
            os.environ["MALLOC_MMAP_THRESHOLD_"] = saved
