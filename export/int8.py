"""INT8 ONNX graph: static quantisation with explicit QuantizeLinear/DequantizeLinear (QDQ) pairs.

``python -m export.build_engine CKPT --out DIR --int8 --calib-data IMAGES`` adds ``model.int8.onnx``:
ONNX Runtime's ``quantize_static`` in QDQ format, served by ONNX Runtime only (its activations are
asymmetric UINT8 with non-zero zero points, which TensorRT's ONNX parser rejects), calibrated on real
person crops, weights INT8 per channel, activations UINT8. Input (uint8 pixels) and output (FP32 unit vectors) are unchanged, and the preprocessing
(cast, mean/std, layout) before the first convolution and the final L2 normalisation after the last
GEMM stay FP32: those nodes are excluded from quantisation by name, and the embedding GEMMs' outputs
are not quantised (8 bits on the embedding itself would cost cosine for no speed).

The graph is published only if it passes the gate: the parity figures of FP16 (min per-row cosine
and tie-aware top-k agreement against PyTorch FP32, thresholds below) and, where VIPeR is present
under the data root, Rank-1 within RANK1_MAX_DROP points of the FP32 model on its test split.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from engine.atomic import write_text
from engine.embedder import Embedder
from engine.errors import ArtifactError, InputError, ParityError
from engine.parity import ParityResult
from engine.spec import ONNX_INT8_FILE, SPEC_FILE, ModelSpec, file_sha256

from .onnx_export import check_graph_io
from .parity import measure_parity, reference_embeddings, sample_images

if TYPE_CHECKING:
    import torch

GATE_FILE = "int8_gate.json"
FILES = (ONNX_INT8_FILE, GATE_FILE)
MIN_COSINE = 0.98  # per-row cosine to PyTorch FP32 (FP16 needs 0.999; INT8 rounds every activation)
MIN_TOPK_AGREEMENT = 0.9  # tie-aware top-5 agreement inside the parity batch
RANK1_MAX_DROP = 1.0  # Rank-1 points below the FP32 model on a VIPeR split
CALIB_IMAGES = 256
CALIB_BATCH = 16
PARITY_IMAGES = 32
GEMM_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class Int8Gate:
    """The figures the INT8 graph is published on."""

    parity: ParityResult
    min_topk_agreement: float
    rank1_fp32: float | None = None
    rank1_int8: float | None = None
    note: str = ""

    @property
    def passed(self) -> bool:
        rank_ok = self.rank1_fp32 is None or self.rank1_int8 is not None and \
            self.rank1_fp32 - self.rank1_int8 <= RANK1_MAX_DROP
        return self.parity.passed and self.parity.topk_agreement >= self.min_topk_agreement and rank_ok

    def line(self) -> str:
        rank = (f", Rank-1 {self.rank1_int8:.2f} vs FP32 {self.rank1_fp32:.2f} (max drop {RANK1_MAX_DROP})"
                if self.rank1_fp32 is not None else f", Rank-1 not measured ({self.note})")
        return f"{self.parity.line()} (top-k >= {self.min_topk_agreement}){rank}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def excluded_nodes(proto: onnx.ModelProto) -> list[str]:
    """Names of the nodes before the first and after the last Conv/Gemm/MatMul (graph order is
    topological): the FP32 preprocessing and the final normalisation."""
    nodes = list(proto.graph.node)
    heavy = [i for i, n in enumerate(nodes) if n.op_type in GEMM_OPS]
    if not heavy:
        raise ArtifactError("the FP32 graph has no Conv/Gemm/MatMul to quantise; export it again")
    return [n.name for i, n in enumerate(nodes) if i < heavy[0] or i > heavy[-1]]


def check_calib_data(folder: str | os.PathLike[str] | None) -> Path:
    """``folder`` if it is a folder to calibrate on, else InputError (checked before any export work)."""
    if folder is None:
        raise InputError("--int8 needs --calib-data DIR, a folder of real person crops to calibrate on")
    if not Path(folder).is_dir():
        raise InputError(f"--calib-data {folder} is not a folder; pass a folder of person crops (e.g. VIPeR)")
    return Path(folder)


def to_int8(fp32_path: str | os.PathLike[str], spec: ModelSpec, calib: np.ndarray,
            path: str | os.PathLike[str]) -> Path:
    """Write the QDQ INT8 graph of ``fp32_path`` calibrated on ``calib`` (uint8 NHWC) to ``path``."""
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
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    nodes_to_exclude=excluded_nodes(onnx.load(str(fp32_path))),
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm", "MatMul"]})
    proto = onnx.load(str(path))
    check_graph_io(proto, spec, what="INT8 ONNX graph")
    if not any(n.op_type == "QuantizeLinear" for n in proto.graph.node):
        raise ArtifactError(f"{path} has no QuantizeLinear node; the INT8 quantisation did not apply")
    return Path(path)


def rank1(embed: Callable[[np.ndarray], np.ndarray], data: Any) -> float:
    """Rank-1 in percent (engine.metrics gives fractions) of ``embed(images) -> unit vectors`` on a split."""
    from engine.metrics import evaluate

    metrics = evaluate(embed(data.query_images), data.query_pids, data.query_cams, embed(data.gallery_images),
                       data.gallery_pids, data.gallery_cams, protocol=data.protocol)
    return 100.0 * float(metrics["rank1"])


def gate(model: torch.nn.Module, folder: str | os.PathLike[str], samples: np.ndarray,
         data: Any = None, note: str = "") -> Int8Gate:
    """Parity of ``folder``'s INT8 graph, served through the engine (ONNX Runtime CPU), against the FP32
    model, plus Rank-1 on ``data`` (a re-id split) if given."""
    parity, = measure_parity(reference_embeddings(model, samples), folder, {"int8": ("ort", "int8")}, samples,
                             thresholds={"int8": MIN_COSINE})
    if data is None:
        return Int8Gate(parity, MIN_TOPK_AGREEMENT, note=note or "no VIPeR data")

    def torch_embed(images: np.ndarray) -> np.ndarray:
        return np.concatenate([reference_embeddings(model, images[s:s + 64]) for s in range(0, len(images), 64)])

    with Embedder(folder, backend="ort", device="cpu", precision="int8") as served:
        return Int8Gate(parity, MIN_TOPK_AGREEMENT, rank1(torch_embed, data), rank1(served, data))


def check(result: Int8Gate) -> None:
    if not result.passed:
        raise ParityError(f"INT8 graph below the gate, not published: {result.line()}; calibrate on more "
                          "or more typical images (--calib-data), or publish without --int8")


def viper_split(spec: ModelSpec, root: str | os.PathLike[str] | None) -> tuple[Any, str]:
    """(VIPeR test split at the spec's size, "") or (None, why not): the Rank-1 gate's data."""
    from engine.errors import DataError
    from train.data import load_reid_set

    try:
        return load_reid_set("viper", root, height=spec.height, width=spec.width, progress=False), ""
    except DataError as exc:
        return None, f"VIPeR not loaded: {exc}"


def build(model: torch.nn.Module, spec: ModelSpec, fp32_path: str | os.PathLike[str], stage: Path,
          calib_dir: str | os.PathLike[str], say: Callable[[str], None] = print) -> ModelSpec:
    """Quantise, gate and write ``model.int8.onnx`` + ``int8_gate.json`` into ``stage``; return ``spec``
    fingerprinting the INT8 graph (saved in ``stage``).

    Parity is measured on real images from ``calib_dir`` that calibration did not see. Raises
    ParityError (nothing of the build is published) when the gate fails.
    """
    images = sample_images(spec, check_calib_data(calib_dir), count=CALIB_IMAGES + PARITY_IMAGES)
    calib, samples = images[:-PARITY_IMAGES], images[-PARITY_IMAGES:]
    path = to_int8(fp32_path, spec, calib, stage / ONNX_INT8_FILE)
    spec = spec.replace(onnx_int8_sha256=file_sha256(path))
    spec.save(stage / SPEC_FILE)
    data, note = viper_split(spec, None)
    result = gate(model, stage, samples, data, note)
    say(f"int8 gate {'passed' if result.passed else 'FAILED'}: {result.line()}")
    write_text(stage / GATE_FILE, json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n")
    check(result)
    return spec
