"""The approximate paths ("ivf", "hnsw", "ivf-sq8"; class ``Approximate``): faiss indexes for
galleries of 10^7+ rows, not exact (see benchmarks/README for recall@10 per size).

IVF-Flat and HNSW-Flat keep faiss's own FP32 copy of the rows plus their lists or graph; IVF-SQ8 keeps
one byte a value plus the lists and re-ranks its shortlist exactly against the Gallery's own rows. The
index is built at the first search after an add (``log`` says how long it took).
"""
from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from .checks import Labels, check_nprobe
from .faiss_flat import load
from .plan import APPROXIMATE

if TYPE_CHECKING:
    from .rows import RowStore

log = logging.getLogger("engine.gallery")
IVF_TRAIN_PER_LIST = 40  # training rows per inverted list (faiss warns below 39)
HNSW_M = 32  # graph degree
HNSW_EF_CONSTRUCTION = 100  # candidates kept while linking a row: faiss's default 40 gave recall@10 0.68 at 10^6
# clustered rows (efSearch 64), 100 gave 0.975 for 2.1x the build time (benchmarks/README.md)
REFINE = 4  # ivf-sq8: candidates per wanted neighbour, re-ranked exactly
ADD_ROWS = 1 << 16  # rows handed to faiss at once when building an index (FP32 temporaries)


class Approximate:
    """An approximate path over a RowStore: ``kind`` one of KINDS, ``nprobe`` lists probed (IVF) or
    efSearch (HNSW) per query (None: the default). The index is rebuilt at the first search after an
    add; a new ``nprobe`` retunes a built index without a rebuild. It cannot skip same-id-same-camera
    rows: a search with an exclusion is refused."""

    KINDS = APPROXIMATE

    def __init__(self, store: RowStore, kind: str, nprobe: int | None) -> None:
        if nprobe is not None:
            check_nprobe(nprobe)
        self.name, self._store, self._nprobe = kind, store, nprobe
        self.index: Index | None = None
        self._built = -1  # the store's version the index holds

    @property
    def nprobe(self) -> int | None:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int | None) -> None:
        if value is not None:
            check_nprobe(value)
        self._nprobe = value
        if self.index is not None:
            self.index.set_nprobe(value)

    def search(self, queries: np.ndarray, k: int, exclusion: Labels | None) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k) float32 ascending, ids (Q, k) int64), padded with inf / -1."""
        if exclusion is not None:
            raise InputError(f"method={self.name!r} cannot skip same-id-same-camera rows; search without "
                             "query_ids/query_cams or use an exact method")
        if self.index is None or self._built != self._store.version:
            self.index, self._built = Index(self.name, self._store.host("emb"), self._nprobe), self._store.version
        d, p = self.index.search(queries, k)
        return d, self._store.ids_of(p)


class Index:
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

    def __init__(self, kind: str, rows: np.ndarray, nprobe: int | None, seed: int = 0) -> None:
        if kind not in APPROXIMATE:
            raise InputError(f"approximate index must be one of {APPROXIMATE}, got {kind!r}")
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
