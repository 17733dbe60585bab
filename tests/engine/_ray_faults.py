"""A Ray embedding actor that kills its own process once, mid-way through writing a shard.

It lives in its own module so Ray workers can import it (the tests put this folder on their path).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from engine.atomic import atomic_path
from engine.ray_embed import EmbedShard, shard_path


class KilledOnce(EmbedShard):
    """The first shard any actor writes: half a temporary file, then SIGKILL of the whole worker."""

    def write_shard(self, start: int, stop: int) -> None:
        marker = self.shard_dir.parent / "killed-once"
        try:
            Path(marker).open("x").close()
        except FileExistsError:
            return super().write_shard(start, stop)
        with atomic_path(shard_path(self.shard_dir, start, stop)) as tmp:
            tmp.write_bytes(b"PK half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
