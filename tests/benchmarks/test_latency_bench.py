"""benchmarks.latency --quick on a tiny exported model: reports, fields, ratios, skips (no timing checks)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.latency import LatencyOptions, main
from engine.errors import InputError


def test_quick_run_writes_reports_with_baseline_ratios(tmp_path: Path, bench_artifacts: Path,
                                                       bench_checkpoint: Path) -> None:
    rc = main(["--artifact", str(bench_artifacts), "--checkpoint", str(bench_checkpoint), "--quick", "--device", "cpu",
               "--batches", "1", "4", "--out", str(tmp_path)])
    assert rc == 0
    assert {"latency.json", "latency.md", "latency.png"} <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "latency.json").read_text())
    assert report["environment"]["device"] == "cpu" and report["settings"]["batches"] == [1, 4]
    assert report["settings"]["versions"]["onnxruntime"]
    assert report["settings"]["ort_cuda_options"] == {"cudnn_conv_algo_search": "HEURISTIC"}
    rows = {(r["backend"], r["batch"]): r for r in report["results"]}
    assert set(rows) == {(b, n) for b in ("torch-fp32", "ort-fp32", "ort-fp16") for n in (1, 4)}
    for (_, batch), row in rows.items():
        assert row["p99_ms"] >= row["p90_ms"] >= row["p50_ms"] > 0 and row["images_per_s"] > 0
        base = rows[("torch-fp32", batch)]["images_per_s"]
        assert abs(row["vs_torch_fp32"] - row["images_per_s"] / base) < 1e-9
        assert row["min_cosine"] > (0.99999 if row["precision"] == "fp32" else 0.99)
        assert row["host_rss_mb"] > 0 and row["device_peak_mb"] is None
    assert "needs a CUDA device" in report["skipped"]["torch-fp16"]  # the engine's own reason
    assert "tensorrt" in report["skipped"]["trt-fp16"].lower()
    assert "torch-compile-fp32" not in report["settings"]["backends"]  # --quick leaves compile out
    assert (tmp_path / "latency.png").read_bytes()[:4] == b"\x89PNG"
    assert "| backend | device | batch |" in (tmp_path / "latency.md").read_text()


def test_without_checkpoint_the_baseline_is_skipped_with_the_flag_to_pass(tmp_path: Path,
                                                                          bench_artifacts: Path) -> None:
    assert main(["--artifact", str(bench_artifacts), "--quick", "--device", "cpu", "--batches", "2", "--backends", "ort-fp32",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    assert "--checkpoint" in report["skipped"]["torch-fp32"]
    [row] = report["results"]
    assert row["backend"] == "ort-fp32" and row["vs_torch_fp32"] is None and row["min_cosine"] is None


def test_usage_errors_exit_2(tmp_path: Path, bench_artifacts: Path, capsys) -> None:
    assert main(["--artifact", str(tmp_path / "missing"), "--quick", "--out", str(tmp_path)]) == 2
    assert main(["--artifact", str(bench_artifacts), "--quick", "--backends", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown backend" in capsys.readouterr().err


def test_a_checkpoint_the_artefact_was_not_exported_from_exits_2_naming_both(tmp_path: Path, bench_artifacts: Path,
                                                                            bench_checkpoint: Path, capsys) -> None:
    from benchmarks.e2e import main as e2e
    from train.checkpoint import load_checkpoint, save_checkpoint
    from train.model import JLML

    torch = pytest.importorskip("torch")
    cfg = load_checkpoint(bench_checkpoint).config
    torch.manual_seed(1)  # the same network and contract, other weights: another model
    other = save_checkpoint(tmp_path / "other.pt", JLML(cfg, num_classes=5).eval(), cfg, epoch=1, num_classes=5)
    assert main(["--artifact", str(bench_artifacts), "--checkpoint", str(other), "--quick", "--device", "cpu",
                 "--batches", "1", "--backends", "ort-fp32", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {other} (sha256 " in err and f"not the checkpoint artefact {bench_artifacts} was" in err
    assert str(bench_checkpoint.resolve()) in err and "Traceback" not in err
    assert not (tmp_path / "out" / "latency.json").exists()
    assert e2e(["--artifact", str(bench_artifacts), "--checkpoint", str(other), "--quick",
                "--out", str(tmp_path / "e2e")]) == 2
    assert "is not the checkpoint artefact" in capsys.readouterr().err


def test_cpu_max_batch_on_a_cpu_run_is_refused_not_ignored(tmp_path: Path, bench_artifacts: Path,
                                                           bench_checkpoint: Path, capsys) -> None:
    assert main(["--artifact", str(bench_artifacts), "--checkpoint", str(bench_checkpoint), "--quick", "--device",
                 "cpu", "--batches", "1", "4", "--cpu-max-batch", "1", "--out", str(tmp_path)]) == 2
    assert "--cpu-max-batch 1 limits the CPU-side backends of a CUDA run, and this run is on the CPU (--device cpu)" \
        in capsys.readouterr().err
    assert not (tmp_path / "latency.json").exists()


@pytest.mark.gpu
def test_cuda_run_has_fp16_rows_device_memory_and_a_limited_cpu_reference(tmp_path: Path, bench_artifacts: Path,
                                                                          bench_checkpoint: Path) -> None:
    assert main(["--artifact", str(bench_artifacts), "--checkpoint", str(bench_checkpoint), "--quick", "--device", "cuda",
                 "--batches", "1", "8", "--cpu-max-batch", "1", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    rows = {(r["backend"], r["batch"]): r for r in report["results"]}
    assert rows[("torch-fp16", 8)]["device"].startswith("cuda") and rows[("torch-fp16", 8)]["min_cosine"] > 0.99
    assert rows[("torch-fp32", 8)]["device_peak_mb"] > 0
    assert report["environment"]["device_name"] != report["environment"]["cpu"]
    for (_, batch), row in rows.items():
        assert row["device"].startswith("cuda") or batch <= 1  # CPU-side backends stop at --cpu-max-batch


def test_rounds_interleave_every_backend_and_pool_their_calls(tmp_path: Path, bench_artifacts: Path,
                                                              bench_checkpoint: Path) -> None:
    assert main(["--artifact", str(bench_artifacts), "--checkpoint", str(bench_checkpoint), "--quick", "--device", "cpu",
                 "--batches", "2", "--backends", "ort-fp32", "--rounds", "3", "--repeats", "2",
                 "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "latency.json").read_text())
    rows = {r["backend"]: r for r in report["results"]}
    assert set(rows) == {"torch-fp32", "ort-fp32"} and report["settings"]["rounds"] == 3
    assert all(r["calls"] == 3 * 2 for r in rows.values())  # every round timed both, pooled
    assert abs(rows["ort-fp32"]["vs_torch_fp32"] - rows["ort-fp32"]["images_per_s"]
               / rows["torch-fp32"]["images_per_s"]) < 1e-9 and rows["ort-fp32"]["min_cosine"] > 0.99999
    with pytest.raises(InputError, match="rounds=0"):
        LatencyOptions(rounds=0)
