"""The two INT8 graphs of one model, and the checks that say which machines can take each.

ONNX Runtime on a CPU and TensorRT want different QDQ graphs, measured on the 4-epoch default model
(benchmarks/README.md, "INT8 embedding"):

* ``model.int8.onnx`` (CPU, ONNX Runtime): UINT8 activations with a zero point, so a ReLU folds into
  the quantiser's range and every Conv becomes one ``QLinearConv``; weights INT8 symmetric per
  channel on **7 bits** (|q| <= 64). x86 CPUs without VNNI sum pairs of u8 x s8 products in a
  saturating int16 (``vpmaddubsw``); 2 x 255 x 64 = 32,640 < 32,767, so no pair can saturate on any
  x86 CPU (``u8s8_overflow_problems`` proves it on the graph's own weights).
* ``model.int8.trt.onnx`` (TensorRT): INT8 activations and weights, symmetric, every zero point 0,
  weights 8-bit per output channel, biases FP32, as TensorRT's explicit quantisation takes them
  (``tensorrt_qdq_problems``). ONNX Runtime on a CPU cannot fuse this graph's Conv -> ReLU chains into
  integer kernels (31 of 48 convolutions stay FP32: 170 images/s against 548 for the CPU graph), so
  one graph cannot be both; TensorRT accumulates INT8 products in 32 bits, so 8-bit weights are safe.

Both keep the FP32 ends: the preprocessing before the first Conv, and everything after the last
GEMMs (BNNeck, flip averaging, concatenation, L2 normalisation), so the embedding is never 8-bit.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from engine.errors import ArtifactError
from engine.spec import ONNX_INT8_FILE, ONNX_INT8_TRT_FILE, ModelSpec

from .onnx_export import check_graph_io

GEMM_OPS = ("Conv", "Gemm", "MatMul")
CALIB_BATCH = 16
U8S8_PAIR_LIMIT = 32767 // (2 * 255)  # largest |weight| whose u8 x s8 pair sums fit an int16: 64
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Scheme:
    """One INT8 graph: file name, activation type, symmetry, 7-bit weights, and the check it must pass."""

    name: str
    file: str
    activations: str  # onnxruntime QuantType name
    symmetric: bool
    reduce_range: bool
    check: Callable[[onnx.ModelProto], list[str]]


def excluded_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes to keep FP32: those with no Conv/Gemm/MatMul upstream (preprocessing, flip)
    and those with none downstream (BNNeck, flip average, concat, normalisation after the last GEMMs)."""
    nodes = list(proto.graph.node)
    if not any(n.op_type in GEMM_OPS for n in nodes):
        raise ArtifactError("the FP32 graph has no Conv/Gemm/MatMul to quantise; export it again")
    produced = {o: i for i, n in enumerate(nodes) for o in n.output}
    up = [False] * len(nodes)  # graph order is topological
    for i, n in enumerate(nodes):
        up[i] = any(up[produced[t]] or nodes[produced[t]].op_type in GEMM_OPS for t in n.input if t in produced)
    down = [False] * len(nodes)
    for i in reversed(range(len(nodes))):
        for t in nodes[i].input:
            if t in produced:
                down[produced[t]] = down[produced[t]] or down[i] or nodes[i].op_type in GEMM_OPS
    return [n.name for i, n in enumerate(nodes) if n.op_type not in GEMM_OPS and not (up[i] and down[i])]


