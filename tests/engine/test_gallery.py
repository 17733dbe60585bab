"""engine.gallery.Gallery: brute-force and faiss agreement, padding, ties, validation, persistence."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import ArtifactError, InputError
from engine.gallery import Gallery


def _data(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _brute(q: np.ndarray, g: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = ((q[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


def _assert_same_neighbours(q: np.ndarray, g: np.ndarray, ids: np.ndarray, d: np.ndarray, i: np.ndarray,
                            ref_d: np.ndarray, tol: float) -> None:
    """Tie-aware: our ids are distinct and their exact distances equal the reference's k best distances,
    so ids may differ from the reference only among entries whose distances tie (within tol)."""
    row_of_id = {int(v): r for r, v in enumerate(ids)}
    rows = np.vectorize(row_of_id.__getitem__)(i)
    exact = ((q[:, None, :].astype(np.float64) - g[rows].astype(np.float64)) ** 2).sum(-1)
    assert all(len(set(r)) == len(r) for r in i.tolist())
    np.testing.assert_allclose(d, exact, atol=tol, rtol=0)
    np.testing.assert_allclose(exact, ref_d, atol=tol, rtol=0)


@pytest.mark.parametrize("chunk", [7, 64, 10_000])
def test_matches_brute_force_with_unsorted_ids(chunk: int) -> None:
    g, q = _data(300, 16), _data(20, 16, seed=1)
    ids = np.random.default_rng(2).permutation(1000)[:300] * 3
    gal = Gallery(16, chunk=chunk, query_batch=6)
    gal.add(g[:100], ids[:100])
    gal.add(g[100:], ids[100:])
    d, i = gal.search(q, 10)
    ref_d, ref_i = _brute(q, g, ids, 10)
    assert d.dtype == np.float32 and i.dtype == np.int64 and d.shape == (20, 10)
    assert np.all(np.diff(d, axis=1) >= 0)
    _assert_same_neighbours(q, g, ids, d, i, ref_d, tol=1e-4)
    assert (i == ref_i).mean() > 0.99


def test_matches_faiss_index_flat_l2() -> None:
    faiss = pytest.importorskip("faiss")
    g, q = _data(2000, 64), _data(50, 64, seed=5)
    g[10] = g[11]  # an exact tie
    index = faiss.IndexFlatL2(64)
    index.add(g)
    ref_d, _ = index.search(q, 10)
    gal = Gallery(64, chunk=256)
    gal.add(g, np.arange(2000))
    d, i = gal.search(q, 10)
    _assert_same_neighbours(q, g, np.arange(2000), d, i, ref_d, tol=1e-4)


def test_ties_are_broken_by_smaller_id_across_chunks() -> None:
    v = np.ones((1, 4), np.float32)
    gal = Gallery(4, chunk=2)
    gal.add(np.repeat(v, 5, axis=0), np.array([9, 4, 7, 1, 3]))
    d, i = gal.search(np.zeros((1, 4), np.float32), 3)
    assert i.tolist() == [[1, 3, 4]]
    assert d.tolist() == [[4.0, 4.0, 4.0]]


def test_k_larger_than_gallery_and_empty_gallery_pad() -> None:
    gal = Gallery(3)
    d, i = gal.search(np.zeros((2, 3), np.float32), 4)
    assert np.isinf(d).all() and (i == -1).all() and d.shape == (2, 4)
    gal.add(np.eye(3, dtype=np.float32)[:2], np.array([5, 6]))
    d, i = gal.search(np.zeros((1, 3), np.float32), 4)
    assert i.tolist() == [[5, 6, -1, -1]]
    assert d[0, :2].tolist() == [1.0, 1.0] and np.isinf(d[0, 2:]).all()


def test_exclusion_skips_same_id_same_camera_only() -> None:
    gal = Gallery(2)
    gal.add(np.array([[0, 0], [0, 1], [0, 2]], np.float32), ids=np.array([7, 7, 8]), cams=np.array([0, 1, 0]))
    q = np.zeros((1, 2), np.float32)
    _, i = gal.search(q, 3, query_ids=[7], query_cams=[0])
    assert i.tolist() == [[7, 8, -1]]  # row (id 7, cam 0) dropped; (id 7, cam 1) kept
    with pytest.raises(InputError, match="pass both"):
        gal.search(q, 3, query_ids=[7])


def test_float16_storage_is_exact_for_the_rounded_vectors() -> None:
    g, q = _data(500, 32), _data(10, 32, seed=9)
    gal = Gallery(32, storage="float16", chunk=100)
    gal.add(g, np.arange(500))
    d, i = gal.search(q, 5)
    rounded = g.astype(np.float16).astype(np.float32)
    ref_d, _ = _brute(q, rounded, np.arange(500), 5)
    _assert_same_neighbours(q, rounded, np.arange(500), d, i, ref_d, tol=1e-3)


@pytest.mark.parametrize(
    ("queries", "message"),
    [
        (np.zeros((2, 5), np.float32), r"shape \(N, 4\), got \(2, 5\)"),
        (np.zeros((2, 4), np.int32), "float16/float32/float64, got int32"),
        (np.array([[0, 0, 0, np.nan]]), "NaN or inf"),
        (np.array([["a"] * 4]), "got <U1"),
    ],
)
def test_bad_queries_raise(queries: np.ndarray, message: str) -> None:
    gal = Gallery(4)
    with pytest.raises(InputError, match=message):
        gal.search(queries, 1)
    with pytest.raises(InputError, match=message):
        gal.add(queries, np.arange(len(queries)))


def test_bad_ids_and_options_raise() -> None:
    gal = Gallery(4)
    with pytest.raises(InputError, match=r"ids must be an integer array of shape \(2,\)"):
        gal.add(np.zeros((2, 4), np.float32), np.arange(3))
    with pytest.raises(InputError, match="k must be a positive int"):
        gal.search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(InputError, match="storage must be one of"):
        Gallery(4, storage="int8")


def test_save_load_round_trip(tmp_path) -> None:
    g = _data(50, 8)
    gal = Gallery(8, storage="float16")
    gal.add(g, np.arange(50) * 2, cams=np.arange(50) % 3)
    gal.save(tmp_path / "g.npz")
    back = Gallery.load(tmp_path / "g.npz")
    assert (len(back), back.dim, back.storage) == (50, 8, "float16")
    q = _data(4, 8, seed=3)
    for a, b in zip(gal.search(q, 5, query_ids=[0, 2, 4, 6], query_cams=[0, 1, 2, 0]),
                    back.search(q, 5, query_ids=[0, 2, 4, 6], query_cams=[0, 1, 2, 0]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_crash_mid_save_keeps_old_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "g.npz"
    gal = Gallery(4)
    gal.add(np.ones((3, 4), np.float32), np.arange(3))
    gal.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez", boom)
    gal.add(np.zeros((1, 4), np.float32), np.array([9]))
    with pytest.raises(RuntimeError, match="disk full"):
        gal.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.npz"]


def test_load_rejects_corrupt_and_other_version(tmp_path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="corrupt"):
        Gallery.load(bad)
    with pytest.raises(ArtifactError, match="no gallery file"):
        Gallery.load(tmp_path / "missing.npz")
    other = tmp_path / "v9.npz"
    np.savez(other, header=np.array('{"format": "jlml-gallery", "version": 9}'),
             embeddings=np.zeros((0, 2)), ids=np.zeros(0, np.int64), cams=np.zeros(0, np.int64))
    with pytest.raises(ArtifactError, match="version 9"):
        Gallery.load(other)
