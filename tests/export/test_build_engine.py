"""The CLI end to end on a tiny real checkpoint: artefacts, parity, reruns and every failure exit code."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from engine.backends.optional import is_installed
from engine.parity import cosine_rows
from engine.spec import ModelSpec, file_sha256
from export import build_engine
from export.onnx_export import serve_graph

HAS_TRT = is_installed("tensorrt", "Builder")
ARGS = ["--min-batch", "1", "--opt-batch", "8", "--max-batch", "64"]


@pytest.fixture(scope="module")
def built(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("artefacts") / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), *ARGS]) == 0
    return out


def test_artefacts_are_complete_and_consistent(built, tiny_model, random_images, torch_embed):
    spec = ModelSpec.load(built)
    assert spec.onnx_sha256 == file_sha256(built / "model.onnx")
    assert (spec.min_batch, spec.opt_batch, spec.max_batch) == (1, 8, 64)
    assert spec.check_compatible(tiny_model.spec) is None
    for name in ("model.onnx", "model.fp16.onnx"):
        proto = onnx.load(str(built / name))
        assert (proto.ir_version, proto.opset_import[0].version) == (spec.ir_version, spec.opset)
    images = random_images(7, spec, seed=9)
    assert cosine_rows(torch_embed(tiny_model, images), serve_graph(built / "model.onnx", spec, images)).min() >= 0.99999
    parity = json.loads((built / "parity.json").read_text())
    assert parity["graphs"]["fp32"]["min_cosine"] >= 0.99999 and parity["graphs"]["fp16"]["min_cosine"] >= 0.999
    assert all(g["passed"] for g in parity["graphs"].values())
    assert (built / "triton" / "embed" / "1" / "model.onnx").read_bytes() == (built / "model.onnx").read_bytes()
    assert not [p for p in built.iterdir() if p.name.startswith(".")]
    assert (built / "model.plan").exists() == HAS_TRT


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here")
def test_skipped_plan_is_one_line_and_require_trt_fails(checkpoint, tmp_path, capsys):
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "a"), "--no-fp16", "--no-simplify"]) == 0
    skipped = [line for line in capsys.readouterr().out.splitlines() if "skipped model.plan" in line]
    assert len(skipped) == 1 and "needs tensorrt" in skipped[0] and "jlml-engine[trt]" in skipped[0]
    assert not (tmp_path / "a" / "model.fp16.onnx").exists()
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "b"), "--require-trt"]) == 2
    assert "jlml-engine[trt]" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_rerun_replaces_artefacts_and_removes_stale_ones(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.plan").write_bytes(b"old plan")
    (out / "model.plan.json").write_text("{}")
    for _ in range(2):
        assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", *ARGS]) == 0
    assert HAS_TRT or not (out / "model.plan").exists()
    assert ModelSpec.load(out).onnx_sha256 == file_sha256(out / "model.onnx")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_sample_images_of_another_size_are_resized(checkpoint, tmp_path):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (128, 48, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--sample-images", str(images), "--no-fp16"]) == 0
    parity = json.loads((out / "parity.json").read_text())
    assert parity["graphs"]["fp32"]["samples"] == 4
    assert parity["images"] == {"kind": "crops", "from": "--sample-images", "folder": str(images), "count": 4}


def test_parity_failure_exits_1_and_publishes_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    strict = build_engine.measure_parity
    monkeypatch.setattr(build_engine, "measure_parity",
                        lambda *a, **kw: strict(*a, **kw, thresholds={"fp32": 2.0, "fp16": 2.0}))
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify"]) == 1
    assert "parity below threshold" in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_checkpoint_exits_2(checkpoint, tmp_path, capsys):
    bad = tmp_path / "last.pt"
    bad.write_bytes(checkpoint.read_bytes()[:200])
    assert build_engine.main([str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_unwritable_output_exits_2(checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    assert build_engine.main([str(checkpoint), "--out", str(blocker / "out")]) == 2
    assert "cannot write output folder" in capsys.readouterr().err


def test_checkpoint_spec_of_another_input_size_exits_2(checkpoint, tmp_path, capsys):
    payload = torch.load(checkpoint, weights_only=True)
    payload["spec"]["height"] = 64
    wrong = tmp_path / "wrong.pt"
    torch.save(payload, wrong)
    assert build_engine.main([str(wrong), "--out", str(tmp_path / "out")]) == 2
    assert "height: 64 != 32" in capsys.readouterr().err


def test_a_diverged_checkpoint_is_refused_by_name_before_any_export(checkpoint, tmp_path, capsys):
    payload = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in payload["state_dict"].items() if v.is_floating_point())
    payload["state_dict"][name] = torch.full_like(payload["state_dict"][name], float("nan"))
    diverged = tmp_path / "diverged.pt"
    torch.save(payload, diverged)
    assert build_engine.main([str(diverged), "--out", str(tmp_path / "out")]) == 2  # simplification on
    err = capsys.readouterr().err
    assert f"checkpoint {diverged} holds NaN or infinite values in 1 tensor(s) ({name})" in err
    assert "onnxslim" not in err and not (tmp_path / "out").exists()


def test_a_checkpoint_of_a_newer_format_asks_for_newer_code(checkpoint, tmp_path, capsys):
    payload = torch.load(checkpoint, weights_only=True)
    payload["version"] = 99
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    assert build_engine.main([str(newer), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "has format version 99, newer than this code reads (1)" in err and "update this code" in err
    assert "retrain" not in err.replace("retraining is not needed", "")


def test_an_opset_out_of_range_is_one_line_with_the_range(checkpoint, tmp_path, capsys):
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "out"), "--opset", "99"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --opset 99 is not supported: this export writes opsets 17 to 20 (torch's TorchScript " \
                  "exporter stops at 20); pass --opset 17 to 20\n"


def test_bad_batch_range_exits_2(checkpoint, tmp_path, capsys):
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "o"), "--min-batch", "9",
                              "--opt-batch", "4"]) == 2
    assert "batch range" in capsys.readouterr().err


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_ort_backend_serves_the_folder(built, precision, tiny_model, random_images, torch_embed):
    pytest.importorskip("onnxruntime")
    from engine.backends.ort import OrtBackend

    images = random_images(5, ModelSpec.load(built), seed=11)
    with OrtBackend(built, precision=precision) as backend:
        got = backend(images)
    assert cosine_rows(torch_embed(tiny_model, images), got).min() >= (0.99999 if precision == "fp32" else 0.999)


# ---- with TensorRT (stand-ins): the plan runs through the engine before it is published -------------

@pytest.fixture
def with_tensorrt(monkeypatch):
    """Stand-in TensorRT 10 builder and pycuda; ``serve(backend_class)`` sets what Embedder's "trt" opens."""
    import sys
    import types

    from _trt_standin import make_pycuda, make_tensorrt

    import engine.backends.trt as trt_backend

    cuda = make_pycuda()
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.13.3.9"))
    monkeypatch.setitem(sys.modules, "pycuda", types.SimpleNamespace(driver=cuda))
    monkeypatch.setitem(sys.modules, "pycuda.driver", cuda)
    return lambda backend: monkeypatch.setattr(trt_backend, "TrtBackend", backend)


