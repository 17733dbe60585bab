"""benchmarks.summary (the demo's speed stage) calls both benchmarks as functions and returns their figures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import summary
from engine.errors import ArtifactError
from engine.spec import ModelSpec


def test_summary_reports_engine_and_gallery_ratios(tmp_path: Path, bench_artifacts: Path, bench_checkpoint: Path,
                                                   monkeypatch, capsys) -> None:
    for name, value in {"GALLERY_SIZE": 500, "BATCH": 4, "QUERY_BATCH": 8, "QUERIES": 16, "REPEATS": 2}.items():
        monkeypatch.setattr(summary, name, value)
    speed = summary.run(bench_artifacts, bench_checkpoint, tmp_path)
    backends = {r["backend"] for r in speed["embedding"]}
    assert {"torch-fp32", "ort-fp32", "ort-fp16"} <= backends
    assert all(r["batch"] == summary.BATCH and r["images_per_s"] > 0 for r in speed["embedding"])
    assert {r["method"] for r in speed["gallery"]} >= {"gallery"} and speed["gallery"][0]["size"] == 500
    out = capsys.readouterr().out
    assert "## Speed (a short run: " in out and "load average " in out
    spec = ModelSpec.load(bench_artifacts)
    assert f"Embedding: batch 4 of {spec.height}x{spec.width} uint8 images -> {spec.embedding_dim}-D" in out
    assert "Gallery search: 500 x 1024 random unit vectors, 8 queries per call, k=10" in out
    assert "| backend | device | batch | p50_ms | p99_ms | images_per_s | vs_torch_fp32 |" in out
    assert "| method | size | batch | p50_ms | p99_ms | queries_per_s | vs_faiss |" in out
    assert f"python -m benchmarks.latency --artifact {bench_artifacts} --checkpoint {bench_checkpoint}" in out
    assert json.loads((tmp_path / "summary.json").read_text())["embedding"] == speed["embedding"]
    assert (tmp_path / "latency.json").is_file()


def test_summary_raises_when_the_artefact_is_missing(tmp_path: Path, bench_checkpoint: Path) -> None:
    with pytest.raises(ArtifactError, match="nowhere"):
        summary.run(tmp_path / "nowhere", bench_checkpoint, tmp_path)


def test_summary_calls_the_benchmarks_as_functions_not_their_command_lines(
        tmp_path: Path, bench_artifacts: Path, bench_checkpoint: Path, monkeypatch) -> None:
    from benchmarks import gallery, latency

    def no_cli(argv=None):
        raise AssertionError("summary went through a command line")

    monkeypatch.setattr(latency, "main", no_cli)
    monkeypatch.setattr(gallery, "main", no_cli)
    for name, value in {"GALLERY_SIZE": 300, "BATCH": 2, "QUERY_BATCH": 4, "QUERIES": 8, "REPEATS": 1}.items():
        monkeypatch.setattr(summary, name, value)
    monkeypatch.setattr(summary, "BACKENDS", ("ort-fp32",))
    speed = summary.run(bench_artifacts, bench_checkpoint, tmp_path)
    assert [r["backend"] for r in speed["embedding"]] == ["torch-fp32", "ort-fp32"]
    assert speed["embedding"][1]["vs_torch_fp32"] > 0


def test_a_stalled_row_is_named_and_said_to_make_the_ratios_unreliable(tmp_path: Path) -> None:
    row = {"backend": "torch-fp32", "device": "cpu", "batch": 32, "p50_ms": 100.0, "p99_ms": 3500.0,
           "images_per_s": 320.0, "vs_torch_fp32": 1.0}
    steady = {**row, "backend": "ort-fp32", "p99_ms": 120.0}
    summary_ = {"embedding": [row, steady], "gallery": [], "load_average_1min": 1.3,
                "stalled": [r["backend"] for r in (row, steady) if summary._stalled(r)]}
    text = summary.format_summary(summary_, ModelSpec(), {"cpu": "a CPU", "cpu_count": 2}, "ART", "CKPT", tmp_path)
    assert summary_["stalled"] == ["torch-fp32"]
    assert "Note: torch-fp32 stalled (p99 above 5x p50)" in text and "unreliable" in text
    assert "a CPU, 2 cores, load average 1.30" in text
