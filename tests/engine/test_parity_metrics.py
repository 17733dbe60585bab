"""Parity figures (engine.parity): cosine, max diff and tie-aware top-k agreement, one implementation."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError, ParityError
from engine.parity import compare, ranking_agreement, topk_agreement


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_identical_embeddings_agree_fully():
    emb = _unit(np.random.default_rng(0).normal(size=(10, 8)))
    result = compare("fp32", emb, emb.copy(), threshold=0.99999, k=3)
    assert result.min_cosine == pytest.approx(1.0) and result.max_abs_diff == 0.0
    assert result.topk_agreement == 1.0 and result.passed


def test_swapping_tied_neighbours_is_not_a_disagreement():
    # Rows 1 and 2 are equally close to row 0; a test that ranks them the other way still agrees.
    ref = _unit(np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.8, 0.0, 0.6], [-1.0, 0.0, 0.0]]))
    test = ref.copy()
    test[2] = _unit(np.array([[0.81, 0.0, 0.59]]))[0]  # row 2 now slightly closer to row 0 than row 1
    assert topk_agreement(ref, test, k=1, tie_tol=1e-6) == 1.0


def test_a_wrong_neighbour_lowers_agreement():
    # Three pairs of points 10 degrees apart; the point at 90 degrees jumps to 5 degrees in the test.
    angles = np.deg2rad([0, 10, 90, 100, 180, 190])
    ref = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    test = ref.copy()
    test[2] = [np.cos(np.deg2rad(5)), np.sin(np.deg2rad(5))]
    # Rows 0, 1 (new neighbour), 2 (moved) and 3 (lost its neighbour) disagree; the 180/190 pair agrees.
    assert topk_agreement(ref, test, k=1) == pytest.approx(2 / 6)


def test_topk_needs_two_rows():
    with pytest.raises(InputError):
        topk_agreement(np.ones((1, 4)), np.ones((1, 4)), k=1)


def test_ranking_agreement_is_tie_aware_on_gallery_ids():
    gallery = _unit(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
    query = _unit(np.array([[1.0, 1.0]]))  # gallery rows 0 and 1 tie for nearest
    assert ranking_agreement(query, gallery, np.array([[1]])) == 1.0  # either tied row agrees
    assert ranking_agreement(query, gallery, np.array([[2]])) == 0.0
    assert ranking_agreement(query, gallery, np.array([[0, 1, -1]])) == pytest.approx(2 / 3)  # padding


def test_shapes_that_differ_are_a_parity_error():
    with pytest.raises(ParityError, match="returned shape"):
        compare("plan", np.ones((3, 4)), np.ones((3, 5)), threshold=0.9)
