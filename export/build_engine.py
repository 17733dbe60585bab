"""``python -m export.build_engine CHECKPOINT --out DIR``: checkpoint -> ONNX -> FP16 ONNX -> TensorRT
(and, with ``--int8 --calib-data DIR``, a gated INT8 ONNX graph, ``export.int8``).

``build(checkpoint, out, BuildOptions(...)) -> BuildResult`` is the library call; the CLI only parses
flags into ``BuildOptions``. Everything is built in a staging folder beside ``--out``, measured there
through the engine (``Embedder``, as it will be served), and published by swapping the folders, so a
reader sees the old artefact set or the new one, never a mix, and a failed or killed build publishes
nothing (``export.publish``). Exit codes: 0 ok, 1 parity (or the INT8 gate) below threshold, 2 usage or input errors
(corrupt checkpoint, spec mismatch, unwritable folder, ``--require-trt`` without TensorRT or pycuda).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import cli
from engine.atomic import write_text
from engine.backends.trt import import_runtime
from engine.errors import BackendUnavailableError, CheckpointError, InputError, ParityError
from engine.parity import ParityResult
from engine.spec import (
    MODEL_CARD_FILE,
    ONNX_FILE,
    ONNX_FP16_FILE,
    PARITY_FILE,
    PLAN_FILE,
    PLAN_SIDECAR_FILE,
    SPEC_FILE,
    ModelSpec,
    file_sha256,
)

from . import int8, trt_build
from .fp16 import to_fp16
from .onnx_export import check_and_simplify, check_versions, onnx_from_checkpoint
from .parity import (
    DEFAULT_SAMPLES,
    check_parity,
    measure_parity,
    parity_samples,
    reference_embeddings,
    write_parity,
)
from .provenance import check_unchanged, checkpoint_record, model_card, provenance
from .publish import TRITON_DIR, check_out, clean_stale, publish, staging
from .triton import TENSORRT_CONFIG, check_plan_for_triton, write_triton_repo

DEFAULT_WORKSPACE_MIB = 4096
# Simplification is verified on a few images only: it folds constants, it does not change numerics.
SIMPLIFY_CHECK_IMAGES = 4


@dataclass(frozen=True)
class BuildOptions:
    """How to build; ``None`` batch sizes and opset come from the checkpoint's spec."""

    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    opset: int | None = None
    workspace_mib: int = DEFAULT_WORKSPACE_MIB
    require_trt: bool = False
    simplify: bool = True
    sample_images: Path | None = None
    fp16: bool = True
    int8: bool = False  # also model.int8.onnx, published only if it passes export.int8's gate
    calib_data: Path | None = None  # real person crops INT8 calibrates on (needed with int8)
    force: bool = False  # replace an --out exported from this checkpoint path before it changed
    data_root: Path | None = None  # where the INT8 gate finds VIPeR for Rank-1 (None: $JLML_DATA or ../shared/data)


@dataclass(frozen=True)
class BuildResult:
    """What a build published: the folder, its spec, file names, parity figures, why no plan (if so)."""

    out: Path
    spec: ModelSpec
    files: tuple[str, ...]
    parity: tuple[ParityResult, ...]
    plan_skipped: str = ""


@dataclass
class _Staged:
    """The build in progress: its folder, spec so far, the graphs written, and the TensorRT version
    that built the plan ("" while there is none)."""

    stage: Path
    spec: ModelSpec
    graphs: dict[str, Path] = field(default_factory=dict)
    trt_version: str = ""


def _say(message: str) -> None:
    print(f"[build_engine] {message}", flush=True)


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 1024:.1f} KiB"


def _load(checkpoint: Path, options: BuildOptions) -> tuple[Any, Any, ModelSpec]:
    """The checkpoint, its FP32 model and the spec of this build (batch range and opset applied)."""
    from train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    ckpt.model.spec.check_compatible(ckpt.spec, what=f"checkpoint {checkpoint}'s stored spec")
    chosen = {"min_batch": options.min_batch, "opt_batch": options.opt_batch,
              "max_batch": options.max_batch, "opset": options.opset}
    spec = ckpt.spec.replace(**{k: v for k, v in chosen.items() if v is not None})
    check_versions(spec.opset, spec.ir_version)
    bad = ckpt.non_finite()
    if bad:
        raise CheckpointError(
            f"checkpoint {checkpoint} holds NaN or infinite values in {len(bad)} tensor(s) ("
            f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}): its training diverged, every embedding "
            "would be NaN; export an earlier checkpoint, or retrain (e.g. with a lower --lr)")
    return ckpt, ckpt.model.float().eval(), spec


