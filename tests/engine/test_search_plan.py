"""engine.search.plan: the path and thread count chosen from a batch's shape (the measured crossovers)."""
from __future__ import annotations

import numpy as np
import pytest

from engine.search.plan import THREAD_GRAIN, Shape, choose, threads


def _shape(rows: int, batch: int, dim: int = 1024, **kw) -> Shape:
    base = {"device": "cpu", "storage": "float32", "excluding": False, "has_faiss": True, "bf16_fast": True}
    return Shape(rows=rows, batch=batch, dim=dim, **(base | kw))


@pytest.mark.parametrize(("rows", "batch", "kw", "path"), [
    (1_000, 1, {}, "faiss"),  # tiny: faiss's one C++ call
    (1_000, 1000, {}, "faiss"),  # 4 MB gallery stays in cache
    (100_000, 1, {}, "faiss"),  # one query: one pass over the rows either way
    (10_000, 10, {}, "bf16"),  # enough work for the 2x bf16 GEMM rate
    (100_000, 1000, {}, "bf16"),
    (10_000, 1000, {}, "faiss"),  # faiss's big BLAS blocks beat bf16 + re-rank on a small gallery
    (10_000, 24, {"bf16_fast": False}, "torch"),  # AVX2: one GEMM, not faiss's small BLAS blocks
    (10_000, 10, {"bf16_fast": False}, "faiss"),  # AVX2, few queries: faiss's per-query scans win
    (10_000, 1, {"bf16_fast": False}, "faiss"),
    (1_000, 1, {"has_faiss": False}, "torch"),  # faiss not installed
    (1_000, 1, {"excluding": True}, "torch"),  # faiss cannot skip same-id-same-camera rows
    (100_000, 1000, {"storage": "float16"}, "torch"),  # FP16 rows on CPU: no bf16 copy, no faiss
    (1_000, 1, {"device": "cuda"}, "torch"),
    (1_000, 1, {"device": "cuda", "storage": "float16"}, "fp16"),  # FP16 rows + FP32 host re-rank
])
def test_choose(rows: int, batch: int, kw: dict, path: str) -> None:
    assert choose(_shape(rows, batch, **kw)) == path


def test_threads_grow_with_work_up_to_the_cap() -> None:
    assert threads(_shape(100, 2, dim=512), 8) == 1
    assert threads(_shape(1_000, 1), 8) == 8  # one query: no switch
    assert threads(_shape(THREAD_GRAIN // 1024, 3), 2) == 2
    assert threads(_shape(THREAD_GRAIN // 1024, 3), 8) == 3


@pytest.fixture
def fresh_bf16_detection():
    """bf16_is_fast reads the CPU (and the environment) once per process: clear it around the test."""
    from engine.search import twopass

    twopass.bf16_is_fast.cache_clear()
    yield
    twopass.bf16_is_fast.cache_clear()


@pytest.mark.usefixtures("fresh_bf16_detection")
@pytest.mark.parametrize(("value", "fast", "path"), [("0", False, "torch"), ("1", True, "bf16")])
def test_native_bf16_env_overrides_detection_and_so_the_plan(monkeypatch, value: str, fast: bool, path: str) -> None:
    """JLML_NATIVE_BF16 measures a CPU without native bf16 on one that has it (and the reverse)."""
    from engine.gallery import Gallery
    from engine.search import twopass

    monkeypatch.setenv(twopass.NATIVE_BF16_ENV, value)
    assert twopass.bf16_is_fast() is fast
    gal = Gallery(1024)
    gal.add(np.zeros((10_000, 1024), np.float32), np.arange(10_000))
    assert gal.search_path(100) == path


@pytest.mark.usefixtures("fresh_bf16_detection")
def test_native_bf16_env_rejects_other_values(monkeypatch) -> None:
    from engine.errors import InputError
    from engine.search import twopass

    monkeypatch.setenv(twopass.NATIVE_BF16_ENV, "yes")
    with pytest.raises(InputError, match="JLML_NATIVE_BF16 must be 0 or 1, got 'yes'"):
        twopass.bf16_is_fast()