def test_tensorrt_without_pycuda_publishes_the_onnx_files_and_skips_the_plan(checkpoint, tmp_path, monkeypatch,
                                                                          capsys):
    """A TensorRT container without pycuda: the engine's real TrtBackend could not run the plan through
    the parity gate, so the plan is skipped with that reason (and --require-trt fails), never the build.
    The GPU is nameable (CUDA torch would name it), as it is in such a container."""
    import sys

    from _trt_standin import make_tensorrt

    from export import trt_build

    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.13.3.9"))
    monkeypatch.setitem(sys.modules, "pycuda", None)  # what `import pycuda.driver` meets without pycuda
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    monkeypatch.setattr(trt_build, "gpu_identity", lambda: trt_build.GpuIdentity("Fake GPU", "9.0", "12.8"))
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", *ARGS]) == 0
    assert (out / "model.onnx").is_file() and (out / "model.fp16.onnx").is_file()
    assert not (out / "model.plan").exists() and ModelSpec.load(out).plan_sha256 == ""
    [skipped] = [line for line in capsys.readouterr().out.splitlines() if "skipped model.plan" in line]
    assert "needs pycuda.driver" in skipped and "jlml-engine[trt]" in skipped
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "b"), "--require-trt"]) == 2
    assert "needs pycuda.driver" in capsys.readouterr().err and not (tmp_path / "b").exists()


