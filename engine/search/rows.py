"""The gallery's rows on the device it searches on: embeddings, norms, ids, cameras and the bounds.

One RowStore is shared by the Gallery façade (which adds to it) and every search path (which read
it). It keeps what all paths need, computed once per add: FP32 and FP64 squared norms, the running
bounds of the two-pass proofs (engine.search.twopass), the rows' tie order by id, and zero-copy numpy
views of a CPU gallery. ``version`` counts the adds, so a path that derives something from the rows
(an approximate index) knows when to rebuild it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import twopass
from .buffers import with_room
from .distance import squared_norms

NORM_ELEMENTS = 1 << 20  # values whose FP64 norms are computed at once in add: an 8 MB FP64 temporary


class RowStore:
    """Rows of dim ``dim`` stored as ``storage`` on ``device`` (a torch.device); ``fp32_rows``: also
    keep the FP32 rows in host memory (the "fp16" path re-ranks against them)."""

    def __init__(self, dim: int, device: Any, storage: str, fp32_rows: bool) -> None:
        import torch

        self.dim, self.device, self.storage = dim, device, storage
        self.n = self.version = 0
        self.ids_sorted, self.ids_are_rows = True, True
        self.norm_bound = 0.0  # running twopass.upper_max of the FP32 norms: the bounds' N, kept per add
        self.fp16_bound = (0.0, 0.0)  # running r, G of the "fp16" path (see twopass.fp16_rows)
        self._ranks: tuple[Any, Any] | None = None  # (rank, order), rebuilt after an add
        self._views: dict[str, np.ndarray] = {}
        i64 = torch.int64
        self._buf = {"emb": torch.empty((0, dim), dtype=getattr(torch, storage), device=device),
                     "sqnorm": torch.empty(0, dtype=torch.float32, device=device),
                     "sqnorm64": torch.empty(0, dtype=torch.float64, device=device),
                     "ids": torch.empty(0, dtype=i64, device=device), "cams": torch.empty(0, dtype=i64, device=device)}
        if fp32_rows:
            self._buf["exact"] = torch.empty((0, dim), dtype=torch.float32)

    @property
    def fp32_rows(self) -> bool:
        return "exact" in self._buf

    def rows(self, name: str) -> Any:
        """The first n entries of buffer ``name`` ("emb", "exact", "sqnorm", "sqnorm64", "ids", "cams")."""
        return self._buf[name][:self.n]

    def host(self, name: str) -> np.ndarray:
        """Zero-copy numpy view of a CPU gallery's rows (cached until the next add)."""
        if name not in self._views:
            self._views[name] = self.rows(name).numpy()
        return self._views[name]

    def saved_rows(self) -> np.ndarray:
        """The rows a file keeps: the FP32 ones where kept (the FP16 ones are their rounding)."""
        return self.rows("exact" if self.fp32_rows else "emb").cpu().numpy()

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` rows in all, so that adds up to there never reallocate."""
        for name in self._buf:
            self._buf[name] = with_room(self._buf[name], self.n, max(0, rows - self.n), growth=1)
        self._views = {}

    def add(self, emb: np.ndarray, ids: np.ndarray, cams: np.ndarray) -> None:
        """Append checked rows (float (m, dim), int64 ids and cams) in insertion order."""
        import torch

        n, m = self.n, len(emb)
        last = int(self._buf["ids"][n - 1]) if n else -1
        self.ids_sorted &= bool(m == 0 or (ids[0] >= last and np.all(np.diff(ids) >= 0)))
        self.ids_are_rows &= bool(self.ids_sorted and np.array_equal(ids, np.arange(n, n + m)))
        self._ranks, self._views = None, {}
        for name in self._buf:
            self._buf[name] = with_room(self._buf[name], n, m)
        for name, rows in (("emb", emb), ("ids", ids), ("cams", cams)) + ((("exact", emb),) if self.fp32_rows else ()):
            self._buf[name][n:n + m].copy_(torch.from_numpy(rows))  # converts dtype and device, no staging
        step = max(1, NORM_ELEMENTS // self.dim)
        starts = range(n, n + m, step)
        # Each block's maxima land in one buffer made before the blocks' temporaries (small tensors kept
        # between them would pin the allocator's heap, and the peak with it); read once per add: on
        # CUDA one host sync, not one per block.
        top = torch.zeros((len(starts), 3), dtype=torch.float32, device=self.device)
        for j, s in enumerate(starts):
            self._add_norms(s, min(s + step, n + m), top[j])
        if len(starts):
            self.norm_bound = max(self.norm_bound, twopass.upper_max(top[:, 0]))
            if self.fp32_rows:
                r, g = self.fp16_bound
                self.fp16_bound = (max(r, twopass.upper_max(top[:, 1])), max(g, twopass.upper_max(top[:, 2])))
        self.n, self.version = n + m, self.version + 1

    def _add_norms(self, start: int, stop: int, top: Any) -> None:
        """Norms of rows [start, stop): of the FP32 rows when kept (the "fp16" path), else as stored.
        ``top`` gets the block's (max squared norm, max FP16 rounding error r, max FP16 norm G)."""
        import torch

        stored = self._buf["emb"][start:stop]
        exact = self._buf["exact"][start:stop].to(stored.device) if self.fp32_rows else stored
        self._buf["sqnorm"][start:stop] = squared_norms(exact)
        self._buf["sqnorm64"][start:stop] = squared_norms(exact.to(torch.float64))
        top[0] = self._buf["sqnorm"][start:stop].max()
        if self.fp32_rows:
            low = stored.float()
            top[1], top[2] = (exact - low).norm(dim=1).max(), low.norm(dim=1).max()

    def rank_order(self) -> tuple[Any, Any]:
        """(rank, order): ``rank[row]`` is the row's place in the ids' stable order (the tie key of
        every path), ``order`` its inverse. Identity while ids arrive in order (no sort at all)."""
        import torch

        if self._ranks is None:
            ids = self.rows("ids")
            order = (torch.arange(self.n, device=ids.device) if self.ids_sorted
                     else torch.sort(ids, stable=True).indices)
            rank = order if self.ids_sorted else torch.empty_like(order)
            if not self.ids_sorted:
                rank[order] = torch.arange(self.n, device=ids.device)
            self._ranks = rank, order
        return self._ranks

    def ids_of(self, positions: np.ndarray) -> np.ndarray:
        """Ids of row positions (numpy, CPU galleries), -1 kept."""
        if self.ids_are_rows:  # ids 0..n-1 in insertion order (the common case): positions are the ids
            return positions
        ids = self.host("ids")[positions]
        ids[positions < 0] = -1
        return ids

    def results(self, dist: Any, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) as numpy from a torch path's (distances, row positions), ids looked up on
        the device (-1 kept)."""
        import torch

        ids = torch.where(positions >= 0, self.rows("ids")[positions.clamp(min=0)], positions)
        return dist.cpu().numpy(), ids.cpu().numpy()
