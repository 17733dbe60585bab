"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li; CVPR 2017), as torchreid and fast-reid offer it.

A query's new distance to a gallery entry mixes the original distance with the Jaccard distance of
their k-reciprocal neighbour sets, computed over queries and gallery together:
``d* = (1 - lambda) * d_J + lambda * d``. This is the reference algorithm (the authors' Python code
used by torchreid: distances squared and each row divided by its maximum, k1-reciprocal sets expanded
by the candidates' k1/2-reciprocal sets that share over 2/3 of them, Gaussian-weighted vectors V,
local query expansion over k2 neighbours), with the memory laid out so that it stays bounded:

- distances are recomputed in row blocks from the embeddings (engine.search.distance), never held as a full
  (N, N) matrix, and only the first ``k1 + 1`` neighbours of each item are kept;
- V is one dense (N, N) float32 matrix (the only N^2 term, ``4 N^2`` bytes: 2.6 MB for VIPeR's 632
  items, 1.6 GB for 20,000); ``max_items`` refuses larger inputs before allocating anything;
- the Jaccard term of one query touches only the columns where its V row is non-zero.

numpy (and torch through engine.search.distance) only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .search.distance import squared_l2_blocks

DEFAULT_MAX_ITEMS = 20_000  # queries + gallery; V then takes 1.6 GB


@dataclass(frozen=True)
class RerankParams:
    """The paper's settings: k1 (reciprocal neighbours), k2 (query expansion), lambda (weight of the
    original distance). ``block`` rows of distances are computed at a time."""

    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    block: int = 1024
    max_items: int = DEFAULT_MAX_ITEMS

    def __post_init__(self) -> None:
        if self.k1 < 1 or self.k2 < 1 or not 0.0 <= self.lambda_value <= 1.0 or self.block < 1:
            raise InputError(f"re-ranking needs k1 >= 1, k2 >= 1, 0 <= lambda <= 1, block >= 1; got "
                             f"k1={self.k1} k2={self.k2} lambda={self.lambda_value} block={self.block} "
                             "(the paper uses k1=20, k2=6, lambda=0.3)")


def _normalised_rows(items: np.ndarray, start: int, stop: int, block: int) -> np.ndarray:
    """Rows ``start:stop`` of the reference's distance: squared L2, squared again, over the row max."""
    rows = np.concatenate(list(squared_l2_blocks(items[start:stop], items, block)))
    rows = np.square(rows, dtype=np.float32)
    return rows / np.maximum(rows.max(axis=1, keepdims=True), np.finfo(np.float32).tiny)


def _neighbours(items: np.ndarray, k: int, block: int) -> np.ndarray:
    """The ``k`` nearest items of each item (itself first when distinct), (N, k) int64, stable ties."""
    n = len(items)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, block):
        rows = _normalised_rows(items, start, min(start + block, n), block)
        out[start:start + len(rows)] = np.argsort(rows, axis=1, kind="stable")[:, :k]
    return out


def _reciprocal(ranks: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = ranks[i, :k + 1]
    return forward[(ranks[forward, :k + 1] == i).any(axis=1)]


def _expanded_set(ranks: np.ndarray, i: int, k1: int) -> np.ndarray:
    """i's k1-reciprocal set plus every candidate's k1/2-reciprocal set sharing > 2/3 with it."""
    own = _reciprocal(ranks, i, k1)
    half = int(np.around(k1 / 2.0))
    parts = [own]
    for candidate in own:
        theirs = _reciprocal(ranks, int(candidate), half)
        if len(np.intersect1d(theirs, own)) > 2.0 / 3.0 * len(theirs):
            parts.append(theirs)
    return np.unique(np.concatenate(parts))


def _weights(items: np.ndarray, ranks: np.ndarray, params: RerankParams) -> np.ndarray:
    """V: row i holds exp(-d(i, j)) over i's expanded k-reciprocal set, normalised to sum 1."""
    n = len(items)
    v = np.zeros((n, n), np.float32)
    for start in range(0, n, params.block):
        rows = _normalised_rows(items, start, min(start + params.block, n), params.block)
        for offset, row in enumerate(rows):
            members = _expanded_set(ranks, start + offset, params.k1)
            weight = np.exp(-row[members])
            v[start + offset, members] = weight / weight.sum()
    if params.k2 != 1:
        v = np.stack([v[ranks[i, :params.k2]].mean(axis=0) for i in range(n)])
    return v


def k_reciprocal_distances(query: np.ndarray, gallery: np.ndarray,
                           params: RerankParams | None = None) -> np.ndarray:
    """(Q, G) re-ranked distances (smaller = more similar) from float query/gallery embeddings."""
    params = params or RerankParams()
    query, gallery = np.asarray(query, np.float32), np.asarray(gallery, np.float32)
    if query.ndim != 2 or gallery.ndim != 2 or query.shape[1] != gallery.shape[1]:
        raise InputError(f"re-ranking needs (Q, D) and (G, D) embeddings of one dim, got {query.shape} "
                         f"and {gallery.shape}")
    items = np.concatenate([query, gallery])
    n, nq = len(items), len(query)
    if n > params.max_items:
        raise InputError(f"re-ranking {n} items (queries + gallery) needs {4 * n * n / 2**30:.1f} GiB for "
                         f"V; the limit is max_items={params.max_items}. Re-rank a shortlist, or raise "
                         "max_items if the memory is there")
    ranks = _neighbours(items, min(n, max(params.k1 + 1, params.k2)), params.block)
    v = _weights(items, ranks, params)
    v_t = np.ascontiguousarray(v.T)
    out = np.empty((nq, n - nq), np.float32)
    for start in range(0, nq, params.block):
        original = _normalised_rows(items, start, min(start + params.block, nq), params.block)
        for offset, row in enumerate(original):
            i = start + offset
            cols = np.flatnonzero(v[i])
            shared = np.minimum(v[i, cols][:, None], v_t[cols]).sum(axis=0)
            jaccard = 1.0 - shared / (2.0 - shared)
            out[i] = (jaccard * (1 - params.lambda_value) + row * params.lambda_value)[nq:]
    return out
