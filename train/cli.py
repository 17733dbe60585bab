"""What the ``train`` command lines share: argument types, the help formatter, errors and signals.

Exit codes: 0 done, 2 bad input (the message says what was got, what was expected, how to fix it),
130 interrupted by Ctrl-C, 143 terminated by SIGTERM (both print how to continue).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from engine.errors import JLMLError

EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 130, 143


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so it unwinds (and cleans up) like Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises ``Terminated`` (main thread only: signals go there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_cli(body: Callable[[], int], continue_hint: Callable[[], str]) -> int:
    """Run a command's ``body``; a project error prints ``error: ...`` and gives exit 2, Ctrl-C or SIGTERM
    print ``continue_hint()`` and give 130 / 143."""
    with sigterm_as_interrupt():
        try:
            return body()
        except JLMLError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            print(f"{'terminated (SIGTERM)' if terminated else 'interrupted'}; {continue_hint()}", file=sys.stderr)
            return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
