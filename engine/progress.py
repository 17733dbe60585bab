"""Progress on stderr: a tqdm bar on a terminal, a few plain lines anywhere else.

tqdm redraws its bar with carriage returns; when stderr is a file (a log, CI, ``nohup``, ``2>&1 |
tee``) every redraw stays in it (23 KB of frames for one demo). Off a terminal the same calls print
one line each time another ``every`` of the work is done and one at its end, as torchreid and
Lightning do, so a log reads like a log.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

EVERY = 0.25  # off a terminal: a line at each quarter of the work, and at its end


def progress(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", disable: bool = False, leave: bool = True, every: float = EVERY,
             stream: TextIO | None = None) -> Any:
    """A tqdm bar on a terminal; off one, a ``Lines`` with tqdm's iterate / update / set_postfix /
    close / context-manager surface. ``every=1.0``: only the closing line (e.g. one per epoch)."""
    stream = stream if stream is not None else sys.stderr
    if disable or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=stream)
    return Lines(iterable, total=total, desc=desc, unit=unit, every=every, stream=stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Lines:
    """Progress as plain lines: ``desc: n/total unit (p%), s s[, postfix]``."""

    def __init__(self, iterable: Iterable[Any] | None, *, total: int | None, desc: str, unit: str,
                 every: float, stream: TextIO) -> None:
        self.iterable, self.desc, self.unit, self.stream = iterable, desc, unit, stream
        self.total = total if total is not None else len(iterable) if hasattr(iterable, "__len__") else None
        self.n, self.postfix, self.closed = 0, "", False
        self._step = max(1, round(self.total * every)) if self.total else 0
        self._next = self._step
        self._start = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._step and self.n >= self._next and self.n < self.total:
            self._line()
            self._next = (self.n // self._step + 1) * self._step

    def set_postfix(self, **values: Any) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()

    def _line(self) -> None:
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{share}, {time.perf_counter() - self._start:.1f} s{tail}",
              file=self.stream, flush=True)