def _plan_backend(wrong_rows: bool = False):
    """The engine's TensorRT backend as it would serve the staged plan: the graph of the plan's
    precision on ONNX Runtime (``wrong_rows``: a plan that returns its rows in the wrong order)."""
    from engine.backends.ort import OrtBackend
    from engine.backends.plan_sidecar import PlanSidecar
    from engine.backends.trt import import_runtime

    class PlanBackend(OrtBackend):
        name = "trt"
        opened: list = []

        def __init__(self, folder, spec=None, *, device="auto", precision=None):
            import_runtime()  # the real TrtBackend's first step: refuses a missing tensorrt or pycuda
            sidecar = PlanSidecar.load(folder / "model.plan.json")
            assert json.loads((folder / "model.plan").read_text())["strongly_typed"]
            PlanBackend.opened.append((sidecar.precision, precision))
            super().__init__(folder, spec, device="cpu", precision=sidecar.precision)

        def _run(self, batch):
            out = super()._run(batch)
            return out[::-1].copy() if wrong_rows else out
    return PlanBackend


def test_the_plan_is_measured_through_the_engine_and_recorded(checkpoint, tmp_path, with_tensorrt):
    backend = _plan_backend()
    with_tensorrt(backend)
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", *ARGS]) == 0
    assert backend.opened == [("fp16", "fp16")]
    plan = json.loads((out / "parity.json").read_text())["graphs"]["plan"]
    assert plan["passed"] and plan["min_cosine"] >= 0.999 and plan["threshold"] == 0.999
    config = (out / "triton" / "embed" / "configs" / "tensorrt.pbtxt").read_text()
    assert 'string_value: "10.13.3.9"' in config


def test_a_plan_that_fails_parity_is_not_published(checkpoint, tmp_path, with_tensorrt, capsys):
    with_tensorrt(_plan_backend(wrong_rows=True))
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", "--no-fp16", *ARGS]) == 1
    assert "plan: min cosine" in capsys.readouterr().err
    assert not out.exists()


def test_min_batch_above_1_leaves_the_plan_out_of_triton_and_says_so(checkpoint, tmp_path, with_tensorrt,
                                                                     capsys):
    with_tensorrt(_plan_backend())
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", "--min-batch", "2",
                              "--opt-batch", "8", "--max-batch", "64"]) == 0
    assert (out / "model.plan").is_file() and not (out / "triton" / "embed" / "configs" / "tensorrt.pbtxt").exists()
    assert "no tensorrt config for embed: the TensorRT profile starts at batch 2" in capsys.readouterr().out


# ---- publishing: the old artefact set or the new one, never a mix (issue 15 #2) -------------------------

def _consistent(out):
    """Every file of the folder is the one its spec.json fingerprints."""
    spec = ModelSpec.load(out)
    assert spec.onnx_sha256 == file_sha256(out / "model.onnx")
    fp16 = out / "model.fp16.onnx"
    assert spec.onnx_fp16_sha256 == (file_sha256(fp16) if fp16.exists() else "")
    plan = out / "model.plan"
    assert spec.plan_sha256 == (file_sha256(plan) if plan.exists() else "")
    return spec


def test_build_is_a_typed_call_returning_what_it_published(checkpoint, tmp_path):
    options = build_engine.BuildOptions(min_batch=1, opt_batch=8, max_batch=64, simplify=False)
    result = build_engine.build(checkpoint, tmp_path / "out", options)
    assert result.out == tmp_path / "out" and result.spec == _consistent(result.out)
    assert {"model.onnx", "model.fp16.onnx", "spec.json", "parity.json", "triton"} <= set(result.files)
    assert [r.graph for r in result.parity] == ["fp32", "fp16"] and all(r.passed for r in result.parity)
    assert HAS_TRT or "needs tensorrt" in result.plan_skipped


