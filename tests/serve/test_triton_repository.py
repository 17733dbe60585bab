"""The exported triton/ repository: every config (default and variants) parses as Triton's own
ModelConfig protobuf, names its folder's model and has the files its backend loads."""
from __future__ import annotations

import pytest
from google.protobuf import text_format

from engine.client import MODELS
from engine.spec import ModelSpec

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
MODEL_FILES = {"onnxruntime": "model.onnx", "python": "model.py"}


def test_every_config_parses_as_model_config_with_the_spec(serve_artifact):
    spec = ModelSpec.load(serve_artifact)
    root = serve_artifact / "triton"
    configs = sorted([*root.glob("*/config.pbtxt"), *root.glob("*/configs/*.pbtxt")])
    assert {p.relative_to(root).as_posix() for p in configs} == {
        "embed/config.pbtxt", "embed/configs/engine.pbtxt", "search/config.pbtxt", "gallery_add/config.pbtxt"}
    for path in configs:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())  # raises on any bad field
        model_dir = path.parent if path.name == "config.pbtxt" else path.parent.parent
        assert config.name == model_dir.name and config.name in MODELS
        assert config.max_batch_size == (spec.max_batch if config.name == "embed" else 0)
        assert (model_dir / "1" / MODEL_FILES[config.backend]).is_file()


def test_a_misspelt_field_is_caught_by_the_parser():
    with pytest.raises(text_format.ParseError):
        text_format.Parse('name: "x"\nmax_batch: 4\n', model_config_pb2.ModelConfig())
