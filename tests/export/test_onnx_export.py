"""FP32 export: dynamic batch, versions as asked, I/O checked against the spec, simplification verified."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from engine.errors import ArtifactError, InputError, SpecMismatchError
from engine.parity import cosine_rows
from export.onnx_export import (
    check_and_simplify,
    check_graph_io,
    check_input_cast_first,
    onnx_from_checkpoint,
    serve_graph,
)


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_one_graph_serves_batches_1_7_64(fp32_onnx, tiny_model, tiny_spec, batch, random_images, torch_embed):
    images = random_images(batch, tiny_spec, seed=batch)
    got = serve_graph(fp32_onnx, tiny_spec, images)
    assert got.shape == (batch, tiny_spec.embedding_dim) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert cosine_rows(torch_embed(tiny_model, images), got).min() >= 0.99999


def test_versions_default_to_the_spec_and_follow_arguments(fp32_onnx, tiny_model, tiny_spec, tmp_path):
    default = onnx.load(str(fp32_onnx))
    assert default.ir_version == tiny_spec.ir_version
    assert [o.version for o in default.opset_import if o.domain in ("", "ai.onnx")] == [tiny_spec.opset]
    other = onnx.load(str(onnx_from_checkpoint(tiny_model, tiny_spec, tmp_path / "m.onnx", opset=18, ir_version=9)))
    assert other.ir_version == 9
    assert [o.version for o in other.opset_import if o.domain in ("", "ai.onnx")] == [18]
    onnx.checker.check_model(other, full_check=True)


@pytest.mark.parametrize(("opset", "ir"), [(16, 10), (17, 14), (17, 7), (99, 10)])
def test_versions_runtimes_cannot_load_are_refused(tiny_model, tiny_spec, tmp_path, opset, ir):
    with pytest.raises(InputError, match="IR version|opset .* is not supported: this export writes opsets 17 to 20"):
        onnx_from_checkpoint(tiny_model, tiny_spec, tmp_path / "m.onnx", opset=opset, ir_version=ir)
    assert list(tmp_path.iterdir()) == []


def test_graph_io_matches_spec_and_wrong_size_is_named(fp32_onnx, tiny_spec):
    proto = onnx.load(str(fp32_onnx))
    check_graph_io(proto, tiny_spec)
    with pytest.raises(SpecMismatchError, match=r"'images' is uint8 \('batch', 32, 16, 3\), expected uint8 \('batch', 64, 16, 3\)"):
        check_graph_io(proto, tiny_spec.replace(height=64))
    with pytest.raises(SpecMismatchError, match="'embeddings'"):
        check_graph_io(proto, tiny_spec.replace(embedding_dim=8))


def test_simplification_is_verified_and_keeps_outputs(fp32_onnx, tiny_spec, tmp_path, random_images):
    pytest.importorskip("onnxslim")
    path = tmp_path / "model.onnx"
    path.write_bytes(fp32_onnx.read_bytes())
    images = random_images(5, tiny_spec, seed=3)
    before = serve_graph(path, tiny_spec, images)
    report = check_and_simplify(path, tiny_spec, samples=images)
    assert report.simplified and report.nodes_after <= report.nodes_before
    assert report.max_abs_diff <= 1e-5
    simplified = onnx.load(str(path))
    assert simplified.ir_version == tiny_spec.ir_version
    np.testing.assert_allclose(serve_graph(path, tiny_spec, images), before, atol=1e-5)


def test_no_simplify_leaves_file_untouched(fp32_onnx, tiny_spec, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(fp32_onnx.read_bytes())
    report = check_and_simplify(path, tiny_spec, simplify=False)
    assert not report.simplified and path.read_bytes() == fp32_onnx.read_bytes()


@pytest.mark.parametrize("graph", ["fp32_onnx", "fp16_onnx"])
def test_product_graphs_cast_the_uint8_input_first(request, graph, tiny_spec):
    """TensorRT's parser refuses UINT8 intermediates, so every reader of the pixels must be a Cast.
    (The engine tests' tiny model is checked the same way in tests/engine/test_backends.py.)"""
    proto = onnx.load(str(request.getfixturevalue(graph)))
    readers = [n.op_type for n in proto.graph.node if tiny_spec.input_name in n.input]
    assert readers and set(readers) == {"Cast"}, readers
    check_input_cast_first(proto, tiny_spec)


def test_a_graph_that_permutes_uint8_pixels_is_refused(fp32_onnx, tiny_spec):
    proto = onnx.load(str(fp32_onnx))
    cast = next(n for n in proto.graph.node if tiny_spec.input_name in n.input)
    transpose = onnx.helper.make_node("Transpose", [tiny_spec.input_name], ["pixels_nchw"], name="early",
                                      perm=[0, 3, 1, 2])
    cast.input[list(cast.input).index(tiny_spec.input_name)] = "pixels_nchw"
    proto.graph.node.insert(0, transpose)
    with pytest.raises(ArtifactError, match=r"read by \[\"Transpose 'early'\"\], expected only Cast"):
        check_input_cast_first(proto, tiny_spec)
