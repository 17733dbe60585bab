"""The embedding backends the benchmarks compare, named once, with the reason any one cannot run.

Every candidate is served through ``engine.Embedder`` (the path users call), so a benchmark measures
what is served: host uint8 pixels in, host float32 unit vectors out, copies included. A candidate
that cannot run on this machine is skipped with a reason that lands in the report, never dropped
silently.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import Embedder
from engine.errors import InputError, JLMLError
from engine.spec import ONNX_FILE, ONNX_FP16_FILE, ONNX_INT8_FILE, PLAN_FILE, ModelSpec

BASELINE = "torch-fp32"
CPU_FP16_REASON = ("needs CUDA: the engine's torch backend rejects fp16 on CPU (half convolutions are "
                   "missing or slower than fp32) and bf16 is not a precision the engine serves")


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


def pick(names: list[str]) -> list[Candidate]:
    """The candidates called ``names``, baseline first (ratios need it), or InputError."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise InputError(f"unknown backend(s) {unknown}; choose from {list(CANDIDATES)}")
    return sorted((CANDIDATES[n] for n in dict.fromkeys(names)), key=lambda c: c.name != BASELINE)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda:0`` when PyTorch sees a GPU, else ``cpu``; ``cuda`` without one raises."""
    import torch

    from engine.backends.torch_backend import resolve_device as torch_device

    return str(torch_device(torch, device))


def backend_device(cand: Candidate, device: str) -> str:
    """Where ``cand`` runs when the benchmark targets ``device``: ONNX Runtime falls back to the CPU
    when its build has no CUDA provider (the reference the GPU script records)."""
    if cand.backend != "ort" or device == "cpu":
        return device
    import onnxruntime

    return device if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"


def skip_reason(cand: Candidate, folder: Path, device: str, module: Any) -> str | None:
    """Why ``cand`` cannot run here (None when it can); checked before opening anything."""
    if cand.backend == "torch":
        if module is None:
            return "no PyTorch module: pass --checkpoint (the checkpoint the artefact was exported from)"
        if cand.precision == "fp16" and device == "cpu":
            return CPU_FP16_REASON
        return None
    if cand.backend == "ort":
        graph = {"fp32": ONNX_FILE, "fp16": ONNX_FP16_FILE, "int8": ONNX_INT8_FILE}[cand.precision]
        return None if (folder / graph).is_file() else f"no {graph} in {folder}"
    if device == "cpu":
        return "TensorRT needs a CUDA device"
    if not (folder / PLAN_FILE).is_file():
        return f"no {PLAN_FILE} in {folder} (export built none: TensorRT was not importable there)"
    from engine.backends.trt import available

    ok, why = available()
    return None if ok else why


def open_embedder(cand: Candidate, folder: str | os.PathLike[str], device: str, module: Any) -> Embedder:
    """An Embedder serving ``cand`` from ``folder`` (``module`` for the torch candidates)."""
    return Embedder(folder, backend=cand.backend, device=backend_device(cand, device),
                    precision=cand.precision, module=module if cand.backend == "torch" else None,
                    compile=cand.compile)


def load_module(checkpoint: str | os.PathLike[str]) -> Any:
    """The FP32 eval-mode JLML module of a training checkpoint (the PyTorch baseline)."""
    from train.checkpoint import load_checkpoint

    return load_checkpoint(checkpoint).model.float().eval()


Rows = list[dict[str, Any]]


def run_each(candidates: list[Candidate], ctx: dict[str, Any], bench: Callable[[Candidate], Rows],
             rate: str) -> tuple[Rows, dict[str, str]]:
    """``bench`` every candidate that can run (``ctx``: folder, device, module); return its rows with
    ``vs_torch_fp32`` (``rate`` over the baseline's at the same batch) and skipped name -> reason."""
    rows: Rows = []
    skipped: dict[str, str] = {}
    for cand in candidates:
        reason = skip_reason(cand, ctx["folder"], ctx["device"], ctx["module"])
        if reason is None:
            print(f"== {cand.name}", flush=True)
            try:
                rows += bench(cand)
            except (JLMLError, RuntimeError) as exc:  # unusable runtime, compiler failure, out of memory
                reason = f"failed to run: {exc}"
        if reason is not None:
            skipped[cand.name] = reason
            print(f"== {cand.name}: skipped, {reason}", flush=True)
    base = {r["batch"]: r[rate] for r in rows if r["backend"] == BASELINE}
    for row in rows:
        row["vs_torch_fp32"] = row[rate] / base[row["batch"]] if row["batch"] in base else None
    return rows, skipped


Context = Callable[[Any], tuple[list[Candidate], dict[str, Any], dict[str, Any]]]


def measure(args: Any, context: Context, bench: Callable[[Candidate, dict[str, Any]], Rows], rate: str,
            name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The common body of a backend benchmark's ``main``: build the context from ``args``, run every
    candidate, write ``OUT/<name>.json``; return (run record, ctx), or None after printing a user error."""
    from benchmarks.common import environment, write_json

    try:
        candidates, ctx, settings = context(args)
        env = environment(ctx["device"])
        rows, skipped = run_each(candidates, ctx, lambda cand: bench(cand, ctx), rate)
    except JLMLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    record = {"environment": env, "settings": settings, "results": rows, "skipped": skipped}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{name}.json", record)
    return record, ctx


def artifact_spec(args: Any) -> ModelSpec:
    """The artefact's spec, after applying ``--threads`` to PyTorch (both benchmarks start so)."""
    spec = ModelSpec.load(args.artifact_dir)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return spec
