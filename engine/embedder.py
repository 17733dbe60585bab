"""The serving entry point: any number of uint8 images in, unit embeddings out, on the best backend.

The Embedder loads the artefact's spec, opens one backend (``auto``: the folder's TensorRT plan, in
its own precision, where it fits this GPU and TensorRT, else ONNX Runtime FP32 on CUDA or CPU; one log
line says which and why) and splits inputs into batches the backend accepts, so callers never think
about profiles or device buffers. Precision defaults to None, "the best the artefact has here", so the
FP16 plan export builds is what serves by default.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from .backends import BACKEND_NAMES, Backend, backend_class, check_precision
from .errors import ArtifactError, InputError
from .spec import PLAN_FILE, PLAN_SIDECAR_FILE, ModelSpec

_log = logging.getLogger(__name__)


def _open_backend(folder: Path, spec: ModelSpec, backend: str, device: str, precision: str | None,
                  module: Any, compile: bool, spin_wait: bool) -> Backend:
    """Open the backend named ``backend`` (already resolved from "auto") for ``spec``."""
    if compile and backend != "torch":
        raise InputError(f"compile=True applies to backend='torch' only, not {backend!r}")
    cls: Any = backend_class(backend)
    if backend == "torch":
        return cls(module, spec, device=device, precision=precision or "fp32", compile=compile)
    if backend == "ort":
        return cls(folder, spec, device=device, precision=precision or "fp32", spin_wait=spin_wait)
    return cls(folder, spec, device=device, precision=precision)  # trt: None is the plan's own


def offered(folder: str | os.PathLike[str]) -> dict[str, tuple[str, ...]]:
    """The precisions each artefact backend can serve from ``folder``: graphs present for "ort", the
    plan's own (from its sidecar) for "trt"; what an error lists when a precision is not there."""
    from .backends.ort import GRAPH_FILES
    from .backends.plan_sidecar import PlanSidecar

    folder = Path(folder)
    have = {"ort": tuple(p for p, name in GRAPH_FILES.items() if (folder / name).is_file()), "trt": ()}
    if (folder / PLAN_FILE).is_file():
        with contextlib.suppress(ArtifactError):  # an unreadable sidecar: the trt backend reports it
            have["trt"] = (PlanSidecar.load(folder / PLAN_SIDECAR_FILE).precision,)
    return have


def _check_offered(folder: Path, backend: str, precision: str | None) -> None:
    """An explicit precision that ``backend`` cannot serve from the folder: ArtifactError (the file of
    that precision is missing; benchmarks skip such a candidate) listing what the artefact has."""
    if precision is None or backend not in ("ort", "trt"):
        return
    have = offered(folder)
    if backend == "trt" and not have["trt"]:
        return  # no plan, or no readable sidecar: the trt backend says what is missing (tensorrt first)
    if precision not in have[backend]:
        listed = "; ".join(f"{b}: {', '.join(p) or 'nothing'}" for b, p in have.items())
        raise ArtifactError(
            f"precision {precision!r} is not in {folder} for backend {backend!r}; the artefact has {listed}; "
            "leave precision out (None: the best the artefact has for the device) or pass one it has"
        )


def _resolve_auto(folder: Path, spec: ModelSpec, device: str, precision: str | None) -> tuple[str, str]:
    """("trt" or "ort", why): the plan when it fits this machine (and ``precision``, if given), else ONNX
    Runtime. A plan is built for one TensorRT version, GPU and precision; "auto" must not turn a plan
    that cannot serve here into an error, so it falls back to ONNX Runtime and says why."""
    if device == "cpu":
        return "ort", "device 'cpu' asked for"
    if not (folder / PLAN_FILE).is_file():
        return "ort", f"no {PLAN_FILE} in {folder}"
    from .backends.trt import unfit_reason

    why = unfit_reason(folder, spec, device=device, precision=precision)
    if why is None:
        return "trt", f"{PLAN_FILE} fits this GPU and TensorRT"
    return "ort", f"{PLAN_FILE} cannot serve here: {why}"


def _load_spec(artifact_dir: str | os.PathLike[str] | None, spec: ModelSpec | None,
               backend: str) -> tuple[Path, ModelSpec]:
    """The artefact folder and its spec; only the torch backend may go without a folder."""
    if artifact_dir is None:
        if spec is None or backend != "torch":
            raise InputError("pass artifact_dir; only backend='torch' with spec= goes without (from_module)")
        return Path(), spec
    folder = Path(artifact_dir)
    if folder.is_file():
        raise InputError(
            f"{folder} is a file; pass the artefact folder that holds it ({folder.parent}), whose "
            "spec.json says how to serve it"
        )
    if not folder.is_dir():
        raise ArtifactError(
            f"artefact folder {folder} does not exist; export one with `python -m export.build_engine`"
        )
    loaded = ModelSpec.load(folder)
    if spec is not None:
        spec.check_compatible(loaded, what=f"artefact {folder}")
    return folder, loaded


