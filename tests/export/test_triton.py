"""Triton repository: configs parse as text with the spec's names, dims and dtypes; files are copies."""
from __future__ import annotations

import re

import pytest

from engine.errors import InputError
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
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=onnx_file, plan_path=plan_file,
                             tensorrt_version="10.13.3.9")
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
    assert sorted(p.name for p in root.iterdir()) == ["README.md", ONNX_MODEL]
    assert f"no `{TRT_MODEL}`" in (root / "README.md").read_text()


def test_the_plan_model_records_the_tensorrt_version_that_built_it(tmp_path, tiny_spec):
    """A Triton container loads only plans of its own TensorRT version: the repository says which."""
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "m.plan").write_bytes(b"p")
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=tmp_path / "m.onnx",
                             plan_path=tmp_path / "m.plan", tensorrt_version="10.13.3.9")
    config = (root / TRT_MODEL / "config.pbtxt").read_text()
    assert re.search(r'parameters \{\s*key: "tensorrt_version"\s*value: \{ string_value: "10.13.3.9" \}', config)
    assert "TensorRT 10.13.3.9" in (root / "README.md").read_text()
    assert "tensorrt_version" not in (root / ONNX_MODEL / "config.pbtxt").read_text()
    with pytest.raises(InputError, match="tensorrt_version"):
        write_triton_repo(tmp_path / "t2", tiny_spec, onnx_path=tmp_path / "m.onnx", plan_path=tmp_path / "m.plan")


def test_a_plan_whose_profile_starts_above_1_is_refused_for_triton(tmp_path, tiny_spec):
    """Triton sends any batch from 1 up; the plan would reject the ones below its profile minimum."""
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "m.plan").write_bytes(b"p")
    with pytest.raises(InputError, match="profile starts at batch 4.*rebuild with --min-batch 1"):
        write_triton_repo(tmp_path / "triton", tiny_spec.replace(min_batch=4), onnx_path=tmp_path / "m.onnx",
                          plan_path=tmp_path / "m.plan", tensorrt_version="10.13.3.9")
    assert not (tmp_path / "triton" / TRT_MODEL).exists()
