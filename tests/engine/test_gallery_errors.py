"""Gallery inputs and files that used to fail badly: id range, negative strides, odd files, stale temps."""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import pytest

from engine.errors import ArtifactError, InputError, SpecMismatchError
from engine.gallery import Gallery

pytest.importorskip("torch")


def _gallery(n: int = 20, dim: int = 4) -> Gallery:
    gal = Gallery(dim)
    gal.add(np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32), np.arange(n))
    return gal


@pytest.mark.parametrize(("ids", "message"), [
    (np.array([0, -1], np.int64), "ids must be >= 0, got -1"),
    (np.array([0, 2**64 - 1], np.uint64), "ids must be below 2\\^63"),
    (np.array([0, 2**63], np.uint64), "ids must be below 2\\^63"),
])
def test_ids_outside_0_to_2_63_are_refused(ids: np.ndarray, message: str) -> None:
    gal = Gallery(2)
    with pytest.raises(InputError, match=message):
        gal.add(np.zeros((2, 2), np.float32), ids)
    assert len(gal) == 0


def test_largest_id_round_trips() -> None:
    gal = Gallery(2)
    gal.add(np.eye(2, dtype=np.float32), np.array([2**63 - 1, 0], np.uint64))
    assert gal.search(np.array([[1.0, 0.0]], np.float32), 2)[1].tolist() == [[2**63 - 1, 0]]


def test_negative_stride_arrays_are_accepted() -> None:
    g = np.random.default_rng(1).standard_normal((30, 8)).astype(np.float32)
    gal, ref = Gallery(8), Gallery(8)
    gal.add(g[::-1], np.arange(30)[::-1])
    ref.add(g[::-1].copy(), np.arange(30)[::-1].copy())
    q = g[::-2]
    for a, b in zip(gal.search(q, 5), ref.search(q.copy(), 5), strict=True):
        np.testing.assert_array_equal(a, b)


def test_load_of_truncated_npy_and_list_header_says_what_is_wrong(tmp_path) -> None:
    path = tmp_path / "g.npz"
    _gallery().save(path)
    truncated = tmp_path / "cut.npz"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ArtifactError, match="corrupt, truncated or not a gallery"):
        Gallery.load(truncated)
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(ArtifactError, match="single .npy array"):
        Gallery.load(tmp_path / "a.npy")
    listed = tmp_path / "list.npz"
    np.savez(listed, header=np.array("[1, 2]"), embeddings=np.zeros((0, 2)), ids=np.zeros(0, np.int64),
             cams=np.zeros(0, np.int64))
    with pytest.raises(ArtifactError, match="list header, expected a JSON object"):
        Gallery.load(listed)
    with pytest.raises(ArtifactError, match="is a folder"):
        Gallery.load(tmp_path)


def test_save_to_a_folder_is_refused(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="it is a folder; pass a file path"):
        _gallery().save(tmp_path)


def test_stale_temp_files_of_a_killed_save_are_removed_with_a_log_line(tmp_path, caplog) -> None:
    stale, fresh = tmp_path / ".g.npz.abc123.tmp", tmp_path / ".g.npz.def456.tmp"
    other = tmp_path / ".other.npz.zzz.tmp"
    for f in (stale, fresh, other):
        f.write_bytes(b"x" * 100)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    with caplog.at_level(logging.WARNING, logger="engine.gallery"):
        _gallery().save(tmp_path / "g.npz")
    assert not stale.exists() and fresh.exists() and other.exists()  # only this file's, only old ones
    assert "removed" in caplog.text and stale.name in caplog.text


@pytest.mark.parametrize("method", ["auto", "torch", "fp32", "bf16", "faiss"])
def test_no_queries_give_empty_results_on_every_path(method: str) -> None:
    gal = Gallery(8, method=method)
    gal.add(np.random.default_rng(2).random((50, 8), np.float32), np.arange(50))
    for kw in ({}, {"query_ids": np.zeros(0, int), "query_cams": np.zeros(0, int)}):
        d, i = gal.search(np.zeros((0, 8), np.float32), 5, **kw)
        assert d.shape == i.shape == (0, 5) and d.dtype == np.float32 and i.dtype == np.int64


def test_missing_faiss_names_the_package_and_auto_still_searches(monkeypatch) -> None:
    import sys

    from engine.errors import BackendUnavailableError
    from engine.search import faiss_flat

    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss raises ImportError
    faiss_flat.load.cache_clear()
    faiss_flat.available.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match="needs faiss .*pip install faiss-cpu"):
            Gallery(4, method="faiss")
        gal = _gallery()  # method="auto" falls back to the torch search
        assert gal.search(np.ones((1, 4), np.float32), 3)[1].shape == (1, 3)
    finally:
        faiss_flat.load.cache_clear()
        faiss_flat.available.cache_clear()


def test_paths_of_another_length_are_refused_and_leave_the_gallery_as_it_was(tmp_path) -> None:
    g = Gallery(2)
    g.add(np.eye(2, dtype=np.float32), [1, 2], paths=["a.png", "b.png"])
    with pytest.raises(InputError, match="1 paths for 2 rows"):
        g.add(np.eye(2, dtype=np.float32), [3, 4], paths=["c.png"])
    g.add(np.eye(2, dtype=np.float32), [3, 4])  # without images: "" for both
    g.save(tmp_path / "g.npz")
    assert len(g) == 4 and Gallery.load(tmp_path / "g.npz").paths == ["a.png", "b.png", "", ""]


def test_an_empty_gallery_is_not_saved(tmp_path) -> None:
    with pytest.raises(InputError, match="refusing to save an empty gallery to .*g.npz: no rows were added"):
        Gallery(4).save(tmp_path / "g.npz")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("method", ["auto", "faiss", "fp32", "torch", "ivf"])
