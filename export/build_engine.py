"""``python -m export.build_engine CHECKPOINT --out DIR``: checkpoint -> ONNX -> FP16 ONNX -> TensorRT.

Everything is built in a staging folder inside ``--out`` and moved into place only after parity
passed, so a failed or interrupted build never leaves files that look good; re-running over an existing
folder replaces its artefacts. Exit codes: 0 ok, 1 parity below threshold, 2 usage or input errors
(corrupt checkpoint, spec mismatch, unwritable folder, ``--require-trt`` without TensorRT).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ArtifactError, BackendUnavailableError, JLMLError, ParityError
from engine.spec import (
    ONNX_FILE,
    ONNX_FP16_FILE,
    PARITY_FILE,
    PLAN_FILE,
    PLAN_SIDECAR_FILE,
    SPEC_FILE,
    TIMING_CACHE_FILE,
    ModelSpec,
    file_sha256,
)

from . import int8, trt_build
from .fp16 import to_fp16
from .onnx_export import check_and_simplify, onnx_from_checkpoint
from .parity import DEFAULT_SAMPLES, check_parity, measure_parity, sample_images, write_parity
from .triton import write_triton_repo

TRITON_DIR = "triton"
DEFAULT_WORKSPACE_MIB = 4096
# Simplification is verified on a few images only: it folds constants, it does not change numerics.
SIMPLIFY_CHECK_IMAGES = 4


@dataclass
class Built:
    """What one build produced in its staging folder, for publishing."""

    spec: ModelSpec
    files: list[str]
    plan_skipped: str = ""


def _say(message: str) -> None:
    print(f"[build_engine] {message}", flush=True)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.1f} KiB"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = ModelSpec()
    p = argparse.ArgumentParser(
        prog="python -m export.build_engine",
        description="Export a JLML checkpoint to ONNX (FP32 and FP16), measure parity against PyTorch "
                    "with ONNX Runtime, build a TensorRT plan when TensorRT is importable, and write a "
                    "Triton model repository. Batch range and opset default to the checkpoint's spec.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by `python -m train` (last.pt)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created; reruns replace)")
    for name, default in (("min", defaults.min_batch), ("opt", defaults.opt_batch), ("max", defaults.max_batch)):
        p.add_argument(f"--{name}-batch", type=int, default=None,
                       help=f"{name} batch of the TensorRT profile / Triton (spec default {default})")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (spec default {defaults.opset})")
    p.add_argument("--workspace-mib", type=int, default=DEFAULT_WORKSPACE_MIB,
                   help="TensorRT builder workspace limit in MiB (default %(default)s)")
    p.add_argument("--require-trt", action="store_true",
                   help="fail (exit 2) instead of skipping the plan when TensorRT is not importable")
    p.add_argument("--no-simplify", dest="simplify", action="store_false",
                   help="keep the exported graphs as they are (no onnxslim)")
    p.add_argument("--sample-images", type=Path, default=None,
                   help=f"folder of images (resized to the spec) for parity; default {DEFAULT_SAMPLES} random ones")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="also export model.fp16.onnx and build the plan from it (default on)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (static QDQ INT8, "
                   "export/int8.py), published only if it passes its gate; needs --calib-data")
    p.add_argument("--calib-data", type=Path, default=None, help="folder of real person crops to calibrate INT8 on")
    return p.parse_args(argv)


def _load(args: argparse.Namespace) -> tuple[Any, ModelSpec]:
    """The checkpoint's FP32 model and the spec of this build (batch range and opset applied)."""
    from train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    ckpt.model.spec.check_compatible(ckpt.spec, what=f"checkpoint {args.checkpoint}'s stored spec")
    chosen = {"min_batch": args.min_batch, "opt_batch": args.opt_batch, "max_batch": args.max_batch,
              "opset": args.opset}
    spec = ckpt.spec.replace(**{k: v for k, v in chosen.items() if v is not None})
    return ckpt.model.float().eval(), spec


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh folder inside ``out`` (same file system, so publishing is a rename), always removed."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".build-", dir=out))
    except OSError as exc:
        raise ArtifactError(f"cannot write output folder {out}: {exc.strerror or exc}; choose a "
                            "writable --out") from exc
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _export(model: Any, spec: ModelSpec, stage: Path, samples: np.ndarray, args: argparse.Namespace,
            ) -> tuple[ModelSpec, dict[str, Path]]:
    """Write the checked FP32 (and FP16) graphs; return the spec fingerprinted with model.onnx."""
    graphs = {"fp32": onnx_from_checkpoint(model, spec, stage / ONNX_FILE)}
    if args.fp16:
        graphs["fp16"] = to_fp16(model, spec, stage / ONNX_FP16_FILE)
    for name, path in graphs.items():
        report = check_and_simplify(path, spec, simplify=args.simplify, samples=samples[:SIMPLIFY_CHECK_IMAGES])
        how = (f"simplified {report.nodes_before} -> {report.nodes_after} nodes, max |diff| "
               f"{report.max_abs_diff:.1e}") if report.simplified else f"{report.nodes_after} nodes, {report.note}"
        _say(f"wrote {path.name} ({name}, {_size(path)}, opset {spec.opset}, IR {spec.ir_version}; {how})")
    return spec.replace(onnx_sha256=file_sha256(graphs["fp32"])), graphs


