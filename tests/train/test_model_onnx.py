"""The model exports to ONNX (opset 17, dynamic batch) and onnxruntime reproduces torch."""
import numpy as np
import pytest
import torch

from train.model import JLML

ort = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("changes", [dict(), dict(branches="local", shared_layers=False)])
def test_onnx_round_trip_dynamic_batch(tmp_path, tiny_cfg, changes):
    torch.manual_seed(0)
    model = JLML(tiny_cfg.replace(**changes), 4).eval()
    spec = model.spec
    path = tmp_path / "model.onnx"
    dummy = torch.zeros(2, spec.height, spec.width, 3, dtype=torch.uint8)
    torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=17,
                      input_names=[spec.input_name], output_names=[spec.output_name],
                      dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for n in (1, 5):
        images = rng.integers(0, 256, (n, spec.height, spec.width, 3), dtype=np.uint8)
        (got,) = session.run(None, {spec.input_name: images})
        with torch.no_grad():
            ref = model(torch.from_numpy(images)).numpy()
        assert got.dtype == np.float32 and got.shape == (n, spec.embedding_dim)
        cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() >= 0.99999
