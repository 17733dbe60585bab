"""export.int8: a QDQ INT8 graph with FP32 I/O, FP32 pre/post-processing, a gate that refuses to publish."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from engine import Embedder
from engine.backends.torch_backend import TorchBackend
from engine.errors import InputError, ParityError, SpecMismatchError
from engine.parity import ParityResult
from engine.spec import ModelSpec, file_sha256
from export import build_engine, int8

ARGS = ["--min-batch", "1", "--opt-batch", "8", "--max-batch", "64", "--no-fp16"]


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


def test_int8_graph_is_qdq_with_fp32_ends(fp32_onnx, tiny_spec, random_images, tmp_path):
    out = int8.to_int8(fp32_onnx, tiny_spec, random_images(32, tiny_spec), tmp_path / "m.int8.onnx")
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    kept = set(int8.excluded_nodes(onnx.load(str(fp32_onnx))))
    produced_by = {o: n.op_type for n in proto.graph.node for o in n.output}
    ends = [n for n in proto.graph.node if n.name in kept]
    assert len(ends) == len(kept) > 0  # preprocessing and normalisation nodes survive by name...
    assert all(produced_by.get(i) != "DequantizeLinear" for n in ends for i in n.input)  # ...fed FP32
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_gate_refuses_low_cosine_or_rank1_drop() -> None:
    good = ParityResult("int8", 0.995, 0.1, 0.95, 5, int8.MIN_COSINE, 32)
    assert int8.Int8Gate(good, 0.9).passed
    assert int8.Int8Gate(good, 0.9, rank1_fp32=20.0, rank1_int8=19.5).passed
    for bad in (int8.Int8Gate(good, 0.9, rank1_fp32=20.0, rank1_int8=18.5),
                int8.Int8Gate(ParityResult("int8", 0.9, 0.1, 0.95, 5, int8.MIN_COSINE, 32), 0.9),
                int8.Int8Gate(ParityResult("int8", 0.995, 0.1, 0.5, 5, int8.MIN_COSINE, 32), 0.9)):
        with pytest.raises(ParityError, match="not published"):
            int8.check(bad)


def test_build_engine_int8_publishes_and_ort_serves_it(checkpoint, calib_dir, tmp_path, monkeypatch,
                                                      tiny_model, random_images, torch_embed) -> None:
    monkeypatch.setattr(int8, "viper_split", lambda spec, root: (None, "not in tests"))
    monkeypatch.setattr(int8, "MIN_COSINE", 0.9)  # an untrained tiny model on noise images
    monkeypatch.setattr(int8, "MIN_TOPK_AGREEMENT", 0.0)
    out = tmp_path / "art"
    assert build_engine.main([str(checkpoint), "--out", str(out), *ARGS, "--int8", "--calib-data",
                              str(calib_dir)]) == 0
    gate = json.loads((out / "int8_gate.json").read_text())
    assert gate["passed"] and gate["note"] == "not in tests" and gate["parity"]["samples"] == 32
    images = random_images(5, tiny_model.spec, seed=3)
    with Embedder(out, backend="ort", device="cpu", precision="int8") as embed:
        got = embed(images)
    assert embed.precision == "int8" and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)  # normalisation stayed FP32
    spec = ModelSpec.load(out)
    assert spec.onnx_int8_sha256 == file_sha256(out / "model.int8.onnx")  # fingerprinted like the others
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.copy(out / "model.onnx", copy / "model.int8.onnx")  # another graph under the INT8 name
    with pytest.raises(SpecMismatchError, match=r"model.int8.onnx has sha256 .* \(onnx_int8_sha256\)"):
        Embedder(copy, backend="ort", device="cpu", precision="int8")
    monkeypatch.setattr(int8, "MIN_COSINE", 0.99999999)
    assert build_engine.main([str(checkpoint), "--out", str(out), *ARGS, "--int8", "--calib-data",
                              str(calib_dir)]) == 1  # below the gate: nothing of this build published
    assert (out / "model.int8.onnx").exists()  # the earlier, gated artefact set stays


def test_int8_needs_calib_data_and_torch_refuses_int8(checkpoint, tmp_path, tiny_model, capsys) -> None:
    assert build_engine.main([str(checkpoint), "--out", str(tmp_path / "a"), *ARGS, "--int8"]) == 2
    assert "--int8 needs --calib-data" in capsys.readouterr().err
    with pytest.raises(InputError, match="served by the 'ort' backend"):
        TorchBackend(tiny_model, tiny_model.spec, device="cpu", precision="int8")
