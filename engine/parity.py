"""Parity of embeddings against a reference, measured the one way the project measures it.

Three figures (after Polygraphy's Comparator): the minimum per-row cosine (what gates an export), the
maximum absolute difference, and top-k neighbour agreement (what re-id ranking actually sees).
Agreement is tie-aware: a neighbour whose reference score ties the reference's k-th best within
``tie_tol`` is as good as any other, so swaps between equal scores are not counted as errors. Export,
the conformance tests and the end-to-end benchmark all use these functions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError, ParityError

DEFAULT_K = 5
DEFAULT_TIE_TOL = 1e-6


@dataclass(frozen=True)
class ParityResult:
    """Parity figures of one artefact (``graph``); ``passed`` says whether ``min_cosine`` met ``threshold``."""

    graph: str
    min_cosine: float
    max_abs_diff: float
    topk_agreement: float
    k: int
    threshold: float
    samples: int

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold

    def line(self) -> str:
        return (f"{self.graph}: min cosine {self.min_cosine:.7f} (>= {self.threshold}), max |diff| "
                f"{self.max_abs_diff:.2e}, top-{self.k} agreement {self.topk_agreement:.4f} "
                f"on {self.samples} images")


def cosine_rows(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity (float64) of two (N, D) arrays."""
    ref, got = reference.astype(np.float64), test.astype(np.float64)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
    return np.einsum("nd,nd->n", ref, got) / np.maximum(norms, np.finfo(np.float64).tiny)


def agreement(ref_scores: np.ndarray, chosen: np.ndarray, *, tie_tol: float = DEFAULT_TIE_TOL) -> float:
    """Fraction of ``chosen`` (n, k) candidate indices that the reference also ranks in its top k.

    ``ref_scores`` (n, candidates): the reference's similarity of each row to each candidate (higher is
    nearer; ``-inf`` excludes one). A chosen candidate counts when its reference score is at least the
    reference's k-th best minus ``tie_tol``; an index of -1 (padding) never counts.
    """
    k = chosen.shape[1]
    if k < 1 or len(chosen) != len(ref_scores) or k > ref_scores.shape[1]:
        raise InputError(f"need (n, 1..{ref_scores.shape[1]}) chosen indices for {len(ref_scores)} rows, "
                         f"got {chosen.shape}")
    kth_best = -np.partition(-ref_scores, k - 1, axis=1)[:, k - 1]
    picked = np.take_along_axis(ref_scores, np.maximum(chosen, 0), axis=1)
    agree = (picked >= kth_best[:, None] - tie_tol) & (chosen >= 0)
    return float(agree.mean())


def topk_agreement(reference: np.ndarray, test: np.ndarray, k: int = DEFAULT_K, *,
                   tie_tol: float = DEFAULT_TIE_TOL) -> float:
    """Tie-aware agreement of each row's k nearest other rows (cosine) in ``test`` with ``reference``."""
    n = len(reference)
    if n < 2 or reference.shape != test.shape:
        raise InputError(f"need two (N>=2, D) arrays of one shape, got {reference.shape} and {test.shape}")
    k = min(k, n - 1)
    test_sims = _self_excluded_sims(test)
    chosen = np.argsort(-test_sims, axis=1, kind="stable")[:, :k]
    return agreement(_self_excluded_sims(reference), chosen, tie_tol=tie_tol)


def ranking_agreement(ref_queries: np.ndarray, ref_gallery: np.ndarray, ids: np.ndarray, *,
                      tie_tol: float = DEFAULT_TIE_TOL) -> float:
    """Tie-aware agreement of ranked gallery ``ids`` (n, k; row index in the gallery, -1 padding) with
    the reference embeddings' own squared-L2 ranking of that gallery."""
    q, g = ref_queries.astype(np.float64), ref_gallery.astype(np.float64)
    scores = 2 * q @ g.T - (q * q).sum(1)[:, None] - (g * g).sum(1)[None, :]  # -(squared distance)
    return agreement(scores, np.asarray(ids, dtype=np.int64), tie_tol=tie_tol)


def _self_excluded_sims(emb: np.ndarray) -> np.ndarray:
    unit = emb.astype(np.float64)
    unit = unit / np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), np.finfo(np.float64).tiny)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    return sims


def compare(graph: str, reference: np.ndarray, test: np.ndarray, *, threshold: float,
            k: int = DEFAULT_K) -> ParityResult:
    """Parity figures of ``test`` embeddings against ``reference`` embeddings of the same images."""
    if reference.shape != test.shape:
        raise ParityError(f"{graph} returned shape {test.shape}, the reference {reference.shape}")
    return ParityResult(
        graph=graph, min_cosine=float(cosine_rows(reference, test).min()),
        max_abs_diff=float(np.abs(reference.astype(np.float64) - test).max()),
        topk_agreement=topk_agreement(reference, test, k), k=min(k, len(reference) - 1),
        threshold=threshold, samples=len(reference),
    )
