"""ONNX Runtime backend: CUDA execution provider when the installed build has it, CPU otherwise.

Inputs and outputs go through I/O binding on every provider, so the CUDA path (pixels copied to the
device once, no per-call re-allocation of the output by Python) is the same code that the CPU tests run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import int8_guard
from ..device import parse_device
from ..errors import ArtifactError, BackendUnavailableError, SpecMismatchError
from ..spec import ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE, ModelSpec
from .base import BaseBackend, check_precision
from .optional import optional_import

GRAPH_FILES = {"fp32": ONNX_FILE, "fp16": ONNX_FP16_FILE, "int8": ONNX_INT8_FILE}
FINGERPRINTS = {"fp32": "onnx_sha256", "fp16": "onnx_fp16_sha256", "int8": "onnx_int8_sha256"}  # spec fields
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
# cuDNN convolution algorithm choice: ONNX Runtime's default, EXHAUSTIVE, benchmarks every algorithm
# for each new input shape, and under Triton's dynamic batcher every new batch size is a new shape
# (up to max_batch searches, each seconds long, paid by live requests). HEURISTIC asks cuDNN's
# heuristics instead (no timing runs); DEFAULT would pin one algorithm whatever the shape.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}
_log = logging.getLogger(__name__)


def _import_ort() -> Any:
    return optional_import("onnxruntime", needed_for="the 'ort' backend")


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
    return [(CUDA_EP, {"device_id": index, **CUDA_OPTIONS}), (CPU_EP, {})]


def available(device: str = "auto") -> tuple[bool, str]:
    """Whether ONNX Runtime can run on ``device`` here (by the providers this build offers), and why."""
    ort = _import_ort()
    provider = providers_for(device, ort.get_available_providers())[0][0]
    return True, f"onnxruntime {ort.__version__} with {provider}"


class OrtBackend(BaseBackend):
    """Runs ``model.onnx`` (fp32), ``model.fp16.onnx`` (fp16) or ``model.int8.onnx`` (int8) from an artefact folder."""

    name = "ort"

    def __init__(self, artifact_dir: str | os.PathLike[str], spec: ModelSpec | None = None, *,
                 device: str = "auto", precision: str = "fp32", intra_op_threads: int = 0,
                 graph: str | os.PathLike[str] | None = None, spin_wait: bool = True) -> None:
        """``graph``: run this ONNX file instead of the folder's graph of ``precision``, without the
        fingerprint check (export uses it to check a graph before the spec fingerprints it);
        ``spin_wait``: ONNX Runtime's threads spin after a run, waiting for the next (its default, the
        fastest back-to-back calls); False sleeps them at once, for a server whose request path needs the
        same cores between calls."""
        ort = _import_ort()
        folder = Path(artifact_dir)
        self.spec = spec if spec is not None else ModelSpec.load(folder)
        self.precision = check_precision(precision)
        self.max_batch = self.spec.max_batch
        self.path = Path(graph) if graph is not None else folder / GRAPH_FILES[precision]
        if not self.path.is_file():
            raise ArtifactError(
                f"no {self.path.name} in {self.path.parent} for precision {precision!r}; export the "
                "artefact with `python -m export.build_engine` or ask for the other precision"
            )
        if graph is None:
            self.spec.check_fingerprint(self.path, FINGERPRINTS[precision])
        chosen = providers_for(device, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=[p for p, _ in chosen],
                                                 provider_options=[o for _, o in chosen])
        except Exception as exc:  # onnxruntime raises its own untyped errors for corrupt models
            raise ArtifactError(f"onnxruntime cannot load {self.path}: {exc}; re-export it") from exc
        self.providers = self._session.get_providers()
        self.provider_options = chosen[0][1]  # what the benchmarks record beside their figures
        self.device = _device_served(device, chosen, self.providers)
        self._device_id = chosen[0][1].get("device_id", 0)
        _check_io(self._session, self.spec, self.path)
        self.int8_recheck = self._check_int8(folder) if precision == "int8" and graph is None else None

    def _check_int8(self, folder: Path) -> dict[str, Any] | None:
        """INT8 numbers depend on the CPU's 8-bit path: re-check the gate's parity where it differs."""
        try:
            return int8_guard.check_served_here(folder, self.spec, self.device, self)
        except Exception:
            self.close()
            raise

    def _run(self, batch: np.ndarray) -> np.ndarray:
        binding = self._session.io_binding()
        binding.bind_cpu_input(self.spec.input_name, batch)
        if self.device == "cpu":
            binding.bind_output(self.spec.output_name, "cpu")
        else:  # on the session's own GPU: "cuda" alone means device 0
            binding.bind_output(self.spec.output_name, "cuda", self._device_id)
        self._session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _release(self) -> None:
        del self._session


def _device_served(device: str, chosen: list[tuple[str, dict[str, Any]]], actual: list[str]) -> str:
    """``"cuda:N"`` or ``"cpu"``: where the session really runs, from its providers, not from the build's.

    ONNX Runtime only warns and runs on the CPU when the CUDA provider fails to load (missing CUDA or
    cuDNN libraries); asked for CUDA explicitly, that is an error here, never a silent CPU run.
    """
    kind, options = chosen[0]
    if kind != CUDA_EP:
        return "cpu"
    if actual and actual[0] == CUDA_EP:
        return f"cuda:{options['device_id']}"
    why = (f"onnxruntime's CUDA provider did not load (the session runs on {actual}); check that the "
           "CUDA and cuDNN libraries this onnxruntime-gpu was built for are installed (see its warning above)")
    if parse_device(device)[0] == "cuda":
        raise BackendUnavailableError(f"device {device!r} asked for, but {why}, or pass device='cpu'")
    _log.warning("ort backend runs on the CPU: %s", why)
    return "cpu"


def _check_io(session: Any, spec: ModelSpec, path: Path) -> None:
    """Raise SpecMismatchError unless the graph has the spec's uint8 input and float32 output."""
    got = {(t.name, t.type) for t in session.get_inputs()}, {(t.name, t.type) for t in session.get_outputs()}
    want = {(spec.input_name, "tensor(uint8)")}, {(spec.output_name, "tensor(float)")}
    if got != want:
        raise SpecMismatchError(
            f"{path} has inputs/outputs {sorted(got[0])}/{sorted(got[1])}, the spec expects "
            f"{sorted(want[0])}/{sorted(want[1])}; re-export the artefact so graph and spec.json agree"
        )
    # Sizes too, so a spec that disagrees with its graph fails here, not at the first call.
    [pixels], [embeddings] = session.get_inputs(), session.get_outputs()
    shapes = tuple(pixels.shape[1:]), tuple(embeddings.shape[1:])
    if shapes != (spec.image_shape, (spec.embedding_dim,)):
        raise SpecMismatchError(
            f"{path} takes (N, {', '.join(map(str, shapes[0]))}) images and gives {shapes[1]} embeddings, the "
            f"spec says (N, {spec.height}, {spec.width}, 3) -> ({spec.embedding_dim},); re-export the artefact "
            "so graph and spec.json agree"
        )
