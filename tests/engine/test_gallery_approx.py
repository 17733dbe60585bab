"""Approximate Gallery methods (faiss IVF, HNSW, IVF-SQ8 + exact re-rank), nprobe and reserve."""
from __future__ import annotations

import numpy as np
import pytest
from _memory import in_fresh_process, peak_growth_mb, require_peak_reset

from engine.errors import InputError
from engine.gallery import Gallery

pytest.importorskip("faiss")
KINDS = ("ivf", "hnsw", "ivf-sq8")


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors around n // 10 centres: neighbours are close, as re-id embeddings are."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 10, dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_ids(q: np.ndarray, g: np.ndarray, k: int) -> np.ndarray:
    d = ((q[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` found in the same row of ``found``."""
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found.tolist(), truth.tolist(), strict=True)]))


@pytest.mark.parametrize("storage", ["float32", "float16"])
@pytest.mark.parametrize("kind", KINDS)
def test_recall_and_distances_of_each_kind(kind: str, storage: str) -> None:
    data = _clustered(4100, 32, seed=0)
    g, q = data[:4000], data[4000:]
    gal = Gallery(32, method=kind, storage=storage)
    gal.add(g, np.arange(4000) + 7)  # ids are not row positions
    d, ids = gal.search(q, 10)
    stored = g.astype(storage).astype(np.float64)  # what the gallery holds
    truth = _brute_ids(q, stored, 10) + 7
    recall = _recall(ids, truth)
    assert recall >= 0.9, f"{kind}: recall@10 {recall:.3f}"
    assert d.dtype == np.float32 and np.all(np.diff(d, axis=1) >= 0)
    exact = ((q[:, None, :].astype(np.float64) - stored[ids - 7]) ** 2).sum(-1)
    np.testing.assert_allclose(d, exact, atol=2e-3 if kind != "ivf-sq8" or storage == "float16" else 1e-5)


def test_ivf_sq8_distances_are_exact_for_its_shortlist() -> None:
    """The 8-bit codes only pick candidates: the returned distances are FP32 L2 to the stored rows."""
    data = _clustered(3050, 48, seed=1)
    gal = Gallery(48, method="ivf-sq8")
    gal.add(data[:3000], np.arange(3000))
    d, ids = gal.search(data[3000:], 5)
    exact = ((data[3000:, None, :] - data[ids]) ** 2).sum(-1)
    np.testing.assert_allclose(d, exact, rtol=1e-5, atol=1e-6)


def test_nprobe_setter_retunes_the_built_index_without_a_rebuild() -> None:
    data = _clustered(2600, 16, seed=2)
    g, q = data[:2500], data[2500:]
    gal = Gallery(16, method="ivf", nprobe=1)
    gal.add(g, np.arange(2500))
    coarse = gal.search(q, 10)[1]
    index = gal._paths["ivf"].index
    gal.nprobe = 10_000  # every list: IVF-Flat is then exhaustive
    exhaustive = gal.search(q, 10)[1]
    assert gal._paths["ivf"].index is index and gal.nprobe == 10_000
    np.testing.assert_array_equal(exhaustive, _brute_ids(q, g, 10))
    assert (coarse != exhaustive).any(), "one list of ~50 should miss some neighbours"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_nprobe_raises(bad: object) -> None:
    with pytest.raises(InputError, match="nprobe must be a positive int"):
        Gallery(8, method="ivf", nprobe=bad)  # type: ignore[arg-type]
    gal = Gallery(8, method="hnsw")
    with pytest.raises(InputError, match="nprobe must be a positive int"):
        gal.nprobe = bad  # type: ignore[assignment]


def test_index_is_rebuilt_after_an_add_and_refuses_exclusion() -> None:
    data = _clustered(1200, 16, seed=3)
    gal = Gallery(16, method="ivf-sq8")
    gal.add(data[:1000], np.arange(1000))
    gal.search(data[:1], 1)
    gal.add(data[1000:], np.arange(1000, 1200))
    assert gal.search(data[1100:1110], 1)[1].ravel().tolist() == list(range(1100, 1110))
    with pytest.raises(InputError, match="cannot skip same-id-same-camera"):
        gal.search(data[:2], 1, query_ids=np.zeros(2, np.int64), query_cams=np.zeros(2, np.int64))


def test_faiss_exact_still_needs_float32() -> None:
    with pytest.raises(InputError, match="searches FP32 rows"):
        Gallery(8, method="faiss", storage="float16")


def _chunks() -> list[np.ndarray]:
    rng = np.random.default_rng(4)
    return [rng.standard_normal((32_768, 64), dtype=np.float32) for _ in range(7)]


def _chunked_fill(chunks: list[np.ndarray], reserve: bool) -> Gallery:
    gal = Gallery(chunks[0].shape[1], method="torch")
    if reserve:
        gal.reserve(sum(map(len, chunks)))
    for i, chunk in enumerate(chunks):
        gal.add(chunk, np.arange(i * len(chunk), (i + 1) * len(chunk)))
    return gal


def _chunked_fill_peak_mb(reserve: bool) -> float:
    """Run in a fresh process (``in_fresh_process``): the fill's peak RSS growth in MiB, after a small fill
    that pays torch's one-time start-up allocations outside the measurement."""
    chunks = _chunks()
    _chunked_fill([c[:64] for c in chunks], reserve)
    return peak_growth_mb(lambda: _chunked_fill(chunks, reserve))[0]


def test_reserve_bounds_a_chunked_fill_to_about_its_final_size() -> None:
    """Without reserve the last growth holds the old and the grown buffer at once (~1.5x the rows)."""
    require_peak_reset()
    chunks = _chunks()
    final_mb = sum(c.nbytes for c in chunks) / 2**20
    grown_mb = in_fresh_process(_chunked_fill_peak_mb, False)
    reserved_mb = in_fresh_process(_chunked_fill_peak_mb, True)
    # Measured in fresh processes with a fixed mmap threshold (in this process the allocator's kept heap
    # made the peaks vary run to run), so each add's temporaries count too: 70.9 MiB reserved and 102.0
    # grown for these 56 MiB of rows, the same to 0.1 MiB run after run; the grown fill's last growth
    # holds the old buffer on top.
    assert reserved_mb < 1.35 * final_mb + 8 < grown_mb, (reserved_mb, final_mb, grown_mb)
    assert grown_mb - reserved_mb > 0.4 * final_mb, (reserved_mb, final_mb, grown_mb)
    grown, reserved = _chunked_fill(chunks, reserve=False), _chunked_fill(chunks, reserve=True)
    q = chunks[3][:5]
    np.testing.assert_array_equal(reserved.search(q, 3)[1], grown.search(q, 3)[1])
    with pytest.raises(InputError, match="rows must be a non-negative int"):
        reserved.reserve(-1)


def test_saved_float16_gallery_loads_as_ivf_sq8(tmp_path) -> None:
    """A gallery saved with FP16 rows is searched approximately after load(method=...)."""
    data = _clustered(2010, 16, seed=5)
    exact = Gallery(16, storage="float16")
    exact.add(data[:2000], np.arange(2000) * 2)
    exact.save(tmp_path / "g.npz")
    gal = Gallery.load(tmp_path / "g.npz", method="ivf-sq8")
    assert (gal.storage, gal.method, len(gal)) == ("float16", "ivf-sq8", 2000)
    got, want = gal.search(data[2000:], 5)[1], exact.search(data[2000:], 5)[1]
    assert _recall(got, want) >= 0.9


@pytest.mark.parametrize(("kind", "nprobe"), [("ivf", 3), ("hnsw", 40), ("ivf-sq8", None)])
def test_save_and_load_keep_the_method_and_its_nprobe(kind: str, nprobe: int | None, tmp_path) -> None:
    """Gallery(method="hnsw") once came back from its file as method="auto" with no index settings."""
    data = _clustered(500, 8, seed=4)
    gal = Gallery(8, method=kind, nprobe=nprobe)
    gal.add(data, np.arange(500))
    gal.save(tmp_path / "g.npz")
    back = Gallery.load(tmp_path / "g.npz")
    assert (back.method, back.nprobe, back.search_path(10)) == (kind, nprobe, kind)
    np.testing.assert_array_equal(back.search(data[:5], 3)[1][:, 0], np.arange(5))
    exact = Gallery.load(tmp_path / "g.npz", method="auto")  # an explicit method still overrides
    assert (exact.method, exact.nprobe) == ("auto", None) and exact.search_path(10) != kind


def test_a_file_from_before_the_method_was_recorded_loads_as_auto_and_a_bad_one_is_refused(tmp_path) -> None:
    from engine.errors import ArtifactError
    from engine.search import file

    gal = Gallery(4, method="hnsw", nprobe=8)
    gal.add(np.eye(4, dtype=np.float32), np.arange(4))
    gal.save(tmp_path / "g.npz")
    header, arrays = file.read(tmp_path / "g.npz")
    for name in ("method", "nprobe"):
        del header[name]
    file.save(tmp_path / "old.npz", header, arrays)
    assert (Gallery.load(tmp_path / "old.npz").method, Gallery.load(tmp_path / "old.npz").nprobe) == ("auto", None)
    file.save(tmp_path / "bad.npz", header | {"method": "lsh", "nprobe": 0}, arrays)
    with pytest.raises(ArtifactError, match=r"records method 'lsh' nprobe 0, expected one of"):
        Gallery.load(tmp_path / "bad.npz")
