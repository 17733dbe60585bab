"""The exported triton/ repository parses as Triton's own ModelConfig protobuf and matches the spec."""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from engine.spec import ModelSpec

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")


def test_every_config_parses_as_model_config_with_the_spec(serve_artifact):
    spec = ModelSpec.load(serve_artifact)
    configs = sorted((serve_artifact / "triton").glob("*/config.pbtxt"))
    assert configs, "export wrote no triton/*/config.pbtxt"
    types = model_config_pb2.DataType
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())  # raises on any bad field
        assert config.name == path.parent.name
        assert config.max_batch_size == spec.max_batch
        (inp,), (out,) = config.input, config.output
        assert (inp.name, types.Name(inp.data_type), list(inp.dims)) == \
            (spec.input_name, "TYPE_UINT8", list(spec.image_shape))
        assert (out.name, types.Name(out.data_type), list(out.dims)) == \
            (spec.output_name, "TYPE_FP32", [spec.embedding_dim])
        assert config.HasField("dynamic_batching") and spec.max_batch in config.dynamic_batching.preferred_batch_size
        model_file = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}[config.platform]
        assert (path.parent / "1" / model_file).is_file()


def test_a_misspelt_field_is_caught_by_the_parser():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch: 4\n', model_config_pb2.ModelConfig())
