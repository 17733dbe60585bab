"""Backend benchmarks never exit 0 having measured nothing, and stop early with a clear error on a
broken artefact, a bad count or an output folder they could not write to."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from benchmarks import e2e, latency
from engine.errors import BackendUnavailableError, InputError

QUICK = ["--quick", "--device", "cpu", "--batches", "2", "--repeats", "1", "--warmup", "0"]
COMMANDS = {"latency": latency.main, "e2e": e2e.main}


def _edited(src: Path, dst: Path, **changes: int) -> Path:
    """A copy of the artefact folder whose spec.json says something the graph does not do."""
    shutil.copytree(src, dst)
    spec = json.loads((dst / "spec.json").read_text())
    (dst / "spec.json").write_text(json.dumps({**spec, **changes}))
    return dst


@pytest.mark.parametrize("name", COMMANDS)
def test_wrong_dim_spec_exits_2_instead_of_skipping_every_backend(name, tmp_path, bench_artifacts, capsys):
    art = _edited(bench_artifacts, tmp_path / "art", embedding_dim=999)
    assert COMMANDS[name](["--artifact", str(art), *QUICK, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "999" in err and "re-export" in err  # the graph gives 32-D, the spec says 999
    assert not (tmp_path / "out" / f"{name}.json").exists()


def test_wrong_dim_spec_against_the_checkpoint_is_refused_before_any_backend_runs(tmp_path, bench_artifacts,
                                                                                   bench_checkpoint, capsys):
    art = _edited(bench_artifacts, tmp_path / "art", embedding_dim=999)
    assert latency.main(["--artifact", str(art), "--checkpoint", str(bench_checkpoint), *QUICK,
                         "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "embedding_dim: 999 != 32" in captured.err and "== torch-fp32" not in captured.out


@pytest.mark.parametrize("name", COMMANDS)
def test_wrong_input_height_is_a_clear_error_not_a_skipped_onnx_runtime_failure(name, tmp_path, bench_artifacts,
                                                                                 capsys):
    art = _edited(bench_artifacts, tmp_path / "art", height=40)
    assert COMMANDS[name](["--artifact", str(art), *QUICK, "--backends", "ort-fp32", "ort-fp16",
                           "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "the spec says (N, 40, 16, 3)" in err and "re-export the artefact" in err


def test_nothing_measurable_exits_2_with_every_reason(tmp_path, bench_artifacts, capsys):
    # no checkpoint: no PyTorch baseline; TensorRT cannot run on this CPU machine either
    assert latency.main(["--artifact", str(bench_artifacts), *QUICK, "--backends", "trt-fp16",
                         "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "nothing was measured" in err and "torch-fp32: no PyTorch module: pass --checkpoint" in err
    assert "trt-fp16: " in err
    with pytest.raises(BackendUnavailableError, match="nothing was measured"):
        latency.run(bench_artifacts, None, latency.LatencyOptions(device="cpu", backends=("trt-fp16",)))


def test_e2e_k_0_is_a_usage_error(tmp_path, bench_artifacts, capsys):
    with pytest.raises(SystemExit) as exit_:
        e2e.main(["--artifact", str(bench_artifacts), *QUICK, "--k", "0", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--k: expected a whole number of at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(InputError, match="k=0"):
        e2e.E2EOptions(k=0)
    with pytest.raises(InputError, match=r"batches=\(\)"):
        latency.LatencyOptions(batches=())


@pytest.mark.parametrize("name", COMMANDS)
def test_out_that_is_a_file_or_unwritable_is_refused_before_the_run(name, tmp_path, bench_artifacts,
                                                                    bench_checkpoint, capsys):
    afile = tmp_path / "results"
    afile.write_text("not a folder")
    for out in (afile, afile / "sub"):
        assert COMMANDS[name](["--artifact", str(bench_artifacts), "--checkpoint", str(bench_checkpoint),
                               *QUICK, "--out", str(out)]) == 2
        captured = capsys.readouterr()
        assert f"--out {out}" in captured.err and "folder" in captured.err
        assert "==" not in captured.out  # refused before any backend was opened


def test_disk_full_while_writing_results_names_the_file(tmp_path, bench_artifacts, monkeypatch, capsys):
    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    assert latency.main(["--artifact", str(bench_artifacts), *QUICK, "--backends", "ort-fp32",
                         "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"writing {tmp_path / 'latency.json'} failed: No space left on device; free some space" in err
    assert list(tmp_path.iterdir()) == []  # no half file, no temporary left behind


def test_a_backend_failing_mid_run_is_reported_and_the_others_still_measured(bench_artifacts, monkeypatch):
    real = latency._bench_candidate

    def flaky(cand, ctx):
        if cand.name == "ort-fp16":
            raise RuntimeError("out of memory")
        return real(cand, ctx)

    monkeypatch.setattr(latency, "_bench_candidate", flaky)
    report = latency.run(bench_artifacts, None, latency.LatencyOptions(
        device="cpu", batches=(2,), backends=("ort-fp32", "ort-fp16"), repeats=1, warmup=0, min_seconds=0))
    assert [r["backend"] for r in report.results] == ["ort-fp32"]
    assert report.skipped["ort-fp16"] == "failed to run: out of memory"


def test_a_spec_mismatch_mid_run_stops_the_run(bench_artifacts, monkeypatch):
    from engine.errors import SpecMismatchError

    def broken(cand, ctx):
        raise SpecMismatchError("ort backend returned embeddings of shape (2, 8)")

    monkeypatch.setattr(latency, "_bench_candidate", broken)
    with pytest.raises(SpecMismatchError, match="shape"):
        latency.run(bench_artifacts, None, latency.LatencyOptions(device="cpu", batches=(2,), backends=("ort-fp32",)))


def test_a_machine_without_onnxruntime_skips_the_ort_rows_instead_of_crashing(bench_artifacts, monkeypatch):
    """ModuleNotFoundError is no "cannot serve here" error: where the device is CUDA the benchmark asked
    onnxruntime for its providers itself and crashed; now the ort candidates are skipped with the reason."""
    import sys

    from benchmarks import harness
    from benchmarks.backends import CANDIDATES, backend_device

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails as if not installed
    assert backend_device(CANDIDATES["ort-fp32"], "cuda") == "cpu"
    ctx = {"folder": bench_artifacts, "device": "cuda", "module": None, "probe": None}
    why = harness._open_and_probe(CANDIDATES["ort-fp16"], ctx)
    assert why is not None and "needs onnxruntime" in why and "jlml-engine[ort" in why
