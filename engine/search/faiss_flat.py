"""The "faiss" path (``FaissFlat``): faiss's exact ``knn_L2sqr`` on the Gallery's own rows.

Why call faiss: below ~10^5 rows and at one query, faiss-cpu's hand-tuned scan beats anything torch
can do per call (its whole search is one C++ call; a torch search is a dozen ops). ``exact`` runs
``faiss.knn_L2sqr`` straight on the Gallery's own FP32 buffer and FP32 squared norms (zero copy, no
second copy of the rows as an IndexFlatL2 would keep). faiss ranks ties by row position (its heaps
compare (distance, position)); the Gallery ranks them by id, so where ids are not in insertion
order the result is re-sorted by (distance, rank) from TIE_MARGIN extra candidates, and queries
whose k-th distance ties the last candidate are handed back for the torch search (engine.search.gemm).

faiss is optional: ``load()`` raises BackendUnavailableError naming the package when it is missing.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from ..backends.optional import is_installed, optional_import
from .checks import Labels
from .gemm import Gemm

if TYPE_CHECKING:
    from .rows import RowStore

TIE_MARGIN = 4  # extra candidates per query when ids are not in insertion order
_NONE = np.zeros(0, np.int64)


@functools.cache
def load() -> Any:
    """The faiss module, or BackendUnavailableError saying how to install it (the import is cached:
    a one-query search at 10^3 rows takes ~40 us, so each microsecond of wrapper shows)."""
    return optional_import("faiss", needed_for="the Gallery's faiss search (method='auto' falls back to torch)")


@functools.cache
def available() -> bool:
    return is_installed("faiss")


def exact(queries: np.ndarray, rows: np.ndarray, sqnorm: np.ndarray, k: int,
          rank: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances (Q, k), row positions (Q, k), -1 / inf padded; queries to redo elsewhere).

    ``rank`` None means the ids are in insertion order (faiss's own tie order is then the Gallery's).
    """
    faiss = load()
    n_q, n = len(queries), len(rows)
    want = min(k if rank is None else k + TIE_MARGIN, n)
    dist = np.empty((n_q, want), np.float32)
    pos = np.empty((n_q, want), np.int64)
    if want:
        ptr = faiss.swig_ptr
        faiss.knn_L2sqr(ptr(queries), ptr(rows), rows.shape[1], n_q, n, want, ptr(dist), ptr(pos), ptr(sqnorm))
    negatives = bool(n_q and want and _smallest(dist) < 0)  # rounding negatives (they sort first)
    if rank is None and want == k and not negatives:
        return dist, pos, _NONE  # faiss's order is the Gallery's
    if rank is not None or negatives:  # clamping rounding negatives may tie them: re-sort
        np.maximum(dist, 0, out=dist)
        order = np.lexsort((pos if rank is None else rank[pos], dist), axis=1)
        dist, pos = np.take_along_axis(dist, order, 1), np.take_along_axis(pos, order, 1)
    redo = _NONE
    if rank is not None and k < want < n:  # rows tied with the k-th may lie beyond the candidates
        redo = np.flatnonzero(dist[:, k - 1] == dist[:, -1])
    if want > k:
        dist, pos = dist[:, :k], pos[:, :k]
    elif want < k:
        dist = np.pad(dist, ((0, 0), (0, k - dist.shape[1])), constant_values=np.inf)
        pos = np.pad(pos, ((0, 0), (0, k - pos.shape[1])), constant_values=-1)
    return dist, pos, redo


def _smallest(dist: np.ndarray) -> float:
    """The smallest of the queries' first (smallest) distances; one query reads one float (a numpy
    reduction costs several microseconds, a tenth of a one-query search at 10^3 rows)."""
    return dist.item(0) if len(dist) == 1 else float(dist[:, 0].min())


class FaissFlat:
    """The "faiss" path: faiss's exact scan of the FP32 rows of a CPU gallery, without exclusion (the
    plan sends excluding batches to the torch path). Ties faiss cannot rank by id go to ``ties``."""

    name = "faiss"

    def __init__(self, store: RowStore, ties: Gemm) -> None:
        self._store, self._ties = store, ties

    def search(self, queries: np.ndarray, k: int, exclusion: Labels | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k) float32 ascending, ids (Q, k) int64), padded with inf / -1."""
        store = self._store
        rank = None if store.ids_sorted else store.rank_order()[0].numpy()
        d, p, redo = exact(queries, store.host("emb"), store.host("sqnorm"), k, rank)
        ids = store.ids_of(p)
        if redo.size:  # ties at the k-th beyond faiss's candidates: the torch pass ranks them by id
            d[redo], ids[redo] = self._ties.search(queries[redo], k, None)
        return d, ids
