"""benchmarks.e2e --quick on a tiny exported model: reports, ranking agreement, ratios (no timing checks)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.e2e import main


def test_quick_run_ranks_queries_on_every_cpu_backend(tmp_path: Path, bench_artifacts: Path,
                                                     bench_checkpoint: Path) -> None:
    rc = main(["--artifact", str(bench_artifacts), "--checkpoint", str(bench_checkpoint), "--quick", "--device", "cpu",
               "--gallery-size", "24", "--batches", "1", "3", "--k", "5", "--warmup", "1", "--repeats", "2",
               "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "e2e.json").read_text())
    assert report["settings"]["gallery_size"] == 24 and "not timed" in report["settings"]["input"]
    rows = {(r["backend"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(b, n) for b in ("torch-fp32", "ort-fp32", "ort-fp16") for n in (1, 3)}
    for (_, batch), row in rows.items():
        assert row["queries_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        assert abs(row["vs_torch_fp32"] - row["queries_per_s"] / rows[("torch-fp32", batch)]["queries_per_s"]) < 1e-9
    assert rows[("torch-fp32", 1)]["topk_agreement"] == 1.0
    assert rows[("ort-fp32", 1)]["topk_agreement"] >= 0.9  # same graph: same ranked ids up to float ties
    assert set(report["skipped"]) == {"torch-fp16", "trt-fp16"}
    assert "| backend | batch |" in (tmp_path / "e2e.md").read_text()


@pytest.mark.gpu
def test_cuda_run_searches_on_the_gpu_and_agrees_with_the_baseline(tmp_path: Path, bench_artifacts: Path,
                                                                   bench_checkpoint: Path) -> None:
    assert main(["--artifact", str(bench_artifacts), "--checkpoint", str(bench_checkpoint), "--quick", "--device", "cuda",
                 "--backends", "torch-fp16", "--gallery-size", "24", "--batches", "4", "--k", "5",
                 "--out", str(tmp_path)]) == 0
    rows = {r["backend"]: r for r in json.loads((tmp_path / "e2e.json").read_text())["results"]}
    assert set(rows) == {"torch-fp32", "torch-fp16"} and rows["torch-fp32"]["device"].startswith("cuda")
    assert rows["torch-fp16"]["topk_agreement"] >= 0.8  # fp16 may swap near-tied neighbours
