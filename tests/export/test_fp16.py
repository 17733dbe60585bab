"""FP16 graph: FP16 weights, uint8 in / FP32 out, runs on ONNX Runtime close to the FP32 model."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.errors import ArtifactError
from engine.parity import cosine_rows
from export.fp16 import check_fp16_graph
from export.onnx_export import serve_graph


def test_fp16_graph_has_fp32_io_and_fp16_weights(fp16_onnx, tiny_spec):
    proto = onnx.load(str(fp16_onnx))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weights = [t for t in proto.graph.initializer if len(t.dims) >= 2]
    assert weights and {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}
    assert proto.ir_version == tiny_spec.ir_version


def test_fp16_graph_runs_close_to_fp32_model(fp16_onnx, tiny_model, tiny_spec, random_images, torch_embed):
    images = random_images(7, tiny_spec, seed=1)
    got = serve_graph(fp16_onnx, tiny_spec, images)
    assert got.dtype == np.float32
    assert cosine_rows(torch_embed(tiny_model, images), got).min() >= 0.999


def test_fp16_export_leaves_reference_model_fp32(fp16_onnx, tiny_model):
    assert {p.dtype for p in tiny_model.parameters()} == {tiny_model.preprocess.scale.dtype}


def test_fp32_graph_is_not_accepted_as_fp16(fp32_onnx, tiny_spec):
    with pytest.raises(ArtifactError, match="not FP16"):
        check_fp16_graph(onnx.load(str(fp32_onnx)), tiny_spec)
