"""ONNX Runtime backend: CUDA execution provider when the installed build has it, CPU otherwise.

Inputs and outputs go through I/O binding on every provider, so the CUDA path (pixels copied to the
device once, no per-call re-allocation of the output by Python) is the same code that the CPU tests run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError, SpecMismatchError
from ..spec import ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE, ModelSpec, file_sha256
from .base import BaseBackend, check_precision, parse_device

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the 'ort' backend needs onnxruntime ({exc}); install it with "
            "`pip install 'jlml-engine[ort]'` (CPU) or `pip install 'jlml-engine[ort-gpu]'` (CUDA)"
        ) from exc
    return onnxruntime


def providers_for(device: str, available: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(execution provider, options) pairs for ``device`` given the providers this build offers."""
    kind, index = parse_device(device)
    if kind == "cpu" or kind == "auto" and CUDA_EP not in available:
        return [(CPU_EP, {})]
    if CUDA_EP not in available:
        raise BackendUnavailableError(
            f"device {device!r} asked for, but this onnxruntime offers only {available}; install "
            "`pip install 'jlml-engine[ort-gpu]'` (and uninstall plain onnxruntime) or use device='cpu'"
        )
    return [(CUDA_EP, {"device_id": index}), (CPU_EP, {})]


class OrtBackend(BaseBackend):
    """Runs ``model.onnx`` (fp32), ``model.fp16.onnx`` (fp16) or ``model.int8.onnx`` (int8) from an artefact folder."""

    name = "ort"

    def __init__(self, artifact_dir: str | os.PathLike[str], spec: ModelSpec | None = None, *,
                 device: str = "auto", precision: str = "fp32", intra_op_threads: int = 0) -> None:
        ort = _import_ort()
        folder = Path(artifact_dir)
        self.spec = spec if spec is not None else ModelSpec.load(folder)
        self.precision = check_precision(precision)
        self.max_batch = self.spec.max_batch
        self.path = folder / {"fp32": ONNX_FILE, "fp16": ONNX_FP16_FILE, "int8": ONNX_INT8_FILE}[precision]
        if not self.path.is_file():
            raise ArtifactError(
                f"no {self.path.name} in {folder} for precision {precision!r}; export the artefact "
                "with `python -m export.build_engine` or ask for the other precision"
            )
        if precision == "fp32":
            _check_sha(self.path, self.spec)
        chosen = providers_for(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=[p for p, _ in chosen],
                                                 provider_options=[o for _, o in chosen])
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt models
            raise ArtifactError(f"onnxruntime cannot load {self.path}: {exc}; re-export it") from exc
        self.providers = self._session.get_providers()
        self._out_device = "cuda" if self.providers[0] == CUDA_EP else "cpu"
        _check_io(self._session, self.spec, self.path)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        binding = self._session.io_binding()
        binding.bind_cpu_input(self.spec.input_name, batch)
        binding.bind_output(self.spec.output_name, self._out_device)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _release(self) -> None:
        del self._session


def _check_sha(path: Path, spec: ModelSpec) -> None:
    digest = file_sha256(path) if spec.onnx_sha256 else ""
    if digest != spec.onnx_sha256:
        raise SpecMismatchError(
            f"{path} has sha256 {digest[:12]}..., spec.json expects "
            f"{spec.onnx_sha256[:12]}...; the ONNX file was replaced after export, re-export the folder"
        )


def _check_io(session: Any, spec: ModelSpec, path: Path) -> None:
    """Raise SpecMismatchError unless the graph has the spec's uint8 input and float32 output."""
    got = {(t.name, t.type) for t in session.get_inputs()}, {(t.name, t.type) for t in session.get_outputs()}
    want = {(spec.input_name, "tensor(uint8)")}, {(spec.output_name, "tensor(float)")}
    if got != want:
        raise SpecMismatchError(
            f"{path} has inputs/outputs {sorted(got[0])}/{sorted(got[1])}, the spec expects "
            f"{sorted(want[0])}/{sorted(want[1])}; re-export the artefact so graph and spec.json agree"
        )
