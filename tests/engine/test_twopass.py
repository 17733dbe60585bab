"""engine.search.twopass via Gallery(method=...): bf16 and fp32 shortlists give bit-identical exact answers."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import InputError
from engine.gallery import Gallery

torch = pytest.importorskip("torch")


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _search_all(g: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, **kw) -> dict[str, tuple]:
    out = {}
    for mode in ("bf16", "fp32"):
        gal = Gallery(g.shape[1], method=mode, chunk=700, query_batch=40)
        gal.add(g, ids, kw.get("cams"))
        out[mode] = gal.search(q, k, query_ids=kw.get("query_ids"), query_cams=kw.get("query_cams"))
        out[mode + "_counts"] = gal.counts
    return out


def _reference(g: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """FP64 squared L2 rounded to FP32, ranked by (distance, id): the documented exact answer."""
    d = ((q[:, None, :].astype(np.float64) - g[None].astype(np.float64)) ** 2).sum(-1).astype(np.float32)
    order = np.lexsort((np.broadcast_to(ids, d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


def _check(g: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, **kw) -> dict[str, tuple]:
    out = _search_all(g, ids, q, k, **kw)
    for a, b in zip(out["bf16"], out["fp32"], strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit
    if not kw:
        ref_d, ref_i = _reference(g, ids, q, k)
        np.testing.assert_allclose(out["bf16"][0], ref_d, rtol=1e-6, atol=1e-7)
        assert (out["bf16"][1] == ref_i).mean() > 0.999  # FP64 summation order may flip one rounding
    return out


def test_random_unit_vectors_bit_identical_and_exact() -> None:
    rng = np.random.default_rng(0)
    g, q = _unit(rng, 3000, 64), _unit(rng, 60, 64)
    out = _check(g, rng.permutation(3000) * 2, q, 5)
    assert out["bf16_counts"].queries == 60


def test_large_norms_and_non_unit_vectors() -> None:
    rng = np.random.default_rng(1)
    g = rng.standard_normal((2000, 32)).astype(np.float32) * rng.uniform(0.01, 300, (2000, 1)).astype(np.float32)
    q = g[:30] + rng.standard_normal((30, 32)).astype(np.float32)
    _check(g, np.arange(2000), q, 7)


def test_near_duplicates_and_exact_ties_force_fallbacks() -> None:
    rng = np.random.default_rng(2)
    base = _unit(rng, 50, 48)
    g = np.concatenate([base, np.repeat(base[:1], 100, 0), base[1:2] + 1e-4 * _unit(rng, 60, 48)])
    q = np.concatenate([base[:2], base[:2] + 1e-3 * _unit(rng, 2, 48)])
    ids = rng.permutation(len(g))
    out = _check(g, ids, q, 12)
    counts = out["bf16_counts"]
    assert counts.fp32 > 0 and counts.wide > 0  # 100 exact ties exceed any 48-row shortlist
    d, i = out["bf16"]
    tied = np.sort(ids[50:150])[:12]
    assert i[0].tolist() == tied.tolist() and (d[0] == 0).all()


def test_exclusion_and_k_larger_than_gallery() -> None:
    rng = np.random.default_rng(3)
    g, q = _unit(rng, 40, 16), _unit(rng, 5, 16)
    ids, cams = np.arange(40) % 8, np.arange(40) % 3
    out = _check(g, ids, q, 50, cams=cams, query_ids=ids[:5], query_cams=cams[:5])
    d, i = out["bf16"]
    assert (i[:, -10:] == -1).all() and np.isinf(d[:, -10:]).all()
    for row, (qid, qcam) in enumerate(zip(ids[:5], cams[:5], strict=True)):
        kept = i[row][i[row] >= 0]
        assert len(kept) == 40 - ((ids == qid) & (cams == qcam)).sum()


def test_bound_covers_the_coarse_error() -> None:
    """Every coarse score lies within u'|S~| + eps_q of the exact ranking score (the proof's premise)."""
    from engine.search.twopass import CoarseRows, _error, upper_max

    rng = np.random.default_rng(4)
    g = torch.from_numpy(rng.standard_normal((4000, 96)).astype(np.float32) * 3)
    q = torch.from_numpy(rng.standard_normal((20, 96)).astype(np.float32))
    sqnorm = (g * g).sum(1)
    rows = CoarseRows().rows(g, sqnorm, upper_max(sqnorm))
    from engine.search.distance import ranking_distances

    coarse = ranking_distances(q, rows.data, sqnorm).double()
    g64, q64 = g.double(), q.double()
    exact = (g64 * g64).sum(1)[None] - 2 * q64 @ g64.T
    err = (coarse - exact).abs()
    allowed = rows.out_rounding * coarse.abs() + _error(q, rows)[:, None]
    assert bool((err <= allowed).all())
    assert float((err / allowed).max()) > 0.05  # the bound is not vacuous either


def test_modes_and_auto_choice() -> None:
    assert Gallery(4, method="torch").search_path() == "torch"
    with pytest.raises(InputError, match="method must be one of"):
        Gallery(4, method="int8")


def test_fp16_rows_with_fp32_rerank_equal_the_fp32_exact_search() -> None:
    """The GPU "fp16" path (FP16 rows searched, FP32 host rows re-ranked), run on CPU: bit-identical to
    the FP32 two-pass, i.e. exact for the FP32 vectors although the searched rows are FP16."""
    rng = np.random.default_rng(7)
    g = _unit(rng, 3000, 48)
    g[100:130] = g[7]  # ties the FP16 shortlist cannot separate: retries must resolve them by id
    ids = rng.permutation(3000)
    q = np.concatenate([g[:5], _unit(rng, 35, 48)])
    half = Gallery(48, storage="float16", method="fp16", chunk=500, query_batch=16)
    full = Gallery(48, method="fp32", chunk=500, query_batch=16)
    for gal in (half, full):
        gal.add(g[:1000], ids[:1000])
        gal.add(g[1000:], ids[1000:])
    assert half.search_path(40) == "fp16"
    for a, b in zip(half.search(q, 10), full.search(q, 10), strict=True):
        np.testing.assert_array_equal(a, b)
    ref_d, ref_i = _reference(g, ids, q, 10)
    assert (half.search(q, 10)[1] == ref_i).mean() > 0.999
    with pytest.raises(InputError, match="pass storage='float16'"):
        Gallery(4, method="fp16")
