"""Shard actors that stall once inside one method, so a test can SIGKILL them mid-call.

It lives in its own module so Ray workers can import it (the tests put this folder on their path).
The test creates ``stall-METHOD`` beside the manifest; the first shard to enter METHOD removes it,
writes its index to ``entered-METHOD`` and sleeps until killed. Ray restarts it (the constructor runs
again, the marker is gone) and the driver's retry finds an ordinary shard.
"""
from __future__ import annotations

import time
from typing import Any

from engine.atomic import write_text
from engine.sharded.actor import ShardActor

STALL_S = 120.0


class StallOnce(ShardActor):
    def _stall(self, method: str) -> None:
        folder = self.manifest_path.parent
        try:
            (folder / f"stall-{method}").unlink()
        except FileNotFoundError:
            return
        write_text(folder / f"entered-{method}", str(self.index))
        time.sleep(STALL_S)

    def search(self, *args: Any) -> Any:
        self._stall("search")
        return super().search(*args)

    def prepare(self, *args: Any) -> Any:
        self._stall("prepare")
        return super().prepare(*args)

    def commit(self, *args: Any) -> Any:
        self._stall("commit")
        return super().commit(*args)
