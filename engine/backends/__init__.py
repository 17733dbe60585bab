"""Backends that turn uint8 NHWC pixels into unit embeddings: ``trt``, ``ort`` and ``torch``.

``BACKENDS`` is the one table of them (name -> module and class, imported only when used, so importing
this package needs only numpy); ``backend_class(name)`` and ``available(name, device)`` are what the
Embedder, the conformance tests and the benchmarks ask, instead of keeping their own copies of the rules.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..errors import BackendUnavailableError, InputError
from .base import PRECISIONS, Backend, BaseBackend, check_precision


@dataclass(frozen=True)
class BackendEntry:
    """Where a backend lives: ``module`` (under engine.backends) defines ``cls`` and ``available(device)``."""

    name: str
    module: str
    cls: str


BACKENDS: dict[str, BackendEntry] = {e.name: e for e in (
    BackendEntry("trt", "trt", "TrtBackend"),  # a TensorRT plan in the folder, tensorrt + pycuda, a CUDA GPU
    BackendEntry("ort", "ort", "OrtBackend"),  # onnxruntime (onnxruntime-gpu for CUDA)
    BackendEntry("torch", "torch_backend", "TorchBackend"),  # PyTorch and the nn.Module (module=)
)}
BACKEND_NAMES = ("auto", *BACKENDS)


def _module(name: str):  # noqa: ANN202 - a module object
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of {BACKEND_NAMES}")
    return importlib.import_module(f"{__name__}.{BACKENDS[name].module}")


def backend_class(name: str) -> type[BaseBackend]:
    """The class serving backend ``name`` (looked up when called, so tests can stand one in)."""
    cls: type[BaseBackend] = getattr(_module(name), BACKENDS[name].cls)
    return cls


def available(name: str, device: str = "auto") -> tuple[bool, str]:
    """Whether backend ``name`` can run on ``device`` here, and why (not); never raises for a known name."""
    try:
        ok, why = _module(name).available(device)
    except BackendUnavailableError as exc:
        return False, str(exc)
    return bool(ok), str(why)


__all__ = ["BACKENDS", "BACKEND_NAMES", "PRECISIONS", "Backend", "BackendEntry", "BaseBackend", "available",
           "backend_class", "check_precision"]
