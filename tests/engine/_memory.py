"""Peak resident memory of one call, for the bounded-memory Gallery tests (Linux /proc only)."""
from __future__ import annotations


def reset_and_read_peak_mb(reset: bool) -> float:
    """Writing 5 to /proc/self/clear_refs resets the peak RSS (VmHWM), so one call's own peak is seen."""
    if reset:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    with open("/proc/self/status") as fh:
        line = next(row for row in fh if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024
