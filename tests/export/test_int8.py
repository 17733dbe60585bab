"""export.int8: two QDQ INT8 graphs (CPU: saturation-free; TensorRT: zero points 0) with FP32 ends, a
gate that refuses to publish, and an artefact that is re-checked before it is served on another CPU."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from PIL import Image

from engine import Embedder, cpu
from engine.backends.ort import OrtBackend
from engine.backends.torch_backend import TorchBackend
from engine.errors import ArtifactError, InputError, ParityError, SpecMismatchError
from engine.parity import ParityResult
from engine.spec import ModelSpec, file_sha256
from export import build_engine, int8, int8_graph
from export.onnx_export import onnx_from_checkpoint
from train.model import JLML

ARGS = ["--min-batch", "1", "--opt-batch", "8", "--max-batch", "64", "--no-fp16"]
AVX2 = {"machine": "x86_64", "avx2": True, "avx512": False, "vnni": False, "known": True}


@pytest.fixture(scope="module")
def calib_dir(tmp_path_factory, tiny_spec):
    folder = tmp_path_factory.mktemp("calib") / "people"
    folder.mkdir()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (tiny_spec.height, tiny_spec.width, 3))
    for i in range(48):  # smooth-ish images around one base, like crops of one scene
        img = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:04d}.png")
    return folder


def _build(checkpoint, calib_dir, out, *extra: str) -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8, "viper_split", lambda spec, root: (None, "not in tests"))
        mp.setattr(int8, "MIN_COSINE", 0.9)  # an untrained tiny model on noise images
        mp.setattr(int8, "MIN_TOPK_AGREEMENT", 0.0)
        return build_engine.main([str(checkpoint), "--out", str(out), *ARGS, "--int8", "--calib-data",
                                  str(calib_dir), *extra])


@pytest.fixture(scope="module")
def int8_artifact(checkpoint, calib_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "art"
    assert _build(checkpoint, calib_dir, out) == 0
    return out


@pytest.mark.parametrize("scheme", int8_graph.SCHEMES, ids=lambda s: s.name)
def test_int8_graphs_are_qdq_with_fp32_ends(scheme, fp32_onnx, tiny_spec, random_images, tmp_path):
    out = int8_graph.to_int8(fp32_onnx, tiny_spec, random_images(32, tiny_spec), tmp_path / scheme.file, scheme)
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops and proto.ir_version == tiny_spec.ir_version
    kept = set(int8_graph.excluded_nodes(onnx.load(str(fp32_onnx))))
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    ends = [n for n in proto.graph.node if n.name in kept]
    assert len(ends) == len(kept) > 0  # preprocessing and normalisation nodes survive by name...
    assert all(produced_by.get(i) != "DequantizeLinear" for n in ends for i in n.input)  # ...fed FP32
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_tiled_pixel_constants_change_no_bit(fp32_onnx, tiny_spec, random_images, tmp_path) -> None:
    import onnxruntime as ort

    tiled = onnx.load(str(int8_graph.to_int8(fp32_onnx, tiny_spec, random_images(32, tiny_spec), tmp_path / "q.onnx")))
    def constants(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
        return [a.t for n in proto.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]

    assert [tuple(t.dims) for t in constants(tiled) if len(t.dims) == 4] == [(1, 3, 1, tiny_spec.width)] * 2
    narrow = onnx.ModelProto()
    narrow.CopyFrom(tiled)
    for t in constants(narrow):
        if len(t.dims) == 4:  # the scale and the shift back to (1, 3, 1, 1)
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[..., :1].copy(), t.name))
    images = {tiny_spec.input_name: random_images(8, tiny_spec, seed=5)}
    got, want = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, images)[0]
                 for m in (tiled, narrow))
    np.testing.assert_array_equal(got, want)


def _zero_points(proto: onnx.ModelProto) -> list[np.ndarray]:
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    return [inits[n.input[2]] for n in proto.graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2]


def test_tensorrt_graph_has_only_int8_zero_point_0_qdq(fp32_onnx, tiny_spec, random_images, tmp_path) -> None:
    calib = random_images(32, tiny_spec)
    trt = onnx.load(str(int8_graph.to_int8(fp32_onnx, tiny_spec, calib, tmp_path / "t.onnx", int8_graph.TENSORRT)))
    points = _zero_points(trt)
    assert len(points) > 20 and all(z.dtype == np.int8 and not z.any() for z in points)
    assert int8_graph.tensorrt_qdq_problems(trt) == []
    weights = list(int8_graph._weights(trt))
    assert weights and all(np.abs(w.astype(int)).max() > 64 for _, _, w in weights)  # full 8 bits for TensorRT
    # The CPU graph is not for TensorRT: its activations carry uint8 zero points.
    cpu_graph = onnx.load(str(int8_graph.to_int8(fp32_onnx, tiny_spec, calib, tmp_path / "c.onnx")))
    assert any("zero point uint8" in p for p in int8_graph.tensorrt_qdq_problems(cpu_graph))


def test_cpu_graph_cannot_saturate_without_vnni(fp32_onnx, tiny_spec, random_images, tmp_path) -> None:
    calib = random_images(32, tiny_spec)
    proto = onnx.load(str(int8_graph.to_int8(fp32_onnx, tiny_spec, calib, tmp_path / "c.onnx")))
    weights = list(int8_graph._weights(proto))
    assert len(weights) == sum(n.op_type in int8_graph.GEMM_OPS for n in proto.graph.node)  # every GEMM's
    worst = max(int(np.abs(w.astype(int)).max()) for _, _, w in weights)
    assert worst <= 64 and 2 * 255 * worst <= 32767  # the largest u8 x s8 pair sum fits vpmaddubsw's int16
    assert int8_graph.u8s8_overflow_problems(proto) == []
    # The old setting (8-bit weights, the graph that gave cosine 0.65 on AVX2) is refused.
    old = dataclasses.replace(int8_graph.CPU, reduce_range=False)
    with pytest.raises(ArtifactError, match=r"reaches \|q\| 127 > 64.*saturate without VNNI"):
        int8_graph.to_int8(fp32_onnx, tiny_spec, calib, tmp_path / "old.onnx", old)


def test_bnneck_flip_model_keeps_its_neck_fp32(tiny_model, tmp_path, random_images, caplog) -> None:
    torch.manual_seed(0)  # the few_hundred_ids recipe's head: BNNeck and in-graph flip averaging
    model = JLML(dataclasses.replace(tiny_model.cfg, bnneck=True, flip_test=True), num_classes=5).eval()
    spec = model.spec.replace(min_batch=1, opt_batch=8, max_batch=64)
    fp32 = onnx_from_checkpoint(model, spec, tmp_path / "model.onnx")
    with caplog.at_level(logging.WARNING):
        for scheme in int8_graph.SCHEMES:
            path = int8_graph.to_int8(fp32, spec, random_images(32, spec), tmp_path / scheme.file, scheme)
    assert not [r for r in caplog.records if "out-of-range" in r.getMessage()]
    proto = onnx.load(str(path))
    necks = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert len(necks) == 4  # two branches, image and mirror
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    assert all(produced_by.get(i) != "DequantizeLinear" for n in necks for i in n.input)


def test_gate_refuses_low_cosine_or_rank1_drop() -> None:
    good = ParityResult("int8", 0.995, 0.1, 0.95, 5, int8.MIN_COSINE, 32)
    assert int8.Int8Gate(good, 0.9).passed
    assert int8.Int8Gate(good, 0.9, rank1_fp32=20.0, rank1_int8=19.5).passed
    for bad in (int8.Int8Gate(good, 0.9, rank1_fp32=20.0, rank1_int8=18.5),
                int8.Int8Gate(ParityResult("int8", 0.9, 0.1, 0.95, 5, int8.MIN_COSINE, 32), 0.9),
                int8.Int8Gate(ParityResult("int8", 0.995, 0.1, 0.5, 5, int8.MIN_COSINE, 32), 0.9)):
        with pytest.raises(ParityError, match="not published"):
            int8.check({"int8": int8.Int8Gate(good, 0.9), "int8-trt": bad})


def test_build_engine_int8_publishes_and_ort_serves_it(int8_artifact, checkpoint, calib_dir, tmp_path,
                                                      tiny_model, random_images) -> None:
    out = int8_artifact
    gate = json.loads((out / "int8_gate.json").read_text())
    assert gate["int8"]["passed"] and gate["int8-trt"]["passed"] and gate["int8"]["note"] == "not in tests"
    assert gate["int8"]["parity"]["samples"] == 32 and gate["cpu"] == cpu.cpu_features()
    spec = ModelSpec.load(out)
    assert spec.int8_gate["cpu"]["int8_path"] == cpu.cpu_features()["int8_path"]  # where it was gated
    assert spec.onnx_int8_sha256 == file_sha256(out / "model.int8.onnx")  # fingerprinted like the others
    assert spec.onnx_int8_trt_sha256 == file_sha256(out / "model.int8.trt.onnx")
    assert spec.int8_parity_sha256 == file_sha256(out / "int8_parity.npz")
    with Embedder(out, backend="ort", device="cpu", precision="int8") as embed:
        got = embed(random_images(5, tiny_model.spec, seed=3))
    assert embed.precision == "int8" and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # normalisation stayed FP32
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.copy(out / "model.onnx", copy / "model.int8.onnx")  # another graph under the INT8 name
    with pytest.raises(SpecMismatchError, match=r"model.int8.onnx has sha256 .* \(onnx_int8_sha256\)"):
        Embedder(copy, backend="ort", device="cpu", precision="int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(int8, "MIN_COSINE", 0.99999999)
        assert build_engine.main([str(checkpoint), "--out", str(copy), *ARGS, "--int8", "--calib-data",
                                  str(calib_dir)]) == 1  # below the gate: nothing of this build published
    assert (copy / "int8_parity.npz").exists()  # the earlier artefact set stays


def test_int8_on_the_gated_cpu_path_serves_without_a_recheck(int8_artifact, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(OrtBackend, "_run", lambda self, batch: calls.append(len(batch)) or np.zeros(0))
    with OrtBackend(int8_artifact, device="cpu", precision="int8") as backend:
        assert backend.int8_recheck is None and calls == []


def test_int8_on_another_cpu_path_is_rechecked_before_serving(int8_artifact, monkeypatch, caplog) -> None:
    gated = ModelSpec.load(int8_artifact).int8_gate["cpu"]["int8_path"]
    here = {**AVX2, "vnni": gated == "x86-avx2"}  # a CPU whose 8-bit path is not the gated one
    here["int8_path"] = cpu.int8_path(here)
    monkeypatch.setattr(cpu, "cpu_features", lambda: here)
    with caplog.at_level(logging.INFO, logger="engine.int8_guard"):
        backend = OrtBackend(int8_artifact, device="cpu", precision="int8")
    backend.close()
    assert backend.int8_recheck["served_on"] == here["int8_path"] != backend.int8_recheck["gated_on"]
    assert backend.int8_recheck["min_cosine"] >= int8.MIN_COSINE * 0.9  # the build's (patched) gate passed
    assert "re-checked before serving" in caplog.text
    real_run = OrtBackend._run

    def saturating(self, batch):  # what a CPU that mangles the 8-bit sums would return
        out = real_run(self, batch)
        return out + np.random.default_rng(0).normal(0, 1, out.shape).astype(np.float32)

    monkeypatch.setattr(OrtBackend, "_run", saturating)
    with pytest.raises(ParityError, match=rf"gated on {gated}, this is {here['int8_path']}.*not served: re-gate"):
        Embedder(int8_artifact, backend="ort", device="cpu", precision="int8")


def test_int8_without_a_gate_record_is_not_served(int8_artifact, tmp_path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(int8_artifact, copy)
    ModelSpec.load(copy).replace(int8_gate={}).save(copy / "spec.json")
    with pytest.raises(ArtifactError, match="records no INT8 gate"):
        OrtBackend(copy, device="cpu", precision="int8")


def test_data_root_reaches_the_rank1_gate(checkpoint, calib_dir, tmp_path, monkeypatch) -> None:
    roots = []
    monkeypatch.setattr(int8, "viper_split", lambda spec, root: roots.append(root) or (None, "recorded"))
    monkeypatch.setattr(int8, "MIN_COSINE", 0.9)
    monkeypatch.setattr(int8, "MIN_TOPK_AGREEMENT", 0.0)
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "a"), *ARGS, "--int8", "--calib-data",
                              str(calib_dir), "--data-root", str(tmp_path / "viper-here")]) == 0
    assert roots == [tmp_path / "viper-here"]


def test_int8_needs_calib_data_and_torch_refuses_int8(checkpoint, tmp_path, tiny_model, capsys) -> None:
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "a"), *ARGS, "--int8"]) == 2
    assert "--int8 needs --calib-data" in capsys.readouterr().err
    with pytest.raises(InputError, match="served by the 'ort' backend"):
        TorchBackend(tiny_model, tiny_model.spec, device="cpu", precision="int8")


def test_a_calibration_folder_without_enough_images_is_named_before_any_export(checkpoint, calib_dir, tmp_path,
                                                                              capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    few = tmp_path / "few"
    shutil.copytree(calib_dir, few)
    for extra in sorted(few.iterdir())[int8.MIN_CALIB_FILES - 1:]:
        extra.unlink()
    for folder, count in ((empty, 0), (few, int8.MIN_CALIB_FILES - 1)):
        assert _build(checkpoint, folder, tmp_path / "out") == 2
        err = capsys.readouterr().err
        assert f"--calib-data {folder} holds {count} images" in err and "--sample-images" not in err
        assert "expected at least 34 (32 held out for the gate" in err and "wrote model.onnx" not in err
    assert not (tmp_path / "out").exists()


def test_int8_flags_without_int8_are_refused_not_ignored(checkpoint, calib_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert build_engine.main([str(checkpoint), "--out", str(out), *ARGS, "--calib-data", str(calib_dir)]) == 2
    assert "--calib-data only serve the INT8 graph, which this build does not write; pass --int8 too" \
        in capsys.readouterr().err
    assert build_engine.main([str(checkpoint), "--out", str(out), *ARGS, "--calib-data", str(calib_dir),
                              "--data-root", str(tmp_path)]) == 2
    assert "--calib-data and --data-root only serve the INT8 graph" in capsys.readouterr().err
    assert not out.exists()


def test_cpu_features_name_the_8bit_path() -> None:
    assert cpu.int8_path({**AVX2, "vnni": True}) == "x86-vnni"
    assert cpu.int8_path(AVX2) == "x86-avx2"
    assert cpu.int8_path({**AVX2, "avx512": True}) == "x86-avx512"
    assert cpu.int8_path({**AVX2, "known": False}) == "unknown"
    assert cpu.int8_path({"machine": "aarch64"}) == "arm64"
    assert cpu.cpu_features()["int8_path"] == cpu.int8_path(cpu.cpu_features())
