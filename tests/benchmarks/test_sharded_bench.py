"""benchmarks.sharded on a small gallery: every configuration answers as in-process, reported per batch."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("ray", reason="the sharded benchmark needs ray (pip install 'jlml-engine[ray]')")

from benchmarks.sharded import main  # noqa: E402

pytestmark = pytest.mark.slow


def test_sharded_benchmark_reports_equal_answers_and_ratios(tmp_path):
    assert main(["--out", str(tmp_path), "--rows", "3000", "--dim", "32", "--shards", "1", "3", "--batch", "1", "8",
                 "--repeats", "2"]) == 0
    rows = json.loads((tmp_path / "sharded.json").read_text())["results"]
    assert [(r["mode"], r["batch"]) for r in rows] == [(m, b) for b in (1, 8) for m in ("in-process", "ray-1", "ray-3")]
    assert all(r["equal"] for r in rows) and [r["vs_in_process"] for r in rows[::3]] == [1.0, 1.0]
    assert rows[2]["threads_per_shard"] == [1, 1, 1] and rows[2]["merge_us_per_query"] > 0
    assert "| ray-3 | 3 | 8 |" in (tmp_path / "sharded.md").read_text()
