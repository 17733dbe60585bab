"""The embedding backends the benchmarks compare, named once: engine backend, precision, eager or compiled.

Every entry is served through ``engine.Embedder`` (the path users call), so a benchmark measures what
is served: host uint8 pixels in, host float32 unit vectors out, copies included. Whether an entry can
run on this machine is the engine's call, made when ``benchmarks.harness`` opens it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from engine import Embedder
from engine.backends import available
from engine.device import torch_device
from engine.errors import InputError

BASELINE = "torch-fp32"


@dataclass(frozen=True)
class Candidate:
    """One way to serve the model: an Embedder backend, a precision and (torch) eager or compiled."""

    name: str
    backend: str
    precision: str
    compile: bool = False


CANDIDATES: dict[str, Candidate] = {c.name: c for c in (
    Candidate("torch-fp32", "torch", "fp32"),
    Candidate("torch-fp16", "torch", "fp16"),
    Candidate("torch-compile-fp32", "torch", "fp32", compile=True),
    Candidate("torch-compile-fp16", "torch", "fp16", compile=True),
    Candidate("ort-fp32", "ort", "fp32"),
    Candidate("ort-fp16", "ort", "fp16"),
    Candidate("ort-int8", "ort", "int8"),  # model.int8.onnx (export --int8), CPU: VNNI where the CPU has it
    Candidate("trt-fp16", "trt", "fp16"),
)}


def pick(names: list[str] | tuple[str, ...]) -> list[Candidate]:
    """The candidates called ``names``, baseline first (ratios need it), or InputError."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise InputError(f"unknown backend(s) {unknown}; choose from {list(CANDIDATES)}")
    return sorted((CANDIDATES[n] for n in dict.fromkeys(names)), key=lambda c: c.name != BASELINE)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when PyTorch sees a GPU, else ``cpu``; ``cuda`` without one raises."""
    return str(torch_device(device))


def backend_device(cand: Candidate, device: str) -> str:
    """Where ``cand`` runs when the benchmark targets ``device``: ONNX Runtime falls back to the CPU
    when its build has no CUDA provider (the reference the GPU script records)."""
    if cand.backend != "ort" or device == "cpu":
        return device
    # available() never raises: without onnxruntime at all the candidate then fails to open with
    # BackendUnavailableError, one of the "cannot serve here" errors, and its rows are skipped.
    return device if available("ort", device)[0] else "cpu"


def open_embedder(cand: Candidate, folder: str | os.PathLike[str], device: str, module: Any) -> Embedder:
    """An Embedder serving ``cand`` from ``folder`` (``module`` for the torch candidates)."""
    return Embedder(folder, backend=cand.backend, device=backend_device(cand, device),
                    precision=cand.precision, module=module if cand.backend == "torch" else None,
                    compile=cand.compile)
