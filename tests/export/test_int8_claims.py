"""export/int8.py claims only what its graph backs: asymmetric UINT8 activations are not a TensorRT graph."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

pytest.importorskip("onnxruntime.quantization")

from export import int8  # noqa: E402


def test_the_int8_docstring_does_not_say_tensorrt_consumes_a_graph_it_rejects(fp32_onnx, tiny_spec, random_images,
                                                                              tmp_path):
    """TensorRT's ONNX parser refuses QuantizeLinear with a non-zero zero point ("non-zero zero point is not
    supported"); while the graph has such activations, the module must say ONNX Runtime serves it, not TensorRT."""
    path = int8.to_int8(fp32_onnx, tiny_spec, random_images(32, tiny_spec), tmp_path / "m.int8.onnx")
    graph = onnx.load(str(path)).graph
    zero_points = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    asymmetric = [n.name for n in graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
                  and n.input[2] in zero_points and np.any(zero_points[n.input[2]] != 0)]
    doc = " ".join((int8.__doc__ or "").split())
    if asymmetric:
        assert "served by ONNX Runtime only" in doc and "TensorRT's ONNX parser rejects" in doc
        assert "TensorRT 10+/11 consumes" not in doc
