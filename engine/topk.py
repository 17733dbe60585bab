"""Exact brute-force k-NN over a device-resident gallery with a running top-k (the Gallery's kernel).

The gallery is scanned in row chunks; each chunk gives one (queries x chunk) distance block from
engine.distance, its k best are taken with ``torch.topk`` and merged into a running (queries x k)
result. Memory is therefore bounded by ``query_batch x chunk`` whatever the gallery size, and only k
results per query ever leave the device. The same code runs on CPU and CUDA tensors.

Determinism: the caller keeps gallery rows sorted by id, so "ties broken by id" is "ties broken by row
position". ``torch.topk`` does not promise which of several tied values it returns, so candidates are
re-ordered by (distance, position) with stable sorts, and a row whose k-th value ties with a value
left out of its top-k (rare outside duplicated vectors) is resolved with a full stable sort.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .distance import bf16_queries, finish_distances, ranking_distances, squared_norms

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Exclusion:
    """Drop gallery rows whose label and camera both equal the query's (same shot in re-id)."""

    query_ids: torch.Tensor
    query_cams: torch.Tensor
    gallery_ids: torch.Tensor
    gallery_cams: torch.Tensor


def _masked(block: torch.Tensor, exclusion: Exclusion | None, start: int, stop: int) -> torch.Tensor:
    """Set the block's excluded (same id and camera as the query) entries to ``inf``, in place."""
    if exclusion is not None:
        same = (exclusion.gallery_ids[start:stop][None, :] == exclusion.query_ids[:, None]) & (
            exclusion.gallery_cams[start:stop][None, :] == exclusion.query_cams[:, None])
        block.masked_fill_(same, float("inf"))
    return block


def _stable_by_value(values: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by (value, position): stable sort by position first, then stable by value."""
    import torch

    pos_sorted, perm = torch.sort(positions, dim=1, stable=True)
    values = values.gather(1, perm)
    values, perm = torch.sort(values, dim=1, stable=True)
    return values, pos_sorted.gather(1, perm)


def _block_topk(block: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k smallest of each block row as (values, absolute positions), ordered by (value, position)."""
    import torch

    kk = min(k, block.shape[1])
    values, cols = torch.topk(block, kk, dim=1, largest=False, sorted=True)
    kth = values[:, -1:]
    ambiguous = (block <= kth).sum(dim=1) > kk  # a tie straddles the cut: topk may pick any of them
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        full_vals, full_cols = torch.sort(block[rows], dim=1, stable=True)
        values[rows], cols[rows] = full_vals[:, :kk], full_cols[:, :kk]
    return _stable_by_value(values, cols + offset)


def search_batch(queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm: torch.Tensor, k: int,
                 chunk: int, exclusion: Exclusion | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared-L2 k-NN of one query batch: (distances (Q, k) ascending, row positions (Q, k), -1 pad).

    Padding rows (gallery smaller than k, or everything excluded) have distance ``inf``.
    """
    import torch

    n_q = queries.shape[0]
    best_d = torch.full((n_q, k), float("inf"), dtype=queries.dtype, device=queries.device)
    best_p = torch.full((n_q, k), -1, dtype=torch.int64, device=queries.device)
    for start in range(0, gallery.shape[0], chunk):
        stop = min(start + chunk, gallery.shape[0])
        block = _masked(ranking_distances(queries, gallery[start:stop], gallery_sqnorm[start:stop]),
                        exclusion, start, stop)
        cand_d, cand_p = _block_topk(block, k, start)
        merged_d, order = torch.sort(torch.cat([best_d, cand_d], dim=1), dim=1, stable=True)
        best_d = merged_d[:, :k]
        best_p = torch.cat([best_p, cand_p], dim=1).gather(1, order[:, :k])
    best_p = best_p.masked_fill(torch.isinf(best_d), -1)
    final = finish_distances(best_d, squared_norms(queries))
    return _stable_by_value(final, best_p)


def smallest(queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm: torch.Tensor, c: int,
             chunk: int, exclusion: Exclusion | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Running c smallest ranking scores per query (any order among ties): FP32 (Q, c) ascending and
    row positions, padded with ``inf`` / -1 when fewer than c rows qualify.

    The shortlist of a two-pass search (engine.twopass) needs only "no row outside has a smaller
    score than the c-th", which any tie choice meets, so no tie resolution is spent here. The score
    block keeps the gallery's GEMM dtype (bf16 for coarse rows): topk runs on it without a cast pass.
    """
    import torch

    n_q = queries.shape[0]
    if gallery.dtype == torch.bfloat16:
        queries = bf16_queries(queries, gallery.shape[1])
    best_s = torch.full((n_q, c), float("inf"), dtype=torch.float32, device=queries.device)
    best_p = torch.full((n_q, c), -1, dtype=torch.int64, device=queries.device)
    for start in range(0, gallery.shape[0], chunk):
        stop = min(start + chunk, gallery.shape[0])
        block = _masked(ranking_distances(queries, gallery[start:stop], gallery_sqnorm[start:stop]),
                        exclusion, start, stop)
        values, cols = torch.topk(block, min(c, stop - start), dim=1, largest=False, sorted=False)
        best_s, order = torch.topk(torch.cat([best_s, values.float()], dim=1), c, dim=1, largest=False)
        best_p = torch.cat([best_p, cols + start], dim=1).gather(1, order)
    return best_s, best_p.masked_fill(torch.isinf(best_s), -1)
