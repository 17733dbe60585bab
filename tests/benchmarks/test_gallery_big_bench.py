"""benchmarks.gallery_big: the chunked exact reference is the true top-k, --quick writes its reports,
bad flags exit 2 (no timing checks)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.gallery_big import _fill, _merge, main

pytest.importorskip("faiss")


def test_merge_keeps_the_k_smallest_by_distance_then_id() -> None:
    d, i = _merge(np.array([[0.1, 0.5]], np.float32), np.array([[4, 9]]), np.array([[0.5, 0.2]], np.float32),
                  np.array([[2, 7]]), 3)
    np.testing.assert_array_equal(i, [[4, 7, 2]])
    np.testing.assert_allclose(d, [[0.1, 0.2, 0.5]])


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_chunked_exact_reference_equals_an_exhaustive_search(storage: str) -> None:
    """The ground truth merged chunk by chunk is what an IVF gallery probing every list returns."""
    cfg = {"size": 3000, "dim": 16, "method": "ivf", "storage": storage, "queries": 20, "exact_queries": 4,
           "chunk": 700, "k": 5, "batches": [1, 4]}
    gallery, queries, truth, exact_s = _fill(cfg, np.random.default_rng(0))
    assert len(gallery) == 3000 and truth.shape == (20, 5)
    assert sorted(exact_s) == [1, 4] and len(exact_s[1]) == 4 and len(exact_s[4]) == 1
    assert all(np.all(s > 0) for s in exact_s.values())
    gallery.nprobe = 10_000
    np.testing.assert_array_equal(gallery.search(queries, 5)[1], truth)


def test_quick_run_writes_json_and_markdown(tmp_path) -> None:
    assert main(["--quick", "--out", str(tmp_path), "--nprobe", "2", "1000"]) == 0
    report = json.loads((tmp_path / "gallery_big.json").read_text())
    assert report["settings"]["quick"] is True and report["settings"]["method"] == "ivf-sq8"
    rows = report["results"]
    assert [(r["nprobe"], r["batch"]) for r in rows] == [(2, 1), (2, 16), (1000, 1), (1000, 16)]
    assert all(r["queries_per_s"] > 0 and r["speedup_vs_exact"] > 0 and r["build_s"] > 0 for r in rows)
    assert rows[-1]["recall_at_k"] >= 0.99 and rows[0]["recall_at_k"] <= rows[-1]["recall_at_k"]
    assert report["memory"]["host_peak_rss_mb"] > 0
    md = (tmp_path / "gallery_big.md").read_text()
    assert "SMOKE RUN" in md and "| speedup_vs_exact |" in md


def test_bad_flags_exit_2(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--size", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2 and "--size" in capsys.readouterr().err
    assert main(["--size", "100", "--batches", "5000", "--out", str(tmp_path)]) == 2


def test_quick_with_a_size_flag_is_an_error_not_a_silent_smoke_run(tmp_path, capsys) -> None:
    assert main(["--quick", "--size", "100", "--chunk", "64", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--quick sets the sizes itself (20000 rows of dim 32), so --size --chunk would be ignored" in err
    assert not (tmp_path / "gallery_big.json").exists()
