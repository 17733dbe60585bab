"""Re-identification evaluation: CMC rank-k and mAP under the Market-1501 or single-shot protocol.

Used by training (validation), export (parity of Rank-1/mAP between backends) and the demo, so the
rules live in exactly one place. ``evaluate`` never holds more than one (chunk x gallery) distance
block: queries are processed chunk by chunk and only per-query statistics (first true-match rank and
average precision) are kept, so a 20,000 x 20,000 evaluation fits in a few hundred MB.

Rules (see ``cmc_map``): gallery pid -1 is junk and always ignored; pid 0 distractors are ordinary
negatives; under "market" a gallery entry with the query's pid *and* camera is ignored too (it is the
same shot, not a re-identification); "single_shot" has no camera rule. Queries without any valid true
match are skipped and not counted in ``num_query``. Distance ties are broken by gallery index (stable
sort), so the numbers are deterministic.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import InputError
from .rerank import RerankParams, k_reciprocal_distances
from .search.distance import squared_l2_blocks

PROTOCOLS = ("market", "single_shot")
DEFAULT_RANKS = (1, 5, 10, 20)
JUNK_PID = -1


def evaluate(query_emb: Any, query_pids: Any, query_cams: Any, gallery_emb: Any, gallery_pids: Any,
             gallery_cams: Any, *, protocol: str = "market", ranks: Sequence[int] = DEFAULT_RANKS,
             chunk: int = 1024, rerank: RerankParams | None = None) -> dict[str, float]:
    """CMC ``rank{k}`` for each k in ``ranks``, ``mAP`` and ``num_query`` from raw embeddings.

    Squared-L2 distances come from engine.search.distance (the same expansion the Gallery searches with),
    computed ``chunk`` queries at a time. With ``rerank`` the ranking uses k-reciprocal re-ranked
    distances instead (engine.rerank; memory grows as (queries + gallery)^2, see its limit).
    """
    query_emb, gallery_emb = _check_embeddings(query_emb, gallery_emb)
    qp, qc = _check_labels(query_pids, query_cams, len(query_emb), "query")
    gp, gc = _check_labels(gallery_pids, gallery_cams, len(gallery_emb), "gallery")
    _check_options(protocol, ranks)
    if not isinstance(chunk, int) or chunk <= 0:
        raise InputError(f"chunk must be a positive int, got {chunk!r}; 1024 is a good default")
    blocks = ([k_reciprocal_distances(query_emb, gallery_emb, rerank)] if rerank is not None
              else squared_l2_blocks(query_emb, gallery_emb, chunk))
    parts = [
        _query_stats(_check_distmat(block), qp[s:s + len(block)], qc[s:s + len(block)], gp, gc, protocol)
        for s, block in _offsets(blocks)
    ]
    first = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    ap = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    return _summarise(first, ap, ranks)


def cmc_map(distmat: Any, query_pids: Any, query_cams: Any, gallery_pids: Any, gallery_cams: Any, *,
            protocol: str = "market", ranks: Sequence[int] = DEFAULT_RANKS) -> dict[str, float]:
    """CMC and mAP from a ready (Q, G) distance matrix (smaller = more similar).

    CMC rank-k is the fraction of valid queries whose first true match is among the first k *valid*
    gallery entries; mAP is the mean over valid queries of average precision (mean of precision at
    each true match's position in the valid ranking).
    """
    distmat = _check_distmat(distmat)
    qp, qc = _check_labels(query_pids, query_cams, distmat.shape[0], "query")
    gp, gc = _check_labels(gallery_pids, gallery_cams, distmat.shape[1], "gallery")
    _check_options(protocol, ranks)
    first, ap = _query_stats(distmat, qp, qc, gp, gc, protocol)
    return _summarise(first, ap, ranks)


def format_table(rows: dict[str, dict[str, float]]) -> str:
    """Markdown table with one row per run (name -> metrics); columns are the union of metric keys."""
    if not rows:
        raise InputError("format_table got no rows; pass {run_name: evaluate(...)} for at least one run")
    columns: list[str] = []
    for metrics in rows.values():
        columns += [key for key in metrics if key not in columns]
    lines = ["| run | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, metrics in rows.items():
        cells = [_format_cell(key, metrics.get(key)) for key in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _format_cell(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if key == "num_query":
        return str(int(value))
    return f"{100.0 * value:.2f}"


def _offsets(blocks: Any) -> Any:
    start = 0
    for block in blocks:
        yield start, block
        start += len(block)


def _query_stats(distmat: np.ndarray, qp: np.ndarray, qc: np.ndarray, gp: np.ndarray, gc: np.ndarray,
                 protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Per query: 1-based rank of the first true match among valid entries (0 = no valid match), AP."""
    order = np.argsort(distmat, axis=1, kind="stable")
    pids, cams = gp[order], gc[order]
    same_pid = pids == qp[:, None]
    valid = pids != JUNK_PID
    if protocol == "market":
        valid &= ~(same_pid & (cams == qc[:, None]))
    match = same_pid & valid
    valid_rank = np.cumsum(valid, axis=1)          # rank among valid entries, at valid positions
    hits = np.cumsum(match, axis=1)
    num_match = hits[:, -1] if hits.shape[1] else np.zeros(len(hits), np.int64)
    has_match = num_match > 0
    first = np.where(has_match, valid_rank[np.arange(len(match)), match.argmax(axis=1)], 0)
    precision = np.where(match, hits / np.maximum(valid_rank, 1), 0.0)
    ap = precision.sum(axis=1) / np.maximum(num_match, 1)
    return first[has_match].astype(np.int64), ap[has_match]


def _summarise(first: np.ndarray, ap: np.ndarray, ranks: Sequence[int]) -> dict[str, float]:
    if len(first) == 0:
        raise InputError(
            "no query has a valid true match in the gallery (got 0 valid queries); check that query "
            "and gallery pids overlap and, under protocol='market', that they come from other cameras"
        )
    result: dict[str, float] = {f"rank{k}": float(np.mean(first <= k)) for k in ranks}
    result["mAP"] = float(np.mean(ap))
    result["num_query"] = int(len(first))
    return result


def _check_distmat(distmat: Any) -> np.ndarray:
    """A numeric (Q, G) matrix with at least one gallery column and no NaN (NaN sorts last in argsort,
    so an all-NaN matrix would silently score its gallery order), else InputError."""
    distmat = np.asarray(distmat)
    if distmat.ndim != 2 or not np.issubdtype(distmat.dtype, np.number):
        raise InputError(
            f"distmat must be a numeric (num_query, num_gallery) array, got {distmat.dtype} "
            f"{distmat.shape}; pass e.g. squared L2 distances"
        )
    if distmat.shape[1] == 0:
        raise InputError(f"distmat has no gallery column (shape {distmat.shape}); evaluate against a gallery")
    nans = int(np.isnan(distmat).sum()) if distmat.dtype.kind in "fc" else 0
    if nans:
        raise InputError(
            f"distmat holds {nans} NaN of {distmat.size} distances and NaN ranks nothing; distances of "
            "embeddings too large for float32 overflow to NaN: pass the model's unit-length embeddings"
        )
    return distmat


def _check_embeddings(query: Any, gallery: Any) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, emb in (("query", query), ("gallery", gallery)):
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.dtype.kind != "f" or not np.isfinite(emb).all():
            raise InputError(
                f"{name} embeddings must be a finite float (N, D) array, got {emb.dtype} {emb.shape}; "
                "pass the model's float32 embeddings"
            )
        if len(emb) == 0:
            raise InputError(f"{name} embeddings are empty (shape {emb.shape}); pass at least one {name} image")
        arrays.append(emb)
    if arrays[0].shape[1] != arrays[1].shape[1]:
        raise InputError(
            f"query embeddings have dim {arrays[0].shape[1]} but gallery embeddings {arrays[1].shape[1]}; "
            "embed both with the same model"
        )
    return arrays[0], arrays[1]


def _check_labels(pids: Any, cams: Any, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    out = []
    for what, labels in (("pids", pids), ("cams", cams)):
        labels = np.asarray(labels)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise InputError(
                f"{name} {what} must be an integer array of shape ({n},), got {labels.dtype} "
                f"{labels.shape}; give one label per {name} embedding"
            )
        out.append(labels.astype(np.int64))
    return out[0], out[1]


def _check_options(protocol: str, ranks: Sequence[int]) -> None:
    if protocol not in PROTOCOLS:
        raise InputError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not ranks or any(not isinstance(k, (int, np.integer)) or k < 1 for k in ranks):
        raise InputError(f"ranks must be positive ints, got {ranks!r}; e.g. (1, 5, 10, 20)")