def _weights(proto: onnx.ModelProto) -> Iterable[tuple[onnx.NodeProto, onnx.NodeProto, np.ndarray]]:
    """(DequantizeLinear, consuming Conv/Gemm/MatMul, quantised weight) for every quantised weight."""
    inits = {t.name: t for t in proto.graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if i == 1:
                consumers.setdefault(name, []).append(node)
    for dq in proto.graph.node:
        if dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            for op in consumers.get(dq.output[0], []):
                if op.op_type in GEMM_OPS:
                    yield dq, op, numpy_helper.to_array(inits[dq.input[0]])


def u8s8_overflow_problems(proto: onnx.ModelProto) -> list[str]:
    """Weights that could saturate ``vpmaddubsw`` on an x86 CPU without VNNI (|q| > 64), one line each."""
    return [f"{dq.input[0]} (feeds {op.name}) reaches |q| {int(np.abs(w.astype(np.int32)).max())} > "
            f"{U8S8_PAIR_LIMIT}: a pair of u8 x s8 products can pass 32767 and saturate without VNNI"
            for dq, op, w in _weights(proto) if np.abs(w.astype(np.int32)).max() > U8S8_PAIR_LIMIT]


def _channel_axis(op: onnx.NodeProto) -> int:
    """The weight axis that holds the output channels of ``op`` (what per-channel scales must follow)."""
    if op.op_type == "Gemm":
        return 0 if any(a.name == "transB" and a.i for a in op.attribute) else 1
    return 1 if op.op_type == "MatMul" else 0


def tensorrt_qdq_problems(proto: onnx.ModelProto) -> list[str]:
    """What TensorRT's explicit quantisation would reject: integer ops other than Q/DQ, Q/DQ that is not
    INT8 with zero point 0, per-channel scales on activations or off a weight's output-channel axis."""
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    problems = [f"{n.name}: {n.op_type} (TensorRT takes QuantizeLinear/DequantizeLinear only)"
                for n in proto.graph.node if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")]
    weight_dqs = {dq.name: _channel_axis(op) for dq, op, _ in _weights(proto)}
    for node in proto.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        zero = inits.get(node.input[2]) if len(node.input) > 2 else None
        if zero is None or zero.dtype != np.int8 or np.any(zero != 0):
            got = "none" if zero is None else f"{zero.dtype} {np.unique(zero)[:3].tolist()}"
            problems.append(f"{node.name}: zero point {got}, TensorRT needs int8 zeros")
        scale = inits.get(node.input[1])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale is not None and scale.size > 1 and weight_dqs.get(node.name) != axis:
            problems.append(f"{node.name}: per-channel scale on axis {axis}, TensorRT takes per-channel "
                            "scales only on a weight's output-channel axis")
    return problems


CPU = Scheme("int8", ONNX_INT8_FILE, "QUInt8", symmetric=False, reduce_range=True, check=u8s8_overflow_problems)
TENSORRT = Scheme("int8-trt", ONNX_INT8_TRT_FILE, "QInt8", symmetric=True, reduce_range=False,
                  check=tensorrt_qdq_problems)
SCHEMES = (CPU, TENSORRT)


def tile_pixel_constants(proto: onnx.ModelProto, width: int) -> None:
    """Tile the preprocessing's per-channel (1, C, 1, 1) constants over the image width, in place.

    ONNX Runtime runs the INT8 graph NHWC: its layout optimiser moves the NCHW Transpose past the mean/std
    Mul and Add, whose (1, 1, 1, 3) constants are then broadcast 3 floats at a time (a fifth of the INT8
    graph's time at batch 64). Tiled to (1, C, 1, W) they broadcast W * 3 at a time: +20% images/s,
    the same values, the same bits out.
    """
    tensors = {t.name: t for t in proto.graph.initializer}  # initializers, and Constant nodes' values
    tensors.update({n.output[0]: a.t for n in proto.graph.node if n.op_type == "Constant"
                    for a in n.attribute if a.name == "value"})
    preprocessing = set(excluded_nodes(proto))
    for node in proto.graph.node:
        if node.op_type not in ("Mul", "Add", "Sub", "Div") or node.name not in preprocessing:
            continue
        for name in node.input:
            value = numpy_helper.to_array(tensors[name]) if name in tensors else None
            if value is not None and value.ndim == 4 and value.shape[0] == value.shape[2] == value.shape[3] == 1:
                tiled = np.ascontiguousarray(np.broadcast_to(value, (*value.shape[:3], width)))
                tensors[name].CopyFrom(numpy_helper.from_array(tiled, tensors[name].name))


def to_int8(fp32_path: str | os.PathLike[str], spec: ModelSpec, calib: np.ndarray,
            path: str | os.PathLike[str], scheme: Scheme = CPU) -> Path:
    """Write ``scheme``'s QDQ INT8 graph of ``fp32_path``, calibrated (MinMax) on ``calib`` (uint8 NHWC),
    to ``path``; ArtifactError if it fails the scheme's check."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(np.array_split(calib, max(1, len(calib) // CALIB_BATCH)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {spec.input_name: np.ascontiguousarray(batch)}

    quantize_static(str(fp32_path), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType[scheme.activations], weight_type=QuantType.QInt8,
                    per_channel=True, reduce_range=scheme.reduce_range,
                    nodes_to_exclude=excluded_nodes(onnx.load(str(fp32_path))),
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"],
                                   "ActivationSymmetric": scheme.symmetric, "WeightSymmetric": True,
                                   "QuantizeBias": not scheme.symmetric})
    proto = onnx.load(str(path))
    tile_pixel_constants(proto, spec.width)
    proto.ir_version = spec.ir_version  # ONNX Runtime loads IR <= 13; keep the spec's, as the FP32 graph
    onnx.save(proto, str(path))
    check_graph_io(proto, spec, what=f"INT8 ONNX graph {Path(path).name}")
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise ArtifactError(f"{path} has no QuantizeLinear node; the INT8 quantisation did not apply")
    problems = scheme.check(proto)
    if problems:
        raise ArtifactError(f"{Path(path).name} ({scheme.name}) fails its check, {len(problems)} problems: "
                            + "; ".join(problems[:3]) + "; this quantisation setting is not safe, report it")
    return Path(path)