def artifact_spec(artifact_dir: str | os.PathLike[str]) -> ModelSpec:
    """The spec of an artefact folder, with the Embedder's errors for a missing folder or a file."""
    return _load_spec(artifact_dir, None, "auto")[1]


class Embedder:
    """Embeds any number of uint8 (N, H, W, 3) images with one backend; a context manager.

    ``backend``: "auto", "trt", "ort" or "torch" (needs ``module=``, an nn.Module taking uint8 NHWC);
    ``device``: "auto", "cpu", "cuda" or "cuda:N"; ``precision``: None (the default: the best the
    artefact has for the device: the plan's own precision where "auto"/"trt" serve the plan, else FP32),
    or "fp32", "fp16" or "int8" (ort only), an error listing what the artefact has if it lacks it;
    ``batch_size``: images per backend call, at most the backend's ``max_batch`` (the default);
    ``compile``: torch backend only, run the module through ``torch.compile``; ``spin_wait``: ONNX
    Runtime only, False lets its threads sleep as soon as a call ends (a server: see OrtBackend).
    """

    def __init__(self, artifact_dir: str | os.PathLike[str] | None, *, backend: str = "auto",
                 device: str = "auto", precision: str | None = None, module: Any = None,
                 batch_size: int | None = None, spec: ModelSpec | None = None,
                 compile: bool = False, spin_wait: bool = True) -> None:
        if backend not in BACKEND_NAMES:
            raise InputError(f"unknown backend {backend!r}; choose one of {BACKEND_NAMES}")
        if precision is not None:
            check_precision(precision)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer)):
            raise InputError(f"batch_size must be a whole number of images, got {batch_size!r}; pass an int "
                             "such as 32, or leave it out for the backend's largest batch")
        if (backend == "torch") != (module is not None):
            raise InputError(
                f"module= is {'missing' if module is None else 'given'} for backend {backend!r}; "
                "pass an nn.Module with backend='torch' and only then"
            )
        folder, spec = _load_spec(artifact_dir, spec, backend)
        why, asked = "asked for", backend
        if backend == "auto":
            backend, why = _resolve_auto(folder, spec, device, precision)
        _check_offered(folder, backend, precision)
        self._backend = _open_backend(folder, spec, backend, device, precision, module, compile, spin_wait)
        self.spec = spec
        self.choice = why  # why this backend serves (the log line's reason)
        fell_back = asked == "auto" and backend == "ort" and (folder / PLAN_FILE).is_file() and device != "cpu"
        _log.log(logging.WARNING if fell_back else logging.INFO, "serving %s with %s %s on %s: %s",
                 folder, backend, self._backend.precision, self._backend.device, why)
        try:
            self.batch_size = self._check_batch_size(batch_size)
        except InputError:
            self.close()
            raise

    @classmethod
    def from_module(cls, module: Any, spec: ModelSpec, **kwargs: Any) -> Embedder:
        """The PyTorch reference without an artefact folder (e.g. straight after training)."""
        return cls(None, backend="torch", module=module, spec=spec, **kwargs)

    def _check_batch_size(self, batch_size: int | None) -> int:
        limit = self._backend.max_batch
        if batch_size is None:
            return limit
        if not 1 <= batch_size <= limit:
            raise InputError(
                f"batch_size {batch_size} is outside 1..{limit} (the {self.backend_name} backend's "
                "largest batch); pass a smaller batch_size or leave it out"
            )
        return batch_size

    @property
    def backend_name(self) -> str:
        return self._backend.name

    @property
    def device(self) -> str:
        """Where the backend really runs (``"cpu"`` or ``"cuda:N"``), e.g. after ONNX Runtime fell back."""
        return str(self._backend.device)

    @property
    def precision(self) -> str:
        return self._backend.precision

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Unit embeddings (N, D) float32 for uint8 (N, H, W, 3) images; N may be 0 or any size."""
        batch = self.spec.check_images(images)
        step = self.batch_size
        parts = list(self._backend.run_batches(batch[i:i + step] for i in range(0, len(batch), step)))
        if not parts:
            return np.zeros((0, self.spec.embedding_dim), dtype=np.float32)
        return np.concatenate(parts)

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Embedder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Embedder {self.backend_name} {self.precision} batch_size={self.batch_size}>"
