"""Row buffers with amortised capacity growth, shared by the gallery store and its derived copies."""
from __future__ import annotations

from typing import Any

GROWTH = 1.5  # capacity factor when an append overflows a buffer: amortised O(1) copies per added row


def with_room(buf: Any, used: int, extra: int, growth: float = GROWTH) -> Any:
    """``buf`` when it holds ``used + extra`` rows, else its first ``used`` rows copied into a buffer
    ``growth`` times larger (exactly ``used + extra`` when that is more, e.g. the first add)."""
    need = used + extra
    if need <= buf.shape[0]:
        return buf
    grown = buf.new_empty((max(need, int(buf.shape[0] * growth)), *buf.shape[1:]))
    grown[:used] = buf[:used]
    return grown
