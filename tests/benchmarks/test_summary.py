"""benchmarks.summary (the demo's speed stage) returns and prints both benchmarks' figures."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import summary
from engine.errors import JLMLError


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
    assert (tmp_path / "latency.json").is_file() and (tmp_path / "gallery.json").is_file()


def test_summary_raises_when_the_artefact_is_missing(tmp_path: Path, bench_checkpoint: Path) -> None:
    with pytest.raises(JLMLError, match="exited 2"):
        summary.run(tmp_path / "nowhere", bench_checkpoint, tmp_path)
