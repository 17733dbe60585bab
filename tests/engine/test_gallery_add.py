"""Gallery.add in insertion order: incremental adds equal one add, ties by id, add memory ~ new rows."""
from __future__ import annotations

import numpy as np
import pytest
from _memory import peak_growth_mb, require_peak_reset

from engine.gallery import Gallery

pytest.importorskip("torch")
MODES = ("torch", "fp32", "bf16", "faiss")


def _tied_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small-integer vectors: every distance is exact in FP32 and most of them tie with others."""
    rng = np.random.default_rng(seed)
    g = rng.integers(-1, 2, (n, dim)).astype(np.float32)
    ids = rng.integers(0, n // 2, n)  # duplicated ids as well as duplicated vectors
    return g, ids, rng.integers(0, 3, n)


def _reference(g: np.ndarray, ids: np.ndarray, cams: np.ndarray, q: np.ndarray, k: int,
               excl: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """Brute force ranked by (distance, id), excluded rows dropped, padded with inf / -1."""
    d = ((q[:, None, :].astype(np.float64) - g[None]) ** 2).sum(-1)
    if excl is not None:
        d[(ids[None] == excl[0][:, None]) & (cams[None] == excl[1][:, None])] = np.inf
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    dist, out = np.take_along_axis(d, order, 1), ids[order]
    pad = k - dist.shape[1]
    dist, out = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf), np.pad(out, ((0, 0), (0, pad)),
                                                                              constant_values=-1)
    return dist.astype(np.float32), np.where(np.isinf(dist), -1, out)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("chunk", [None, 7, 64])
@pytest.mark.parametrize("k", [1, 5, 40, 400])
@pytest.mark.parametrize("exclude", [False, True])
def test_ties_at_the_cut_match_brute_force_by_id(mode: str, chunk: int | None, k: int, exclude: bool) -> None:
    """One block (chunk=None, the fast path) and many blocks give the exact (distance, id) ranking."""
    g, ids, cams = _tied_data(300, 6, seed=0)
    q = np.random.default_rng(1).integers(-1, 2, (9, 6)).astype(np.float32)
    excl = (ids[:9], cams[:9]) if exclude else None
    gal = Gallery(6, chunk=chunk, query_batch=4, method=mode)
    gal.add(g, ids, cams)
    d, i = gal.search(q, k, query_ids=None if excl is None else excl[0],
                      query_cams=None if excl is None else excl[1])
    ref_d, ref_i = _reference(g, ids, cams, q, k, excl)
    np.testing.assert_array_equal(d, ref_d)
    np.testing.assert_array_equal(i, ref_i)


@pytest.mark.parametrize("mode", MODES)
def test_many_small_adds_equal_one_big_add(mode: str) -> None:
    rng = np.random.default_rng(2)
    g = rng.standard_normal((700, 16)).astype(np.float32)
    g[100:140] = g[5]  # exact ties across add boundaries
    ids, cams = rng.permutation(2000)[:700] % 350, rng.integers(0, 4, 700)
    q = np.concatenate([g[:3], rng.standard_normal((12, 16)).astype(np.float32)])
    one, many = Gallery(16, method=mode, chunk=50), Gallery(16, method=mode, chunk=50)
    one.add(g, ids, cams)
    for start, stop in zip([0, 1, 2, 60, 61, 300], [1, 2, 60, 61, 300, 700], strict=True):
        many.add(g[start:stop], ids[start:stop], cams[start:stop])
        many.search(q[:1], 3)  # a search between adds must not leave stale derived state behind
    assert len(many) == len(one) == 700
    for k in (1, 10, 60):
        for kw in ({}, {"query_ids": ids[:15], "query_cams": cams[:15]}):
            for a, b in zip(one.search(q, k, **kw), many.search(q, k, **kw), strict=True):
                np.testing.assert_array_equal(a, b)


def _add_peak_mb(gal: Gallery, rows: np.ndarray, ids: np.ndarray) -> float:
    return peak_growth_mb(lambda: gal.add(rows, ids))[0]


def test_add_peak_memory_is_about_the_new_rows() -> None:
    """The old sort-on-add held old + new + concatenated + reordered rows: > 2x the whole gallery."""
    require_peak_reset()
    rng = np.random.default_rng(3)
    first = rng.standard_normal((200_000, 64), dtype=np.float32)  # 49 MB
    gal = Gallery(64)  # the two-pass rows are derived at the first search, not during the adds
    first_mb = first.nbytes / 2**20
    assert _add_peak_mb(gal, first, np.arange(200_000)) < 1.5 * first_mb + 8
    gal.add(first[:1], np.array([5]))  # overflows: capacity grows to GROWTH x 200k rows
    more = first[:50_000][::-1].copy()  # 12 MB, fits the grown capacity
    grown = _add_peak_mb(gal, more, np.arange(200_000, 250_000))
    assert grown < 2 * more.nbytes / 2**20 + 8, f"add of 12 MB grew the peak RSS by {grown:.0f} MB"
    d, i = gal.search(first[:2], 2)
    assert i.tolist() == [[0, 5], [1, 249_998]]  # ties by id across adds: 0 < 5, 1 < 249,998
    assert (d[:, 0] == d[:, 1]).all() and (d < 1e-6).all()