@pytest.mark.parametrize("k", [10**6, 10**9])
def test_a_huge_k_is_padded_only_up_to_the_cap_not_to_k(method: str, k: int) -> None:
    """k = 10^9 on 60 rows once allocated 12 GB a query (the server was OOM-killed): the columns stop
    at max(rows, MAX_PADDED_K), the 60 real neighbours first, padding after them."""
    from engine.search.checks import MAX_PADDED_K

    rng = np.random.default_rng(5)
    gal = Gallery(8, method=method, query_batch=2)  # 3 queries: two batches, the result buffers too
    gal.add(rng.standard_normal((60, 8)).astype(np.float32), np.arange(60))
    d, i = gal.search(rng.standard_normal((3, 8)).astype(np.float32), k)
    assert d.shape == i.shape == (3, MAX_PADDED_K)
    assert (np.sort(i[:, :60], axis=1) == np.arange(60)).all() and (i[:, 60:] == -1).all()
    assert np.isinf(d[:, 60:]).all() and np.isfinite(d[:, :60]).all()
    assert gal.search(np.zeros(8, np.float32), MAX_PADDED_K - 1)[1].shape == (1, MAX_PADDED_K - 1)  # k kept


def test_a_huge_k_on_a_gallery_beyond_the_cap_gives_every_row_and_no_padding() -> None:
    from engine.search.checks import MAX_PADDED_K

    n = MAX_PADDED_K + 100
    gal = Gallery(4)
    gal.add(np.random.default_rng(6).standard_normal((n, 4)).astype(np.float32), np.arange(n))
    d, i = gal.search(np.zeros((2, 4), np.float32), 10**9)
    assert i.shape == (2, n) and (np.sort(i, axis=1) == np.arange(n)).all()
    assert Gallery(4).search(np.zeros((2, 4), np.float32), 10**9)[1].shape == (2, MAX_PADDED_K)  # empty


@pytest.mark.parametrize("scale", [1e20, 1e25, 1e30])
def test_queries_whose_distances_overflow_fp32_are_refused_not_answered_with_padding(scale: float) -> None:
    """Queries of magnitude 1e20-1e30 once came back as ids -1 / distance inf on a full gallery."""
    gal = _gallery()
    with pytest.raises(InputError, match=r"queries have squared L2 norms up to .* L2-normalise"):
        gal.search(np.full((2, 4), scale, np.float32), 3)
    with pytest.raises(InputError, match=r"embeddings have squared L2 norms up to .*\(row 1\)"):
        gal.add(np.array([[0, 0, 0, 1], [scale, 0, 0, 0]], np.float64), np.array([9, 10]))
    assert len(gal) == 20  # nothing added


@pytest.mark.parametrize(("method", "storage"), [("auto", "float32"), ("faiss", "float32"), ("bf16", "float32"),
                                                 ("fp32", "float32"), ("torch", "float32"), ("fp16", "float16")])
def test_large_queries_within_range_get_real_neighbours(method: str, storage: str) -> None:
    """Up to the documented range (squared norm FP32_MAX / 4) every exact path answers with rows."""
    from engine.search.checks import SQNORM_MAX

    rng = np.random.default_rng(7)
    gal = Gallery(4, method=method, storage=storage)
    gal.add(rng.standard_normal((50, 4)).astype(np.float32), np.arange(50))
    q = np.full((3, 4), 0.9 * (SQNORM_MAX / 4) ** 0.5, np.float32)
    d, i = gal.search(q, 5)
    assert (i >= 0).all() and np.isfinite(d).all() and (d > 0).all()


def test_float16_storage_refuses_values_beyond_its_range_instead_of_nan_distances() -> None:
    gal = Gallery(4, storage="float16")
    rows = np.eye(4, dtype=np.float32)
    rows[2, 1] = 7e4  # beyond FP16's 65504: it would be stored as inf
    with pytest.raises(InputError, match=r"storage='float16' holds values up to 65504, got 70000 .* row 2"):
        gal.add(rows, np.arange(4))
    assert len(gal) == 0
    rows[2, 1] = 6e4
    gal.add(rows, np.arange(4))
    d, i = gal.search(rows[:1], 4)
    assert np.isfinite(d).all() and (i >= 0).all()


def test_the_model_fingerprint_survives_save_and_load_and_a_bad_one_is_refused(tmp_path) -> None:
    from engine.errors import ArtifactError
    from engine.search import file
    from engine.spec import ModelSpec

    gal = _gallery()
    gal.model_fingerprint = fingerprint = file.model_fingerprint(ModelSpec(embedding_dim=4))
    gal.save(tmp_path / "g.npz")
    back = Gallery.load(tmp_path / "g.npz")
    assert back.model_fingerprint == fingerprint
    back.add(np.ones((1, 4), np.float32), np.array([99]))  # rows added later (the server) keep it
    back.save(tmp_path / "g.npz")
    assert Gallery.load(tmp_path / "g.npz").model_fingerprint == fingerprint
    with pytest.raises(InputError, match="model_fingerprint must be 64 hex digits"):
        gal.model_fingerprint = "abc"
    header, arrays = file.read(tmp_path / "g.npz")
    file.save(tmp_path / "bad.npz", header | {"model_fingerprint": 7}, arrays)
    with pytest.raises(ArtifactError, match="records model_fingerprint 7, expected 64 hex digits"):
        Gallery.load(tmp_path / "bad.npz")
    with pytest.raises(SpecMismatchError, match=f"g.npz was embedded by model {fingerprint[:16]}, x is model"):
        file.check_fingerprint(header["model_fingerprint"], ModelSpec(embedding_dim=4, onnx_sha256="1" * 64),
                               source="g.npz", artifact="x")
