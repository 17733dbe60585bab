"""Triton repository: configs parse as text with the spec's names, dims and dtypes; files are copies."""
from __future__ import annotations

import re

from export.triton import ONNX_MODEL, TRT_MODEL, write_triton_repo


def _blocks(text: str, key: str) -> list[str]:
    return re.findall(key + r"\s*\[\s*\{(.*?)\}\s*\]", text, re.S)


def _field(text: str, name: str) -> str:
    match = re.search(rf"^\s*{name}:\s*(.+)$", text, re.M)
    assert match, f"{name} missing in\n{text}"
    return match.group(1).strip().strip('"')


def test_onnx_and_plan_models_are_written(tmp_path, tiny_spec):
    onnx_file, plan_file = tmp_path / "m.onnx", tmp_path / "m.plan"
    onnx_file.write_bytes(b"onnx bytes")
    plan_file.write_bytes(b"plan bytes")
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=onnx_file, plan_path=plan_file)
    for model, platform, file_name, source in [(ONNX_MODEL, "onnxruntime_onnx", "model.onnx", onnx_file),
                                                (TRT_MODEL, "tensorrt_plan", "model.plan", plan_file)]:
        text = (root / model / "config.pbtxt").read_text()
        assert _field(text, "name") == model and _field(text, "platform") == platform
        assert int(_field(text, "max_batch_size")) == tiny_spec.max_batch
        (inp,), (out,) = _blocks(text, "input"), _blocks(text, "output")
        assert _field(inp, "name") == tiny_spec.input_name and _field(inp, "data_type") == "TYPE_UINT8"
        assert _field(inp, "dims") == f"[ {tiny_spec.height}, {tiny_spec.width}, 3 ]"
        assert _field(out, "name") == tiny_spec.output_name and _field(out, "data_type") == "TYPE_FP32"
        assert _field(out, "dims") == f"[ {tiny_spec.embedding_dim} ]"
        assert _field(text, "preferred_batch_size") == f"[ {tiny_spec.opt_batch}, {tiny_spec.max_batch} ]"
        copied = root / model / "1" / file_name
        assert not copied.is_symlink() and copied.read_bytes() == source.read_bytes()


def test_without_a_plan_only_the_onnx_model_is_written(tmp_path, tiny_spec):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=onnx_file)
    assert sorted(p.name for p in root.iterdir()) == [ONNX_MODEL]
