"""benchmarks.report: medians per row over repeated runs, and refusal of mixed inputs."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.report import main


def _run(folder: Path, rate: float, extra_batch: bool = False) -> Path:
    rows = [{"backend": "ort-fp32", "device": "cpu", "batch": 8, "p50_ms": 1000 * 8 / rate, "p99_ms": 9.0,
             "images_per_s": rate, "vs_torch_fp32": rate / 100}]
    if extra_batch:
        rows.insert(0, {**rows[0], "batch": 1, "images_per_s": 7.0})
    folder.mkdir()
    path = folder / "latency.json"
    path.write_text(json.dumps({"environment": {"device_name": "cpu X", "device": "cpu", "torch": "2"},
                                "results": rows}))
    return path


def test_median_over_runs_per_row(tmp_path: Path, capsys) -> None:
    runs = [_run(tmp_path / "a", 100.0), _run(tmp_path / "b", 300.0, extra_batch=True), _run(tmp_path / "c", 200.0)]
    assert main([*map(str, runs), "--out", str(tmp_path / "table.md")]) == 0
    lines = (tmp_path / "table.md").read_text().splitlines()
    assert lines[0].startswith("Median of 3 run(s)")
    body = [line for line in lines if line.startswith("| ort-fp32")]
    assert body == ["| ort-fp32 | cpu | 1 | 26.67 | 9 | 7 | 3 | - | 1 |",
                    "| ort-fp32 | cpu | 8 | 40 | 9 | 200 | 2 | - | 3 |"]
    assert capsys.readouterr().out == (tmp_path / "table.md").read_text()


def test_mixed_or_unknown_inputs_exit_2(tmp_path: Path) -> None:
    latency = _run(tmp_path / "a", 1.0)
    other = tmp_path / "gallery.json"
    other.write_text(latency.read_text())
    assert main([str(latency), str(other)]) == 2
    assert main([str(tmp_path / "nope.json")]) == 2


def test_a_bad_file_is_named_and_a_file_given_twice_is_one_run(tmp_path: Path, capsys) -> None:
    good = _run(tmp_path / "a", 100.0)
    for name, text in (("broken", '{"environment": '), ("empty", "{}"), ("list", "[1, 2]"),
                       ("rowless", json.dumps({"environment": {"device_name": "x", "device": "cpu", "torch": "2"},
                                               "results": [{"backend": "ort-fp32"}]}))):
        (tmp_path / name).mkdir()
        bad = tmp_path / name / "latency.json"
        bad.write_text(text)
        assert main([str(good), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {bad} ") and err.count("\n") == 1 and "Traceback" not in err
        assert ("is not valid JSON" if name == "broken" else "expected a report written by") in err
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "latency.json").write_bytes(b"\xff\xfe\x00junk")
    assert main([str(tmp_path / "binary" / "latency.json")]) == 2
    assert f"{tmp_path / 'binary' / 'latency.json'} is not a JSON text file" in capsys.readouterr().err
    assert main([str(good), str(tmp_path / "a" / ".." / "a" / "latency.json")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Median of 1 run(s)") and "given more than once, each counted once" in out.err


def test_runs_with_different_settings_are_not_merged(tmp_path: Path, capsys) -> None:
    paths = []
    for name, settings in (("a", {"sizes": [1000], "dim": 512, "quick": False, "repeats": 5}),
                           ("b", {"sizes": [1000], "dim": 512, "quick": False, "repeats": 9}),
                           ("c", {"sizes": [1000], "dim": 1024, "quick": False, "repeats": 5})):
        folder = tmp_path / name
        folder.mkdir()
        rows = [{"method": "faiss", "size": 1000, "batch": 1, "queries_per_s": 10.0, "p50_ms": 1.0}]
        (folder / "gallery.json").write_text(json.dumps({
            "environment": {"device_name": "cpu X", "device": "cpu", "torch": "2"}, "settings": settings,
            "results": rows}))
        paths.append(str(folder / "gallery.json"))
    assert main(paths[:2]) == 0  # only the timing effort differs
    capsys.readouterr()
    assert main(paths) == 2
    assert "dim=1024" in capsys.readouterr().err


def test_runs_on_different_simd_levels_are_not_merged(tmp_path: Path, capsys) -> None:
    """A run with AVX-512 switched off (ATEN_CPU_CAPABILITY=avx2 ...) is another machine."""
    paths = []
    for name, capability in (("native", "AVX512"), ("avx2", "AVX2")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "gallery.json").write_text(json.dumps({
            "environment": {"device_name": "cpu X", "device": "cpu", "torch_cpu_capability": capability},
            "settings": {"sizes": [1000]},
            "results": [{"method": "faiss", "size": 1000, "batch": 1, "queries_per_s": 10.0, "p50_ms": 1.0}]}))
        paths.append(str(folder / "gallery.json"))
    assert main(paths) == 2
    assert "torch_cpu_capability" in capsys.readouterr().err
