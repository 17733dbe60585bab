"""The Gallery's per-call bookkeeping stays off the one-query search (tens of microseconds at 10^3 rows):
the path is chosen once per batch size until the next add, one query never touches the thread count,
and the lean checks keep every answer and error of the full ones."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from engine.gallery import Gallery
from engine.search import faiss_flat, plan

torch = pytest.importorskip("torch")


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_path_is_chosen_once_per_batch_size_until_the_next_add(monkeypatch) -> None:
    calls: list[plan.Shape] = []
    choose = plan.choose
    monkeypatch.setattr(plan, "choose", lambda shape: calls.append(shape) or choose(shape))
    gal = Gallery(8)
    gal.add(_unit(50, 8), np.arange(50))
    calls.clear()  # the constructor asked for its own plan
    q = _unit(3, 8, seed=1)
    for _ in range(3):
        gal.search(q[:1], 5)
        gal.search(q, 5)
    assert [(s.rows, s.batch) for s in calls] == [(50, 1), (50, 3)]
    gal.add(_unit(10, 8, seed=2), np.arange(50, 60))
    gal.search(q[:1], 5)
    assert [(s.rows, s.batch) for s in calls][2:] == [(60, 1)]  # the new size is seen: the plan was reset


def test_one_query_neither_reads_nor_sets_the_thread_count(monkeypatch) -> None:
    gal = Gallery(8)
    data = _unit(200, 8)
    gal.add(data, np.arange(200))
    touched: list[str] = []
    get, set_ = torch.get_num_threads, torch.set_num_threads
    monkeypatch.setattr(torch, "get_num_threads", lambda: touched.append("get") or get())
    monkeypatch.setattr(torch, "set_num_threads", lambda n: touched.append("set") or set_(n))
    d, i = gal.search(data[7], 3)
    assert touched == [] and i[0, 0] == 7 and d[0, 0] == 0
    gal.search(data[:4], 3)  # a batch still decides its threads (2^20 multiply-adds a thread)
    assert "get" in touched


class _FakeFaiss:
    """knn_L2sqr writing a fixed, faiss-ordered answer with rounding negatives (faiss 1.15 clamps its
    own, older versions do not; the Gallery must not depend on which)."""

    swig_ptr = staticmethod(lambda a: a)

    @staticmethod
    def knn_L2sqr(q, rows, dim, n_q, n, k, dist, pos, sqnorm) -> None:  # noqa: N802 (faiss's name)
        dist[:] = np.array([-2e-7, -1e-7, 0.5, 0.7], np.float32)[:k]
        pos[:] = np.array([3, 1, 5, 0])[:k]


@pytest.mark.parametrize("n_q", [1, 3])  # one query reads one float, more take the reduction
def test_faiss_exact_clamps_rounding_negatives_then_ranks_ties_by_position(monkeypatch, n_q: int) -> None:
    monkeypatch.setattr(faiss_flat, "load", lambda: _FakeFaiss)
    rows = _unit(6, 4)
    d, p, redo = faiss_flat.exact(_unit(n_q, 4, seed=1), rows, (rows * rows).sum(1), 4, None)
    np.testing.assert_array_equal(d, np.tile(np.array([0, 0, 0.5, 0.7], np.float32), (n_q, 1)))
    np.testing.assert_array_equal(p, np.tile([1, 3, 5, 0], (n_q, 1)))
    assert redo.size == 0


@pytest.mark.parametrize(("queries", "message"), [
    (np.zeros((1, 8), ">f4"), "float16/float32/float64, got >f4"),  # byte-swapped: refused as before
    (np.array([[np.inf] + [0.0] * 7], np.float32), "NaN or inf"),
    ([[0.0] * 7], r"shape \(N, 8\), got \(1, 7\)"),  # a list takes the general path
])
def test_lean_checks_keep_the_errors(queries: object, message: str) -> None:
    gal = Gallery(8)
    gal.add(_unit(20, 8), np.arange(20))
    with pytest.raises(InputError, match=message):
        gal.search(queries, 2)


def test_lean_checks_keep_the_answers_for_lists_views_and_float64() -> None:
    data = _unit(100, 8)
    gal = Gallery(8)
    gal.add(data, np.arange(100))
    ref = gal.search(data[5:6].copy(), 4)
    for q in (data[5].tolist(), data[5:6].astype(np.float64), data[5:6, ::-1][:, ::-1], data[5]):
        d, i = gal.search(q, 4)
        np.testing.assert_array_equal(i, ref[1])
        np.testing.assert_allclose(d, ref[0], atol=1e-6)
