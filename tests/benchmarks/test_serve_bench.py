"""The load test end to end on a tiny artefact: a protocol and a shared-memory transport, two batch sizes,
several clients, nothing lost, reports."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("pytriton", reason="the server load test needs nvidia-pytriton (pip install 'jlml-engine[serve]')")
pytest.importorskip("tritonclient.grpc", reason="the server load test needs tritonclient[grpc,http]")

from benchmarks.serve import main  # noqa: E402


@pytest.mark.serve
def test_load_test_answers_every_request_with_the_in_process_result(tmp_path, bench_artifacts):
    out = tmp_path / "serve"
    assert main(["--artifact", str(bench_artifacts), "--out", str(out), "--clients", "1", "3", "--requests", "4",
                 "--batches", "1", "4", "--pairs", "3", "--protocols", "grpc", "http+shm", "--gallery-rows", "40"]) == 0
    report = json.loads((out / "serve.json").read_text())
    embed = [r for r in report["results"] if r["request"] == "embed"]
    search = [r for r in report["results"] if r["request"] != "embed"]
    assert {(r["protocol"], r["batch"], r["clients"]) for r in embed} == {
        (p, b, n) for p in ("grpc", "http+shm") for b in (1, 4) for n in (1, 3)}
    # search by embedding: each protocol once (shared memory is for the images), ids equal to in-process
    assert {(r["protocol"], r["batch"], r["request"]) for r in search} == {
        (p, b, "search k=10") for p in ("grpc", "http") for b in (1, 4)}
    assert all(r["errors"] == 0 and r["max_abs_diff"] <= 1e-5 and r["overhead_ms"] == r["overhead_ms"] for r in search)
    for row in embed:
        assert row["sent"] == row["answered"] == 4 * row["clients"] and row["errors"] == 0
        assert row["max_abs_diff"] <= 1e-5 and row["p99_ms"] >= row["p50_ms"] > 0
    assert all(r["in_process_p50_ms"] > 0 and "overhead_ms" in r and r["ratio"] > 0
               for r in report["results"] if r["clients"] == 1)
    assert len(report["environment"]["loadavg_before"]) == 3
    assert report["server_exit_code"] == 0
    assert (out / "serve.png").stat().st_size > 0 and "requests_per_s" in (out / "serve.md").read_text()


def test_batch_outside_the_artefact_range_exits_2(tmp_path, bench_artifacts):
    assert main(["--artifact", str(bench_artifacts), "--out", str(tmp_path), "--batch", "17"]) == 2
