"""benchmarks.summary (the demo's speed stage) calls both benchmarks as functions and returns their figures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import summary
from engine.errors import ArtifactError


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
    assert "x torch fp32" in out and "search: " in out
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