def _export(model: Any, staged: _Staged, samples: np.ndarray, options: BuildOptions) -> None:
    """Write the checked FP32 (and FP16) graphs; fingerprint them in the spec and save it."""
    stage, spec = staged.stage, staged.spec
    staged.graphs["fp32"] = onnx_from_checkpoint(model, spec, stage / ONNX_FILE)
    if options.fp16:
        staged.graphs["fp16"] = to_fp16(model, spec, stage / ONNX_FP16_FILE)
    for name, path in staged.graphs.items():
        report = check_and_simplify(path, spec, simplify=options.simplify, samples=samples[:SIMPLIFY_CHECK_IMAGES])
        how = (f"simplified {report.nodes_before} -> {report.nodes_after} nodes, max |diff| "
               f"{report.max_abs_diff:.1e}") if report.simplified else f"{report.nodes_after} nodes, {report.note}"
        _say(f"wrote {path.name} ({name}, {_size(path)}, opset {spec.opset}, IR {spec.ir_version}; {how})")
    fp16 = staged.graphs.get("fp16")
    staged.spec = spec.replace(onnx_sha256=file_sha256(staged.graphs["fp32"]),
                               onnx_fp16_sha256=file_sha256(fp16) if fp16 else "")
    staged.spec.save(stage / SPEC_FILE)


def _load_runtime() -> Any:
    """tensorrt, once it and pycuda both import: a plan is built only where the engine can run it
    through its parity gate (engine.backends.trt); else BackendUnavailableError naming the missing one."""
    return import_runtime("building and checking the TensorRT plan (or build without it)")[0]


def _plan(staged: _Staged, options: BuildOptions) -> str:
    """Build model.plan + sidecar (fingerprinted in the spec) when TensorRT and pycuda import; else why not."""
    try:
        trt = _load_runtime()
    except BackendUnavailableError as exc:
        if options.require_trt:
            raise
        return str(exc)
    gpu = trt_build.gpu_identity()  # fails before the build rather than record an unknown GPU
    stage, spec, fp16 = staged.stage, staged.spec, "fp16" in staged.graphs
    parsed = trt_build.network_from_onnx(staged.graphs["fp16" if fp16 else "fp32"], spec)
    plan = trt_build.serialize_engine(parsed, spec, workspace_mib=options.workspace_mib, fp16=fp16,
                                      timing_cache=stage / trt_build.timing_cache_name(trt.__version__, gpu))
    (stage / PLAN_FILE).write_bytes(plan)
    trt_build.plan_sidecar(trt.__version__, spec, fp16=fp16, gpu=gpu).save(stage / PLAN_SIDECAR_FILE)
    staged.spec = spec.replace(plan_sha256=file_sha256(stage / PLAN_FILE))
    staged.spec.save(stage / SPEC_FILE)
    staged.trt_version = trt.__version__
    _say(f"wrote {PLAN_FILE} ({_size(stage / PLAN_FILE)}, TensorRT {trt.__version__}, "
         f"{'fp16' if fp16 else 'fp32'}, batch {spec.min_batch}/{spec.opt_batch}/{spec.max_batch})")
    return ""


def _measure(reference: np.ndarray, staged: _Staged, targets: dict[str, tuple[str, str]],
             samples: np.ndarray) -> list[ParityResult]:
    """Parity of ``targets`` served from the staged folder; ParityError (nothing published) if below."""
    results = measure_parity(reference, staged.stage, targets, samples)
    for result in results:
        _say(f"parity {result.line()}")
    check_parity(results)
    return results


def _triton(staged: _Staged) -> None:
    """The Triton repository; the plan joins it only when Triton cannot send batches it rejects."""
    stage, spec = staged.stage, staged.spec
    plan = stage / PLAN_FILE if staged.trt_version else None
    if plan is not None:
        try:
            check_plan_for_triton(spec)
        except InputError as exc:
            _say(f"{TRITON_DIR}/: no {TENSORRT_CONFIG} config for embed: {exc}")
            plan = None
    write_triton_repo(stage / TRITON_DIR, spec, onnx_path=staged.graphs["fp32"], plan_path=plan,
                      tensorrt_version=staged.trt_version)


def _int8(model: Any, staged: _Staged, options: BuildOptions) -> None:
    """model.int8.onnx + int8_gate.json (fingerprinted in the spec) when asked; ParityError below its gate."""
    if options.int8 and options.calib_data is not None:
        staged.spec = int8.build(model, staged.spec, staged.graphs["fp32"], staged.stage, options.calib_data,
                                 say=_say, data_root=options.data_root)


def _check_int8_flags(options: BuildOptions) -> None:
    """The INT8 inputs without ``int8`` would be ignored silently: refuse them; ``int8`` needs its folder."""
    if options.int8:
        int8.check_calib_data(options.calib_data)
        return
    unused = [flag for flag, value in (("--calib-data", options.calib_data), ("--data-root", options.data_root))
              if value is not None]
    if unused:
        raise InputError(f"{' and '.join(unused)} only serve the INT8 graph, which this build does not write; "
                         f"pass --int8 too, or drop {' and '.join(unused)}")


