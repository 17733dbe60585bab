"""argparse types only the ``train`` command lines use; the shared CLI tail (run_cli, positive_int,
HelpFormatter, ...) is engine/cli.py."""
from __future__ import annotations

import argparse
import math
from typing import Any


def ints(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated integers."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 32,64,128, got {text!r}") from exc


def parse_key_value(text: str) -> tuple[str, Any]:
    """argparse type: KEY=VALUE, the value an int when it reads as one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. num_ids=40), got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        return key, value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number of at least 0 (a tolerance, a margin)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of at least 0 (e.g. 0.01), got {text!r}")
    return value
