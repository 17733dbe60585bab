"""Exact brute-force k-NN over a device-resident gallery with a running top-k (the Gallery's kernel).

The gallery is scanned in row chunks; each chunk gives one (queries x chunk) distance block from
engine.distance, its best candidates are taken with ``torch.topk`` and merged into a running
(queries x k) result. Memory is therefore bounded by ``query_batch x chunk`` whatever the gallery
size, and only k results per query ever leave the device. The same code runs on CPU and CUDA tensors.
A gallery that fits one chunk (the common case below ~100k rows on CUDA) costs one GEMM, one topk,
one small check and four small sorts: no merge, no pass over the block beyond the topk.

Determinism: rows are stored in insertion order, and every row carries a ``rank`` (its place in the
rows stably sorted by id), so "ties broken by id, equal ids in insertion order" is "ties broken by
rank". ``torch.topk`` does not promise which of several tied values it returns, so each block keeps
TIE_MARGIN extra candidates: when the k-th value is strictly below the last kept one, every row tied
with the k-th is among them and sorting them by (value, rank) is exact; otherwise (rare outside
duplicated vectors) that query's block row is sorted in full.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .distance import bf16_queries, finish_distances, ranking_distances, squared_norms

if TYPE_CHECKING:
    import torch

# Extra candidates per block row, so a tie group at the k-th value (e.g. a duplicated image) resolves
# without a full sort. Small on purpose: CPU torch.topk switches from a partial to a full sort once
# 64 * (k + margin) exceeds the row (1,000 rows: k=10 takes 3.3 ms, 14 takes 4.0 ms, 16 takes 8.8 ms).
TIE_MARGIN = 4


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


def _block_candidates(block: torch.Tensor, k: int, offset: int,
                      rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to k + TIE_MARGIN (value, absolute position) per block row, holding its k best by (value, rank)."""
    import torch

    width = block.shape[1]
    m = min(k + TIE_MARGIN, width)
    values, cols = torch.topk(block, m, dim=1, largest=False, sorted=True)
    if m < width:  # then k < m: rows tied with the k-th value may lie beyond the m kept
        kth = values[:, k - 1]
        ambiguous = (kth == values[:, m - 1]) & torch.isfinite(kth)
        if bool(ambiguous.any()):  # the one host sync per block
            rows = ambiguous.nonzero().squeeze(1)
            full = block[rows]
            cols_all = torch.arange(offset, offset + width, device=block.device).expand_as(full)
            full_vals, full_pos = by_value_then_rank(full, cols_all, rank)
            values[rows], cols[rows] = full_vals[:, :m], full_pos[:, :m] - offset
    return values, cols + offset


def search_batch(queries: torch.Tensor, gallery: torch.Tensor, gallery_sqnorm: torch.Tensor,
                 rank: torch.Tensor, k: int, chunk: int,
                 exclusion: Exclusion | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared-L2 k-NN of one query batch: (distances (Q, k) ascending, row positions (Q, k), -1 pad).

    Ties are ordered by ``rank`` (one int64 per gallery row). Padding (gallery smaller than k, or
    everything excluded) has distance ``inf``.
    """
    import torch

    best: tuple[torch.Tensor, torch.Tensor] | None = None
    for start in range(0, gallery.shape[0], chunk):
        stop = min(start + chunk, gallery.shape[0])
        block = _masked(ranking_distances(queries, gallery[start:stop], gallery_sqnorm[start:stop]),
                        exclusion, start, stop)
        cand_d, cand_p = _block_candidates(block, k, start, rank)
        if best is not None:  # a gallery of one chunk skips the merge
            cand_d, cand_p = torch.cat([best[0], cand_d], dim=1), torch.cat([best[1], cand_p], dim=1)
        best_d, best_p = by_value_then_rank(cand_d, cand_p, rank)
        best = best_d[:, :k], best_p[:, :k]
    if best is None:  # empty gallery: nothing to rank
        return _padding(queries, k)
    best_d, best_p = best
    if best_d.shape[1] < k:  # gallery smaller than k
        pad_d, pad_p = _padding(queries, k - best_d.shape[1])
        best_d, best_p = torch.cat([best_d, pad_d], dim=1), torch.cat([best_p, pad_p], dim=1)
    best_p = best_p.masked_fill(torch.isinf(best_d), -1)
    final = finish_distances(best_d, squared_norms(queries))
    return by_value_then_rank(final, best_p, rank)  # adding ||q||^2 may round distinct values into ties


def _padding(queries: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(``inf`` distances, -1 positions) of shape (Q, width): results where no row qualifies."""
    import torch

    n_q = queries.shape[0]
    return (torch.full((n_q, width), float("inf"), dtype=queries.dtype, device=queries.device),
            torch.full((n_q, width), -1, dtype=torch.int64, device=queries.device))


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