def _plan(spec: ModelSpec, graphs: dict[str, Path], stage: Path, out: Path,
          args: argparse.Namespace) -> tuple[list[str], str]:
    """Build model.plan + sidecar when TensorRT imports; else return the reason it was skipped."""
    try:
        trt = trt_build.load_tensorrt()
    except BackendUnavailableError as exc:
        if args.require_trt:
            raise
        return [], str(exc)
    fp16 = "fp16" in graphs
    parsed = trt_build.network_from_onnx(graphs["fp16" if fp16 else "fp32"], spec)
    plan = trt_build.serialize_engine(parsed, spec, workspace_mib=args.workspace_mib, fp16=fp16,
                                      timing_cache=out / TIMING_CACHE_FILE)
    (stage / PLAN_FILE).write_bytes(plan)
    trt_build.plan_sidecar(trt.__version__, spec, fp16=fp16).save(stage / PLAN_SIDECAR_FILE)
    _say(f"wrote {PLAN_FILE} ({_size(stage / PLAN_FILE)}, TensorRT {trt.__version__}, "
         f"{'fp16' if fp16 else 'fp32'}, batch {spec.min_batch}/{spec.opt_batch}/{spec.max_batch})")
    return [PLAN_FILE, PLAN_SIDECAR_FILE], ""


def build(args: argparse.Namespace) -> Built:
    """Run every step into a staging folder and publish it; raises the project's errors."""
    if args.require_trt:
        trt_build.load_tensorrt()  # fail before minutes of export work, not after
    model, spec = _load(args)
    samples = sample_images(spec, args.sample_images)
    with _staging(args.out) as stage:
        spec, graphs = _export(model, spec, stage, samples, args)
        results = measure_parity(model, graphs, samples)
        for result in results:
            _say(f"parity {result.line()}")
        check_parity(results)
        source = str(args.sample_images) if args.sample_images else "random uint8"
        write_parity(stage / PARITY_FILE, results, {"onnx_sha256": spec.onnx_sha256, "images": source})
        plan_files, skipped = _plan(spec, graphs, stage, args.out, args)
        spec.save(stage / SPEC_FILE)
        write_triton_repo(stage / TRITON_DIR, spec, onnx_path=graphs["fp32"],
                          plan_path=stage / PLAN_FILE if plan_files else None)
        files = [*(p.name for p in graphs.values()), *plan_files, PARITY_FILE, TRITON_DIR, SPEC_FILE]
        files += int8.build(model, spec, graphs["fp32"], stage, args.calib_data) if args.int8 else []
        _publish(stage, args.out, files)
    return Built(spec, files, skipped)


def _publish(stage: Path, out: Path, files: list[str]) -> None:
    """Move ``files`` into ``out`` (spec.json last) and remove artefacts of earlier builds they replace.

    A plan or FP16 graph left from an earlier build no longer matches the new model.onnx, so it goes.
    """
    stale = [n for n in (ONNX_FP16_FILE, PLAN_FILE, PLAN_SIDECAR_FILE, *int8.FILES) if n not in files]
    for name in [*stale, TRITON_DIR]:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
            _say(f"removed stale {name} from an earlier build")
    for name in files:
        os.replace(stage / name, out / name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        built = build(args)
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except JLMLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if built.plan_skipped:
        _say(f"skipped {PLAN_FILE}: {built.plan_skipped}")
    _say(f"done: {', '.join(built.files)} in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
