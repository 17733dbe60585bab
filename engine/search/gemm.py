"""The "torch" path (``Gemm``): chunked brute-force k-NN with a running top-k, the one scan every
torch search path shares.

The gallery is scanned in row chunks (``score_blocks``, the one chunk iterator); each chunk gives a
(queries x chunk) block of ranking scores from engine.search.distance. Memory is bounded by one block
whatever the gallery size, and only k results per query ever leave the device. The same code runs
on CPU and CUDA tensors.

Determinism without a host sync (``search_batch``): rows carry a ``rank`` (their place in the rows
stably sorted by id), and "ties broken by id, equal ids in insertion order" is "ties broken by rank".
Each FP32 score and its row's rank are packed into one int64 key (the score's order-preserving int32
bits above, the rank below), so a plain ``torch.topk`` over keys is already the exact
(score, rank) order: no tie margin, no "is the k-th tied?" check, no data-dependent branch. On CUDA
that removes the per-chunk sync and the ~100 small kernels of the old tie handling.

``smallest`` is the shortlist scan of the two-pass search (engine.search.twopass): it needs only "no row
outside has a smaller score than the c-th", which any tie choice meets, so it skips the keys.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..device import ieee_fp32
from . import plan
from .checks import Labels
from .distance import bf16_queries, finish_distances, ranking_distances, squared_norms

if TYPE_CHECKING:
    import torch

    from .rows import RowStore

RANK_BITS = 32  # rows per gallery < 2^32


@dataclass(frozen=True)
class Exclusion:
    """Drop gallery rows whose label and camera both equal the query's (same shot in re-id)."""

    query_ids: torch.Tensor
    query_cams: torch.Tensor
    gallery_ids: torch.Tensor
    gallery_cams: torch.Tensor


@dataclass(frozen=True)
class SearchParams:
    """What one batch's search needs besides the rows (after faiss's SearchParameters)."""

    k: int
    chunk: int
    rank: torch.Tensor  # int64 per row: its place in the stable order of the ids
    exclusion: Exclusion | None = None

    def subset(self, queries: torch.Tensor) -> SearchParams:
        """The same search for a subset of the batch's queries (index tensor)."""
        if self.exclusion is None:
            return self
        ex = self.exclusion
        return replace(self, exclusion=replace(ex, query_ids=ex.query_ids[queries],
                                               query_cams=ex.query_cams[queries]))


def score_blocks(queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm: torch.Tensor, chunk: int,
                 exclusion: Exclusion | None) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, ranking-score block) per gallery chunk, excluded entries set to ``inf``."""
    import torch

    if gallery.dtype == torch.bfloat16:  # convert the queries once, not per chunk
        queries = bf16_queries(queries, gallery.shape[1])
    for start in range(0, gallery.shape[0], chunk):
        stop = min(start + chunk, gallery.shape[0])
        block = ranking_distances(queries, gallery[start:stop], gallery_sqnorm[start:stop])
        if exclusion is not None:
            same = (exclusion.gallery_ids[start:stop][None, :] == exclusion.query_ids[:, None]) & (
                exclusion.gallery_cams[start:stop][None, :] == exclusion.query_cams[:, None])
            block.masked_fill_(same, float("inf"))
        yield start, block


def by_value_then_rank(values: torch.Tensor, positions: torch.Tensor,
                       rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by (value, rank[position]): stable sort by rank first, then stable by value.

    Padding positions (-1) carry ``inf`` values, so whichever rank they borrow they sort last.
    """
    import torch

    keys = rank[positions.clamp(min=0)]
    _, perm = torch.sort(keys, dim=1, stable=True)
    values, positions = values.gather(1, perm), positions.gather(1, perm)
    values, perm = torch.sort(values, dim=1, stable=True)
    return values, positions.gather(1, perm)


def _keys(block: torch.Tensor, block_rank: torch.Tensor) -> torch.Tensor:
    """int64 keys ordered as (FP32 value, rank): the value's bits made monotone, the rank below."""
    import torch

    bits = block.float().contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: reverse their magnitude order
    return (bits.to(torch.int64) << RANK_BITS) | block_rank[None, :]


def _unkey(keys: torch.Tensor) -> torch.Tensor:
    """The FP32 values of ``_keys``."""
    import torch

    bits = (keys >> RANK_BITS).to(torch.int32)
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).view(torch.float32)


