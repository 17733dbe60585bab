"""benchmarks.gallery: --quick writes its three reports with the documented fields (no timing checks);
bad flags exit 2 before any work."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from benchmarks.gallery import _interleaved, main


def test_quick_run_writes_json_markdown_and_plot(tmp_path) -> None:
    rc = main(["--quick", "--out", str(tmp_path), "--sizes", "300", "700", "--queries", "8",
               "--batches", "1", "4", "--repeats", "2", "--rounds", "2", "--data", "unit", "clustered",
               "--paths", "torch", "fp32", "--approx", "ivf"])
    assert rc == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"gallery.json", "gallery.md", "gallery.png"}
    report = json.loads((tmp_path / "gallery.json").read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    assert report["settings"]["sizes"] == [300, 700] and report["settings"]["dtype"] == "float32"
    assert report["settings"]["quick"] is True
    methods = {r["method"] for r in report["results"]}
    assert {"gallery", "gallery_torch", "gallery_fp32", "gallery_ivf", "torch_naive"} <= methods
    assert {r["data"] for r in report["results"]} == {"unit", "clustered"}
    assert all(r["path"] in ("faiss", "bf16", "fp32", "torch") for r in report["results"] if r["method"] == "gallery")
    for row in report["results"]:
        assert row["queries_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        if "faiss" in methods and row["method"] != "gallery_ivf":
            assert row["agree_faiss"] > 0.9 and row["recall_at_k"] > 0.9 and row["vs_faiss"] > 0
        assert (row["build_s"] > 0) if row["method"] == "gallery_ivf" else row["build_s"] is None
        assert row["vs_gallery"] > 0 and (row["method"] != "gallery" or row["vs_gallery"] == 1.0)
    assert (tmp_path / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "gallery.md").read_text()
    assert "| size | batch | method |" in md and "| vs_gallery |" in md and "| build_s |" in md and "SMOKE RUN" in md


@pytest.mark.parametrize(("flags", "message"), [
    (["--sizes", "0"], "--sizes: expected a whole number of at least 1, got 0"),
    (["--k", "0"], "--k: expected a whole number of at least 1"),
    (["--batches", "0"], "--batches: expected a whole number of at least 1"),
    (["--dim", "-4"], "--dims/--dim: expected a whole number of at least 1, got -4"),
    (["--dim", "0"], "--dims/--dim: expected a whole number of at least 1, got 0"),
    (["--queries", "0"], "--queries: expected a whole number of at least 1, got 0"),
])
def test_non_positive_counts_are_usage_errors(tmp_path, capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--out", str(tmp_path / "o"), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "message"), [
    (["--k", "100000", "--sizes", "1000"], "--k 100000 exceeds the smallest gallery"),
    (["--batches", "50", "--queries", "10"], "--batches 50 exceeds --queries 10"),
    (["--device", "tpu"], "device 'tpu' is not 'auto', 'cpu', 'cuda' or 'cuda:N'"),
])
def test_bad_flags_exit_2_with_a_fix(tmp_path, capsys, flags: list[str], message: str) -> None:
    assert main(["--out", str(tmp_path / "o"), *flags]) == 2
    assert message in capsys.readouterr().err


def test_cuda_without_gpu_and_unwritable_out_exit_2_before_work(tmp_path, capsys) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        assert main(["--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--quick", "--out", str(blocker / "sub")]) == 2
    assert "not a writable folder" in capsys.readouterr().err
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(["--quick", "--out", str(locked)]) == 2


def test_recall_scores_each_batch_once_not_the_warm_up_twice() -> None:
    """Batch 0 was scored twice (warm-up and timed call), biasing recall towards it."""
    batches = [np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32)]
    ref = {"faiss": lambda q: np.array([[0, 1]]) + int(q[0, 0]) * 10,
           "other": lambda q: np.array([[0, 1]]) if q[0, 0] == 0 else np.array([[98, 99]])}
    _, agree, recall = _interleaved(ref, batches, {"repeats": 2, "rounds": 2, "device": "cpu"})
    assert recall["other"] == 0.5 and agree["other"] == 0.5 and recall["faiss"] == 1.0


def test_the_clock_waits_for_the_measured_gpu_not_the_current_one(monkeypatch):
    """A benchmark of cuda:1 from a process whose current device is 0 must wait for cuda:1's queue."""
    import torch

    from benchmarks.common import time_calls

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    time_calls(lambda: None, device="cuda:1", warmup=1, repeats=2)
    assert waited and all(d is not None and torch.device(d) == torch.device("cuda", 1) for d in waited)
    waited.clear()
    time_calls(lambda: None, device="cpu", warmup=1, repeats=2)
    assert waited == []


def test_the_plain_baseline_keeps_its_norms_instead_of_recomputing_them_per_call(monkeypatch) -> None:
    """The torch matmul+topk baseline once built an N x D temporary per call ((g*g).sum(1)); it now
    reads norms computed at build time, so a one-query call grows memory by its score row, not a gallery."""
    from pathlib import Path

    from benchmarks.gallery import _searchers

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "engine"))
    from _memory import peak_growth_mb, require_peak_reset

    require_peak_reset()
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((300_000, 128), np.float32)  # 146 MB
    cfg = {"k": 5, "device": "cpu", "paths": [], "approx": [], "naive": True}
    naive = _searchers(gallery, cfg)[0]["torch_naive"]
    q = gallery[:3] + 1e-3
    grown, ids = peak_growth_mb(lambda: naive(q))
    assert grown < 0.2 * gallery.nbytes / 2**20, f"one call grew the peak RSS by {grown:.0f} MB"
    assert ids[:, 0].tolist() == [0, 1, 2]
