"""FP16 ONNX graph: FP16 weights and compute, uint8 input and FP32 unit-vector output.

Measured in this project: neither onnxconverter_common.float16 nor onnxruntime.transformers.float16
turned a torch.onnx.export graph into a clean FP16 graph, while exporting ``model.half()`` did (the
model casts to FP16 after its uint8 preprocessing and normalises in FP32), and that graph passes the
full onnx.checker and runs on ONNX Runtime CPU. So FP16 is an export of the half model, then verified.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from engine.errors import ArtifactError
from engine.spec import ModelSpec

from .onnx_export import check_graph_io, onnx_from_checkpoint

if TYPE_CHECKING:
    import torch

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


def to_fp16(
    model: torch.nn.Module, spec: ModelSpec, path: str | os.PathLike[str], *, opset: int | None = None,
) -> Path:
    """Export a half-precision copy of ``model`` to ``path`` and verify it is a real FP16 graph.

    The caller's model is left in FP32: it stays the reference the parity check compares against.
    """
    half = copy.deepcopy(model).half().eval()
    out = onnx_from_checkpoint(half, spec, path, opset=opset)
    check_fp16_graph(onnx.load(str(out)), spec)
    return out


def check_fp16_graph(proto: onnx.ModelProto, spec: ModelSpec) -> None:
    """Raise ArtifactError unless I/O is uint8/FP32 and every weight matrix (rank >= 2) is FP16.

    Rank-1 FP32 initializers are allowed: they are the mean/std and similar constants the model keeps
    in FP32 on purpose around its uint8 cast and final normalisation.
    """
    check_graph_io(proto, spec, what="FP16 ONNX graph")
    weights = [t for t in proto.graph.initializer if t.data_type in _FLOAT_TYPES and len(t.dims) >= 2]
    not_half = [f"{t.name} ({onnx.helper.tensor_dtype_to_np_dtype(t.data_type)})" for t in weights
                if t.data_type != onnx.TensorProto.FLOAT16]
    if not weights or not_half:
        raise ArtifactError(
            f"FP16 graph is not FP16: {len(weights)} weight tensors, not FP16: {not_half[:5] or 'none'}"
            "; the model must follow .half() (keep only preprocessing and the final normalisation in "
            "FP32), or build with --no-fp16"
        )