def search_batch(queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm: torch.Tensor,
                 params: SearchParams, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared-L2 k-NN of one query batch: (distances (Q, k) ascending, row positions (Q, k), -1 pad).

    ``order`` is the inverse of ``params.rank`` (row position of each rank). Ties are ordered by
    rank; padding (gallery smaller than k, or everything excluded) has distance ``inf``.
    """
    import torch

    best: torch.Tensor | None = None
    for start, block in score_blocks(queries, gallery, gallery_sqnorm, params.chunk, params.exclusion):
        keys = _keys(block, params.rank[start:start + block.shape[1]])
        if best is not None:  # a gallery of one chunk skips the merge
            keys = torch.cat([best, keys], dim=1)
        best = torch.topk(keys, min(params.k, keys.shape[1]), dim=1, largest=False, sorted=True).values
    if best is None:  # empty gallery: nothing to rank
        return _padding(queries, params.k)
    values, positions = _unkey(best), order[best & ((1 << RANK_BITS) - 1)]
    if values.shape[1] < params.k:  # gallery smaller than k
        pad_d, pad_p = _padding(queries, params.k - values.shape[1])
        values, positions = torch.cat([values, pad_d], dim=1), torch.cat([positions, pad_p], dim=1)
    positions = positions.masked_fill(torch.isinf(values), -1)
    final = finish_distances(values, squared_norms(queries))
    return by_value_then_rank(final, positions, params.rank)  # adding ||q||^2 may round values into ties


def _padding(queries: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``inf`` distances, -1 positions) of shape (Q, width): results where no row qualifies."""
    import torch

    n_q = queries.shape[0]
    return (torch.full((n_q, width), float("inf"), dtype=torch.float32, device=queries.device),
            torch.full((n_q, width), -1, dtype=torch.int64, device=queries.device))


def smallest(queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm: torch.Tensor, c: int,
             chunk: int, exclusion: Exclusion | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Running c smallest ranking scores per query (any order among ties): FP32 (Q, c) ascending and
    row positions, padded with ``inf`` / -1 when fewer than c rows qualify.

    The score block keeps the gallery's GEMM dtype (bf16 for coarse rows): topk runs on it without a
    cast pass.
    """
    import torch

    best_s, best_p = _padding(queries, c)
    for start, block in score_blocks(queries, gallery, gallery_sqnorm, chunk, exclusion):
        values, cols = torch.topk(block, min(c, block.shape[1]), dim=1, largest=False, sorted=False)
        best_s, pick = torch.topk(torch.cat([best_s, values.float()], dim=1), c, dim=1, largest=False)
        best_p = torch.cat([best_p, cols + start], dim=1).gather(1, pick)
    return best_s, best_p.masked_fill(torch.isinf(best_s), -1)


def torch_batch(store: RowStore, queries: np.ndarray, k: int, labels: Labels | None,
                chunk: int) -> tuple[torch.Tensor, SearchParams]:
    """A query batch on the gallery's device and the SearchParams of a torch path over ``store``."""
    import torch

    dev = store.device
    exclusion = None if labels is None else Exclusion(
        torch.from_numpy(labels[0]).to(dev), torch.from_numpy(labels[1]).to(dev), store.rows("ids"),
        store.rows("cams"))
    return torch.from_numpy(queries).to(dev), SearchParams(k, chunk, store.rank_order()[0], exclusion)


class Gemm:
    """The "torch" path: one chunked FP32 GEMM pass with a running top-k on the gallery's device (the
    path of CUDA galleries with FP32 rows, and the CPU fallback without faiss). ``chunk``: gallery
    rows per block (None: engine.search.plan's BLOCK_ELEMENTS)."""

    name = "torch"

    def __init__(self, store: RowStore, chunk: int | None = None) -> None:
        self._store, self._chunk = store, chunk

    def search(self, queries: np.ndarray, k: int, exclusion: Labels | None) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k) float32 ascending, ids (Q, k) int64), padded with inf / -1."""
        import torch

        store = self._store
        chunk = self._chunk or plan.chunk_rows(self.name, store.device.type, len(queries))
        qt, params = torch_batch(store, queries, k, exclusion, chunk)
        with ieee_fp32(torch):  # no TF32 (CUDA) or bf16 (oneDNN) GEMMs however the caller set them
            d, p = search_batch(qt, store.rows("emb"), store.rows("sqnorm"), params, store.rank_order()[1])
        return store.results(d, p)
