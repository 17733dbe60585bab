"""faiss as a search engine for the Gallery: exact ``knn_L2sqr`` on its rows, and approximate indexes.

Why call faiss: below ~10^5 rows and at one query, faiss-cpu's hand-tuned scan beats anything torch
can do per call (its whole search is one C++ call; a torch search is a dozen ops). ``exact`` runs
``faiss.knn_L2sqr`` straight on the Gallery's own FP32 buffer and FP32 squared norms (zero copy, no
second copy of the rows as an IndexFlatL2 would keep). faiss ranks ties by row position (its heaps
compare (distance, position)); the Gallery ranks them by id, so where ids are not in insertion
order the result is re-sorted by (distance, rank) from TIE_MARGIN extra candidates, and queries
whose k-th distance ties the last candidate are handed back for the torch search.

``Approximate`` wraps faiss IVF-Flat, HNSW-Flat or IVF-SQ8 (8-bit codes, exact re-rank) for galleries
of 10^7+ rows (not exact: see benchmarks/README for recall@10 per size). faiss is optional: ``load()`` raises
BackendUnavailableError naming the package when it is missing.
"""
from __future__ import annotations

import functools
import logging
import math
import time
from typing import Any

import numpy as np

from .backends.optional import is_installed, optional_import
from .errors import InputError

log = logging.getLogger("engine.gallery")
TIE_MARGIN = 4  # extra candidates per query when ids are not in insertion order
_NONE = np.zeros(0, np.int64)
IVF_TRAIN_PER_LIST = 40  # training rows per inverted list (faiss warns below 39)
HNSW_M = 32  # graph degree
HNSW_EF_CONSTRUCTION = 100  # candidates kept while linking a row: faiss's default 40 gave recall@10 0.68 at 10^6
# clustered rows (efSearch 64), 100 gave 0.975 for 2.1x the build time (benchmarks/README.md)
REFINE = 4  # ivf-sq8: candidates per wanted neighbour, re-ranked exactly
ADD_ROWS = 1 << 16  # rows handed to faiss at once when building an index (FP32 temporaries)


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


class Approximate:
    """An approximate faiss index over a snapshot of the gallery rows (rebuilt after adds).

    ``kind`` "ivf": IndexIVFFlat with sqrt(n) lists, trained on IVF_TRAIN_PER_LIST rows per list,
    ``nprobe`` lists searched (default nlist / 16); "hnsw": IndexHNSWFlat with HNSW_M links, built with
    efConstruction HNSW_EF_CONSTRUCTION, ``efSearch`` = ``nprobe`` (default 64). Both keep their own
    FP32 copy of the rows. "ivf-sq8": the
    same lists over 8-bit scalar-quantised residuals (1 byte a value: 5 GB at 10^7 x 512, where an FP32
    copy is 20 GB), shortlisting REFINE x k rows that are re-ranked exactly against ``rows`` (the
    Gallery's own rows, no copy), so its distances are exact and only the shortlist is approximate.
    ``rows`` may be FP16 or FP32; they reach faiss as FP32 ADD_ROWS at a time (bounded memory).
    """

    KINDS = ("ivf", "hnsw", "ivf-sq8")

    def __init__(self, kind: str, rows: np.ndarray, nprobe: int | None, seed: int = 0) -> None:
        if kind not in self.KINDS:
            raise InputError(f"approximate index must be one of {self.KINDS}, got {kind!r}")
        faiss = load()
        n, dim = rows.shape
        log.info("building the %s index of %d rows (the first search after an add)", kind, n)
        started = time.perf_counter()
        self.kind, self._rows = kind, rows if kind == "ivf-sq8" else None
        if kind == "hnsw":
            self.index = faiss.IndexHNSWFlat(dim, HNSW_M)
            self.index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            nlist = max(1, min(int(math.sqrt(n)), n // IVF_TRAIN_PER_LIST or 1))
            self.index = (faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist) if kind == "ivf" else
                          faiss.IndexIVFScalarQuantizer(faiss.IndexFlatL2(dim), dim, nlist,
                                                        faiss.ScalarQuantizer.QT_8bit))
            sample = np.random.default_rng(seed).choice(n, min(n, nlist * IVF_TRAIN_PER_LIST), replace=False)
            self.index.train(np.asarray(rows[np.sort(sample)], dtype=np.float32))
        self.set_nprobe(nprobe)
        for start in range(0, n, ADD_ROWS):
            self.index.add(np.ascontiguousarray(rows[start:start + ADD_ROWS], dtype=np.float32))
        log.info("%s index built in %.1f s", kind, time.perf_counter() - started)

    def set_nprobe(self, nprobe: int | None) -> None:
        """Lists probed (IVF kinds; default nlist / 16) or efSearch (HNSW; default 64) per query."""
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = nprobe or 64
        else:
            self.index.nprobe = nprobe or max(1, self.index.nlist // 16)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, row positions), padded with inf / -1 like the exact search."""
        dist, pos = self.index.search(queries, k if self._rows is None else k * REFINE)
        if self._rows is not None:
            dist, pos = rerank(queries, self._rows, pos, k)
        dist[pos < 0] = np.inf
        return np.maximum(dist, 0, out=dist), pos


def rerank(queries: np.ndarray, rows: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of each query's candidate row positions ``pos`` (-1 = none) by squared L2 to
    ``rows`` computed in FP32, ties by position: (distances, positions)."""
    diff = rows[np.maximum(pos, 0)].astype(np.float32) - queries[:, None, :]
    dist = np.einsum("qcd,qcd->qc", diff, diff)
    dist[pos < 0] = np.inf
    order = np.lexsort((pos, dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(pos, order, 1)


def check_nprobe(value: Any) -> None:
    """Raise InputError unless ``value`` is a positive int (IVF lists probed, or HNSW efSearch)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise InputError(f"nprobe must be a positive int (lists probed, or HNSW efSearch), got {value!r}")
