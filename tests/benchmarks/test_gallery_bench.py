"""benchmarks.gallery --quick writes its three reports with the documented fields (no timing checks)."""
from __future__ import annotations

import json

from benchmarks.gallery import main


def test_quick_run_writes_json_markdown_and_plot(tmp_path) -> None:
    rc = main(["--quick", "--out", str(tmp_path), "--sizes", "300", "700", "--queries", "8",
               "--batches", "1", "4", "--repeats", "2", "--rounds", "2", "--data", "unit", "clustered"])
    assert rc == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"gallery.json", "gallery.md", "gallery.png"}
    report = json.loads((tmp_path / "gallery.json").read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    assert report["settings"]["sizes"] == [300, 700] and report["settings"]["dtype"] == "float32"
    methods = {r["method"] for r in report["results"]}
    assert {"gallery", "gallery_plain", "torch_naive"} <= methods
    assert {r["data"] for r in report["results"]} == {"unit", "clustered"}
    assert all(0 <= r["fallback"] <= 1 for r in report["results"] if r["method"] == "gallery")
    for row in report["results"]:
        assert row["queries_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
        if "faiss" in methods:
            assert row["agree_faiss"] > 0.9 and row["vs_faiss"] > 0
    assert (tmp_path / "gallery.png").read_bytes()[:4] == b"\x89PNG"
    assert "| size | batch | method |" in (tmp_path / "gallery.md").read_text()