def test_a_build_killed_before_publishing_leaves_the_old_set_whole(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", *ARGS]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def killed(stage, target):
        raise KeyboardInterrupt  # the process dies after staging the new set, before the swap
    monkeypatch.setattr(build_engine, "publish", killed)
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", "--no-fp16", *ARGS]) == 130
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    _consistent(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging removed


def test_a_failed_swap_puts_the_old_set_back(checkpoint, tmp_path, monkeypatch):
    import os

    from export import publish as publish_module

    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", *ARGS]) == 0
    old_spec = (out / "spec.json").read_text()
    real_rename, calls = os.rename, []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # out moved aside, the new set cannot be moved in
            raise OSError(28, "No space left on device")
        real_rename(src, dst)
    monkeypatch.setattr(publish_module, "_exchange", lambda a, b: False)
    monkeypatch.setattr(publish_module.os, "rename", flaky)
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", "--no-fp16", *ARGS]) == 2
    assert (out / "spec.json").read_text() == old_spec and (out / "model.fp16.onnx").exists()
    _consistent(out)


def test_a_rebuild_replaces_the_whole_set(checkpoint, tmp_path):
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", *ARGS]) == 0
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", "--no-fp16", *ARGS]) == 0
    assert not (out / "model.fp16.onnx").exists() and _consistent(out).onnx_fp16_sha256 == ""


def test_stale_build_folders_of_killed_runs_are_removed_with_a_line(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    legacy = out / ".build-abc123"  # inside the folder, as builds before the swap left them
    dead = tmp_path / ".build-out-999999999-xyz"  # beside it, from a process that is gone
    live = tmp_path / f".build-out-{__import__('os').getppid()}-xyz"  # a running build: left alone
    for folder in (legacy, dead, live):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x" * 1000)
    assert build_engine.main([str(checkpoint), "--out", str(out), "--no-simplify", "--no-fp16", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert not legacy.exists() and not dead.exists() and live.exists()
    assert f"removed {legacy}, left by an earlier build that was killed" in printed and str(dead) in printed


def test_an_out_folder_holding_other_files_is_refused(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert build_engine.main([str(checkpoint), "--out", str(out)]) == 2
    assert "holds files that are not artefacts (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_the_published_folder_has_the_mode_the_umask_gives_a_new_folder(checkpoint, tmp_path):
    """Not mkdtemp's 0700: a Triton container or a service running as another user reads the folder."""
    import os
    import stat
    import subprocess
    import sys

    out = tmp_path / "out"
    build = ("import os, sys; os.umask(0o027); from export.build_engine import main; "
             "sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", build, str(checkpoint), "--out", str(out), "--no-fp16",
                           "--no-simplify"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes.pop(".") == 0o750
    assert modes and all(mode == (0o750 if (out / name).is_dir() else 0o640) for name, mode in modes.items()), modes


def test_parity_is_measured_on_the_training_crops_when_the_checkpoint_records_them(tiny_model, tmp_path, capsys):
    """Without --sample-images: crops spread over the recorded data folder; without one, random pixels,
    and parity.json and the log say which (it was random noise whatever the checkpoint knew)."""
    from PIL import Image

    from train.checkpoint import save_checkpoint

    crops = tmp_path / "data" / "bounding_box_train"
    crops.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(crops / f"{i:04d}_c1s1_{i:06d}_00.jpg")
    ckpt = save_checkpoint(tmp_path / "ck" / "last.pt", tiny_model, tiny_model.cfg, epoch=1, num_classes=5,
                           extra={"data_root": str(tmp_path / "data")})
    assert build_engine.main([str(ckpt), "--out", str(tmp_path / "a"), "--no-fp16", "--no-simplify"]) == 0
    images = json.loads((tmp_path / "a" / "parity.json").read_text())["images"]
    assert images == {"kind": "crops", "from": "the checkpoint's training data", "folder": str(tmp_path / "data"),
                      "count": 32}
    assert f"parity on 32 crops from {tmp_path / 'data'} (the checkpoint's training data)" in capsys.readouterr().out
    (tmp_path / "data").rename(tmp_path / "gone")
    assert build_engine.main([str(ckpt), "--out", str(tmp_path / "b"), "--no-fp16", "--no-simplify"]) == 0
    images = json.loads((tmp_path / "b" / "parity.json").read_text())["images"]
    assert images["kind"] == "random uint8" and f"data folder {tmp_path / 'data'} is not here" in images["from"]
