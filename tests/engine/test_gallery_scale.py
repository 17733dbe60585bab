"""Gallery on CUDA (each test's body also runs on the CPU) and bounded memory on a 1M-row gallery."""
from __future__ import annotations

import numpy as np
import pytest
from _memory import peak_growth_mb, require_peak_reset

from engine.gallery import Gallery

torch = pytest.importorskip("torch")


# Every GPU test's body also runs on the CPU (the same calls on device="cpu"), so a test that went stale
# (an id the Gallery now refuses, say) fails here and cannot hide behind a skip on GPU-less machines.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _matches_the_cpu_fp32_search(device: str, storage: str, tol: float, cpu_method: str = "auto") -> None:
    rng = np.random.default_rng(0)
    g, q = rng.standard_normal((5000, 128), np.float32), rng.standard_normal((300, 128), np.float32)
    ids, cams = rng.permutation(5000), rng.integers(0, 4, 5000)
    method = "fp16" if storage == "float16" else "auto"  # CUDA's default for FP16 rows; forced on the CPU
    results = []
    for gal in (Gallery(128, storage="float32" if cpu_method == "fp32" else storage, method=cpu_method,
                        chunk=1000, query_batch=128),
                Gallery(128, device=device, storage=storage, method=method, chunk=1000, query_batch=128)):
        gal.add(g, ids, cams)
        results.append(gal.search(q, 10, query_ids=ids[:300], query_cams=cams[:300]))
    assert gal.device.startswith(device)
    (cd, ci), (gd, gi) = results
    np.testing.assert_allclose(gd, cd, atol=tol, rtol=0)
    assert (gi == ci).mean() > 0.99  # the rest are near-ties, covered by the distance check


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_matches_the_cpu(device: str) -> None:
    _matches_the_cpu_fp32_search(device, "float32", tol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_storage_is_exact_for_the_fp32_rows(device: str) -> None:
    """FP16 rows searched, FP32 rows kept on the host for the re-rank: the CPU FP32 exact answer."""
    _matches_the_cpu_fp32_search(device, "float16", tol=1e-6, cpu_method="fp32")


@pytest.mark.parametrize("device", DEVICES)
def test_ties_are_broken_by_id(device: str) -> None:
    """Small-integer vectors tie everywhere; the int64 (score, rank) keys order them by id on the GPU."""
    rng = np.random.default_rng(1)
    g = rng.integers(-1, 2, (3000, 8)).astype(np.float32)
    ids = rng.permutation(3000)
    q = rng.integers(-1, 2, (50, 8)).astype(np.float32)
    gal = Gallery(8, device=device)
    gal.add(g, ids)
    d, i = gal.search(q, 20)
    ref = ((q[:, None, :] - g[None]) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(ids, ref.shape), ref), axis=1)[:, :20]
    np.testing.assert_array_equal(i, ids[order])
    np.testing.assert_array_equal(d, np.take_along_axis(ref, order, 1).astype(np.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_gallery_stays_on_device_and_save_load(device: str, tmp_path) -> None:
    gal = Gallery(16, device=device)
    gal.add(np.ones((4, 16), np.float32), np.arange(4))
    assert gal._store.rows("emb").device.type == device  # resident there, not copied per search
    gal.save(tmp_path / "g.npz")
    back = Gallery.load(tmp_path / "g.npz", device=device)
    np.testing.assert_array_equal(back.search(np.zeros((1, 16), np.float32), 2)[1], [[0, 1]])


@pytest.mark.parametrize("device", DEVICES)
def test_fp16_gallery_stays_exact_after_save_and_load(device: str, tmp_path) -> None:
    """The file keeps the exact FP32 rows: distances after a reload are the FP32 ones, not the FP16 rows'."""
    rng = np.random.default_rng(2)
    g, q = rng.standard_normal((2000, 64), np.float32), rng.standard_normal((40, 64), np.float32)
    gal = Gallery(64, device=device, storage="float16", method="fp16")
    gal.add(g, np.arange(2000))
    gal.save(tmp_path / "g.npz")
    back = Gallery.load(tmp_path / "g.npz", device=device, method="fp16")
    assert back.storage == "float16" and back.search_path(40) == "fp16"
    d, i = back.search(q, 10)
    exact = ((q[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(exact, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(i, order)
    np.testing.assert_array_equal(d, np.take_along_axis(exact, order, 1).astype(np.float32))
    before = gal.search(q, 10)
    np.testing.assert_array_equal(d, before[0])
    np.testing.assert_array_equal(i, before[1])


def _device_peak(device: str):
    """A reader of the bytes allocated on the device since this call; None on the CPU, whose resident
    memory grows when pages are first written, not when a buffer is allocated."""
    if device == "cpu":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    return lambda: torch.cuda.max_memory_allocated() - before


@pytest.mark.parametrize("device", DEVICES)
def test_add_peak_memory_is_about_the_new_rows(device: str) -> None:
    """The old sort-on-add allocated the gallery three more times (cat, reorder, norms of all rows)."""
    rows = np.random.default_rng(0).standard_normal((100_000, 256), np.float32)  # 98 MB
    gal = Gallery(256, device=device)
    peak = _device_peak(device)
    gal.add(rows, np.arange(100_000))
    assert peak is None or peak() < 1.1 * rows.nbytes + (4 << 20)
    gal.add(rows[:1], np.array([200_000]))  # overflows: the capacity grows GROWTH-fold, once
    peak = _device_peak(device)
    gal.add(rows[:40_000], np.arange(100_000, 140_000))  # fits the grown capacity
    assert peak is None or peak() < 0.1 * rows[:40_000].nbytes + (4 << 20)
    ids = gal.search(rows[:1], 3)[1]
    assert sorted(ids[0].tolist()) == [0, 100_000, 200_000]  # the three copies of row 0, from three adds


@pytest.mark.slow
def test_million_rows_search_memory_is_bounded_by_chunk() -> None:
    require_peak_reset()
    n, dim, chunk, n_q = 1_000_000, 64, 16_384, 64
    gal = Gallery(dim, chunk=chunk, query_batch=n_q)
    rng = np.random.default_rng(0)
    gal.add(rng.standard_normal((n, dim), np.float32), np.arange(n))
    q = rng.standard_normal((n_q, dim), np.float32)
    gal.search(q[:1], 5)
    block_mb = n_q * chunk * 4 / 2**20
    # The first big search builds the bf16 copy (80 x 2 bytes a row here, kept): its peak must be that
    # copy plus blocks, not the full FP64 (512 MB) and FP32 temporaries of the old code.
    coarse_mb = n * 80 * 2 / 2**20 if gal.search_path(n_q) == "bf16" else 0.0
    first, _ = peak_growth_mb(lambda: gal.search(q, 5))
    assert first < coarse_mb + 8 * block_mb + 64, f"first search grew the peak RSS by {first:.0f} MB"
    grown, (d, i) = peak_growth_mb(lambda: gal.search(q, 5))
    # A (queries x gallery) block would be 64 x 1M x 4 B = 256 MB; one chunk block is 4 MB. The peak
    # may grow by a few chunk blocks, never by a gallery-sized buffer.
    assert grown < 8 * block_mb + 32, f"peak RSS grew {grown:.0f} MB during search"
    g = gal._store.rows("emb").numpy()  # rows in insertion order and ids == arange, so row r has id r
    exact = np.sort(((q[:2, None, :] - g[None]) ** 2).sum(-1), axis=1)[:, :5]
    np.testing.assert_allclose(d[:2], exact, rtol=1e-4)


def test_first_single_query_after_add_builds_no_gallery_sized_copy() -> None:
    """The old first search built a bf16 copy and an FP64 copy of every row (1.4 s and 3x the memory
    for one query at 100k x 1024); one query now reads the rows as they are."""
    require_peak_reset()
    rows = np.random.default_rng(0).standard_normal((100_000, 256), np.float32)  # 98 MB
    gal = Gallery(256)
    ids = np.random.default_rng(1).permutation(100_000)  # ids out of order: a rank is needed
    gal.add(rows, ids)
    grown, (d, i) = peak_growth_mb(lambda: gal.search(rows[5], 3))
    assert grown < 0.1 * rows.nbytes / 2**20 + 16, f"first search grew the peak RSS by {grown:.0f} MB"
    assert i[0, 0] == ids[5] and d[0, 0] < 1e-3 * float(rows[5] @ rows[5])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_add_reads_its_bounds_back_once_not_once_a_block(device: str, storage: str, monkeypatch) -> None:
    """Each read of a bound is a host sync on CUDA; an add of many norm blocks reads each bound once,
    and the bounds are the maxima over all rows, as computed in one block."""
    from engine.search import rows as rows_module

    rows = np.random.default_rng(3).standard_normal((6000, 32), np.float32)
    method = "fp16" if storage == "float16" else "auto"
    whole = Gallery(32, device=device, storage=storage, method=method)
    whole.add(rows, np.arange(6000))
    reads = []
    upper_max = rows_module.twopass.upper_max
    monkeypatch.setattr(rows_module.twopass, "upper_max", lambda x: reads.append(1) or upper_max(x))
    monkeypatch.setattr(rows_module, "NORM_ELEMENTS", 32 * 250)  # 24 blocks of 250 rows
    blocks = Gallery(32, device=device, storage=storage, method=method)
    blocks.add(rows, np.arange(6000))
    assert len(reads) == (3 if storage == "float16" else 1)
    assert (blocks._store.norm_bound, blocks._store.fp16_bound) == (whole._store.norm_bound, whole._store.fp16_bound)


def _syncs(call) -> int:
    """Host syncs of ``call`` on CUDA, as PyTorch's sync debug mode reports them."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("device", DEVICES)
def test_the_fp16_rerank_syncs_once_a_batch_not_once_a_block(device: str) -> None:
    """FP16 rows on the device, FP32 rows on the host: the re-rank gathers host rows for 32 queries at a
    time; the positions come over once a batch and the rows through pinned buffers, so 16 times more
    blocks cost no more syncs (on the CPU: the same path is exact)."""
    rng = np.random.default_rng(4)
    g, q = rng.standard_normal((4000, 64), np.float32), rng.standard_normal((512, 64), np.float32)
    gal = Gallery(64, device=device, storage="float16", method="fp16", query_batch=512)
    gal.add(g, np.arange(4000))
    exact = ((q[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(gal.search(q, 10)[1], np.argsort(exact, axis=1, kind="stable")[:, :10])
    if device == "cuda":
        # a few more for retry passes that more queries may need; one a block would be 15 more
        assert _syncs(lambda: gal.search(q, 10)) <= _syncs(lambda: gal.search(q[:32], 10)) + 4
