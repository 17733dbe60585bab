"""Triton repository: every config parses as Triton's ModelConfig with the spec's names, dims and dtypes;
model files are copies; the plan joins only with its TensorRT version and a profile from batch 1."""
from __future__ import annotations

import pytest

from engine.client import ADD_MODEL, EMBED_MODEL, SEARCH_MODEL
from engine.errors import InputError
from export.triton import TENSORRT_CONFIG, write_triton_repo

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def _parse(path):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _io(config):
    types = model_config_pb2.DataType
    return ({t.name: (types.Name(t.data_type), list(t.dims), t.optional) for t in config.input},
            {t.name: (types.Name(t.data_type), list(t.dims)) for t in config.output})


@pytest.fixture
def files(tmp_path):
    onnx_file, plan_file = tmp_path / "m.onnx", tmp_path / "m.plan"
    onnx_file.write_bytes(b"onnx bytes")
    plan_file.write_bytes(b"plan bytes")
    return onnx_file, plan_file


def test_embed_is_one_model_with_an_onnx_runtime_a_python_and_a_tensorrt_config(tmp_path, tiny_spec, files):
    onnx_file, plan_file = files
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=onnx_file, plan_path=plan_file,
                             tensorrt_version="10.13.3.9")
    embed = root / EMBED_MODEL
    variants = {"config.pbtxt": ("onnxruntime", ""), "configs/engine.pbtxt": ("python", ""),
                f"configs/{TENSORRT_CONFIG}.pbtxt": ("", "tensorrt_plan")}
    for name, (backend, platform) in variants.items():
        config = _parse(embed / name)
        assert (config.name, config.backend, config.platform) == (EMBED_MODEL, backend, platform)
        assert config.max_batch_size == tiny_spec.max_batch
        inputs, outputs = _io(config)
        assert inputs == {tiny_spec.input_name: ("TYPE_UINT8", list(tiny_spec.image_shape), False)}
        assert outputs == {tiny_spec.output_name: ("TYPE_FP32", [tiny_spec.embedding_dim])}
        assert list(config.dynamic_batching.preferred_batch_size) == [tiny_spec.opt_batch, tiny_spec.max_batch]
        (warmup,) = config.model_warmup  # Triton marks the model ready only after it answered this
        assert warmup.batch_size == 1 and warmup.inputs[tiny_spec.input_name].zero_data
    for file_name, source in (("model.onnx", onnx_file), ("model.plan", plan_file)):
        copied = embed / "1" / file_name
        assert not copied.is_symlink() and copied.read_bytes() == source.read_bytes()
    assert _parse(embed / f"configs/{TENSORRT_CONFIG}.pbtxt").default_model_filename == "model.plan"


def test_search_and_gallery_add_are_unbatched_python_models(tmp_path, tiny_spec, files):
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=files[0])
    image = list(tiny_spec.image_shape)
    search, add = _parse(root / SEARCH_MODEL / "config.pbtxt"), _parse(root / ADD_MODEL / "config.pbtxt")
    assert (search.backend, search.max_batch_size, add.backend, add.max_batch_size) == ("python", 0, "python", 0)
    assert _io(search) == ({"images": ("TYPE_UINT8", [-1, *image], True),
                            "embeddings": ("TYPE_FP32", [-1, tiny_spec.embedding_dim], True),
                            "k": ("TYPE_INT32", [1], False)},
                           {"distances": ("TYPE_FP32", [-1, -1]), "ids": ("TYPE_INT64", [-1, -1])})
    assert _io(add) == ({"images": ("TYPE_UINT8", [-1, *image], False), "ids": ("TYPE_INT64", [-1], False),
                         "cams": ("TYPE_INT64", [-1], True)}, {"count": ("TYPE_INT64", [1])})
    for name in (EMBED_MODEL, SEARCH_MODEL, ADD_MODEL):
        source = (root / name / "1" / "model.py").read_text()
        compile(source, name, "exec")
        assert "from serve.triton_models import" in source and "as TritonPythonModel" in source


def test_without_a_plan_there_is_no_tensorrt_config(tmp_path, tiny_spec, files):
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=files[0])
    assert sorted(p.name for p in root.iterdir()) == sorted(["README.md", ADD_MODEL, EMBED_MODEL, SEARCH_MODEL])
    assert sorted(p.name for p in (root / EMBED_MODEL / "configs").iterdir()) == ["engine.pbtxt"]
    assert not (root / EMBED_MODEL / "1" / "model.plan").exists()
    assert f"No `configs/{TENSORRT_CONFIG}.pbtxt`" in (root / "README.md").read_text()


def test_the_plan_config_records_the_tensorrt_version_that_built_it(tmp_path, tiny_spec, files):
    """A Triton container loads only plans of its own TensorRT version: the repository says which."""
    onnx_file, plan_file = files
    root = write_triton_repo(tmp_path / "triton", tiny_spec, onnx_path=onnx_file, plan_path=plan_file,
                             tensorrt_version="10.13.3.9")
    config = _parse(root / EMBED_MODEL / "configs" / f"{TENSORRT_CONFIG}.pbtxt")
    assert config.parameters["tensorrt_version"].string_value == "10.13.3.9"
    assert "TensorRT 10.13.3.9" in (root / "README.md").read_text()
    assert not _parse(root / EMBED_MODEL / "config.pbtxt").parameters
    with pytest.raises(InputError, match="tensorrt_version"):
        write_triton_repo(tmp_path / "t2", tiny_spec, onnx_path=onnx_file, plan_path=plan_file)


def test_a_plan_whose_profile_starts_above_1_is_refused_for_triton(tmp_path, tiny_spec, files):
    """Triton sends any batch from 1 up; the plan would reject the ones below its profile minimum."""
    with pytest.raises(InputError, match="profile starts at batch 4.*rebuild with --min-batch 1"):
        write_triton_repo(tmp_path / "triton", tiny_spec.replace(min_batch=4), onnx_path=files[0],
                          plan_path=files[1], tensorrt_version="10.13.3.9")
    assert not (tmp_path / "triton").exists()