def build(checkpoint: Path, out: Path, options: BuildOptions | None = None) -> BuildResult:
    """Export ``checkpoint`` into ``out``: every step staged, measured through the engine, then published.

    Raises the project's errors (ParityError when an artefact is below its threshold).
    """
    options = options or BuildOptions()
    _check_int8_flags(options)
    if options.require_trt:
        _load_runtime()  # fail before minutes of export work, not after
    check_out(out)
    clean_stale(out, _say)
    ckpt, model, spec = _load(checkpoint, options)
    if options.int8 and "matcher" in spec.extra:
        raise InputError(f"--int8 covers JLML-only checkpoints; {checkpoint} serves the "
                         f"{spec.extra['matcher']['kind']} matcher (LOMO's histogram counts and its XQDA map "
                         "are not quantised); export it without --int8, or train with --matcher jlml")
    identity = checkpoint_record(checkpoint, ckpt)
    check_unchanged(out, identity, options.force)
    spec = spec.replace(extra={**spec.extra, "provenance": provenance(checkpoint, ckpt, identity)})
    samples, images = parity_samples(spec, options.sample_images, ckpt.extra.get("data_root"))
    _say(f"parity on {images['count']} {'crops from ' + images['folder'] if images['folder'] else images['kind']}"
         f" ({images['from']})")
    reference = reference_embeddings(model, samples)
    with staging(out) as stage:
        staged = _Staged(stage, spec)
        _export(model, staged, samples, options)
        results = _measure(reference, staged, {name: ("ort", name) for name in staged.graphs}, samples)
        skipped = _plan(staged, options)
        if not skipped:  # the plan is published only after it ran through the engine's TensorRT backend
            plan_precision = "fp16" if "fp16" in staged.graphs else "fp32"
            results += _measure(reference, staged, {"plan": ("trt", plan_precision)}, samples)
        write_parity(stage / PARITY_FILE, results, {"onnx_sha256": staged.spec.onnx_sha256, "images": images})
        _int8(model, staged, options)
        _triton(staged)
        write_text(stage / MODEL_CARD_FILE, model_card(staged.spec, results, images))
        files = tuple(sorted(p.name for p in stage.iterdir()))
        publish(stage, out)
    return BuildResult(out, staged.spec, files, tuple(results), skipped)


def parse_args(argv: list[str] | None) -> tuple[Path, Path, BuildOptions]:
    defaults = ModelSpec()
    p = cli.parser(
        "python -m export.build_engine",
        "Export a JLML checkpoint to ONNX (FP32 and FP16), build a TensorRT plan when TensorRT "
        "is importable, measure each through the engine against PyTorch, and write a Triton "
        "model repository. Batch range and opset default to the checkpoint's spec.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint written by `python -m train` (last.pt)")
    p.add_argument("--out", type=Path, required=True,
                   help="artefact folder (created; a rerun replaces it as a whole, so it holds only artefacts)")
    for name, default in (("min", defaults.min_batch), ("opt", defaults.opt_batch), ("max", defaults.max_batch)):
        p.add_argument(f"--{name}-batch", type=int, default=None,
                       help=f"{name} batch of the TensorRT profile / Triton (spec default {default})")
    p.add_argument("--opset", type=int, default=None, help=f"ONNX opset (spec default {defaults.opset})")
    p.add_argument("--workspace-mib", type=cli.positive_int, default=DEFAULT_WORKSPACE_MIB,
                   help="TensorRT builder workspace limit in MiB (default %(default)s)")
    p.add_argument("--require-trt", action="store_true",
                   help="fail (exit 2) instead of skipping the plan when TensorRT or pycuda is not importable")
    p.add_argument("--no-simplify", dest="simplify", action="store_false",
                   help="keep the exported graphs as they are (no onnxslim)")
    p.add_argument("--sample-images", type=Path, default=None,
                   help=f"folder of person crops (resized to the spec) for parity; default: {DEFAULT_SAMPLES} "
                   "crops of the data the checkpoint was trained on where that folder is here, else random pixels "
                   "(parity.json's images says which)")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=True,
                   help="also export model.fp16.onnx and build the plan from it (default on)")
    p.add_argument("--int8", action="store_true", help="also write model.int8.onnx (QDQ INT8 for ONNX Runtime "
                   "on CPUs) and model.int8.trt.onnx (for TensorRT), published only if they pass the gate "
                   "(export/int8.py); needs --calib-data")
    p.add_argument("--calib-data", type=Path, default=None, help="folder of real person crops to calibrate INT8 on")
    p.add_argument("--force", action="store_true", help="replace an --out exported from this checkpoint path "
                   "although the file changed since (refused otherwise: the served model would change silently)")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding VIPeR for the INT8 gate's Rank-1 check (default: $JLML_DATA or ../shared/data)")
    args = vars(p.parse_args(argv))
    return args.pop("checkpoint"), args.pop("out"), BuildOptions(**args)


def main(argv: list[str] | None = None) -> int:
    checkpoint, out, options = parse_args(argv)

    def body() -> None:
        built = build(checkpoint, out, options)
        if built.plan_skipped:
            _say(f"skipped {PLAN_FILE}: {built.plan_skipped}")
        _say(f"done: {', '.join(built.files)} in {built.out}")

    return cli.run_cli(body, failed=(ParityError,), hint=f"nothing was published to {out}; run it again")


if __name__ == "__main__":
    sys.exit(main())
