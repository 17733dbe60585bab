"""A minimal ONNX Runtime CPU runner for export-time checks (simplification, parity).

The engine's ORT backend serves models; this helper only has to run a graph once on a sample batch,
so it stays tiny and has no batching, IO binding or device logic.
"""
from __future__ import annotations

import os

import numpy as np
import onnx

from engine.errors import BackendUnavailableError


def ort_embed(model: onnx.ModelProto | str | os.PathLike[str], images: np.ndarray) -> np.ndarray:
    """Run a one-input, one-output ONNX graph (a proto or a file) on ``images`` with ONNX Runtime CPU."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise BackendUnavailableError(
            "onnxruntime is needed to verify exported graphs; pip install 'jlml-engine[ort]'"
        ) from exc
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers on every load
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: np.ascontiguousarray(images)})[0])
