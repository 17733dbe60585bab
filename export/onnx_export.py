"""PyTorch model -> checked ONNX file that serves the ``ModelSpec`` contract.

The model graph already holds preprocessing (uint8 NHWC -> normalised NCHW) and the final L2
normalisation, so the exported graph takes raw pixels and returns unit vectors; this module only pins
the names, the dynamic batch axis, the opset and the IR version, and checks the result against the spec
so a wrong artefact fails here instead of in a backend.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from engine.atomic import write_with
from engine.backends.optional import optional_import
from engine.errors import ArtifactError, BackendUnavailableError, InputError, SpecMismatchError
from engine.spec import ModelSpec

if TYPE_CHECKING:
    import torch

# ONNX Runtime in this project loads IR versions up to 13; onnx writes 14 by default.
MAX_IR_VERSION = 13
MIN_OPSET = 17
MAX_OPSET = 20  # the most torch.onnx.export(dynamo=False), the exporter used here, writes
BATCH_AXIS = "batch"
# Simplification must not move any output by more than this (it only folds constants).
SIMPLIFY_ATOL = 1e-5


@dataclass(frozen=True)
class CheckReport:
    """What ``check_and_simplify`` did, for the progress line and the tests."""

    path: Path
    nodes_before: int
    nodes_after: int
    simplified: bool
    max_abs_diff: float
    note: str = ""


def onnx_from_checkpoint(
    model: torch.nn.Module, spec: ModelSpec, path: str | os.PathLike[str], *,
    opset: int | None = None, ir_version: int | None = None,
) -> Path:
    """Export a checkpoint's model (uint8 NHWC in, unit vectors out) to ``path`` atomically.

    A half-precision model gives the FP16 graph: its weights are FP16 while the model keeps the uint8
    cast and the final normalisation in FP32, so the graph's I/O stays uint8/FP32.
    The legacy TorchScript exporter is used on purpose: the dynamo exporter needs onnxscript (not a
    dependency here) and renames tensors, while this one honours ``input_names``/``dynamic_axes``.
    """
    import torch

    opset = spec.opset if opset is None else opset
    ir_version = spec.ir_version if ir_version is None else ir_version
    check_versions(opset, ir_version)
    # Batch 2 so the exporter cannot specialise the batch axis to 1.
    dummy = torch.zeros((2, *spec.image_shape), dtype=torch.uint8)
    axes = {spec.input_name: {0: BATCH_AXIS}, spec.output_name: {0: BATCH_AXIS}}

    def export(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", DeprecationWarning)
            # LOMO's strided slices are left unfolded (they take the batch's pixels): nothing to act on
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                model.eval(), (dummy,), str(tmp), dynamo=False, input_names=[spec.input_name],
                output_names=[spec.output_name], dynamic_axes=axes, opset_version=opset,
                do_constant_folding=True,
            )
        proto = _pin_output_dims(onnx.load(str(tmp)))
        proto.ir_version = ir_version
        onnx.save(proto, str(tmp))

    try:
        return write_with(path, export)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SpecMismatchError(
            f"exporting the model with input uint8 {(2, *spec.image_shape)} failed: {exc}; the "
            "checkpoint's spec must describe the input size its model was built for"
        ) from exc


def _pin_output_dims(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace the exporter's symbolic non-batch output dims (``Divembeddings_dim_1``) by inferred sizes.

    TensorRT and Triton read the embedding size from the graph, so it must be a number, not a name.
    """
    for output in proto.graph.output:
        for dim in output.type.tensor_type.shape.dim[1:]:
            if dim.HasField("dim_param"):
                dim.Clear()
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    for output, known in zip(proto.graph.output, inferred.graph.output, strict=True):
        output.CopyFrom(known)
    return proto


def check_versions(opset: int, ir_version: int) -> None:
    """Reject opset/IR pairs the exporter or the runtimes here cannot handle, before spending time on an
    export; the message names the opsets that work with ``ir_version``."""
    usable = [o for o in range(MIN_OPSET, MAX_OPSET + 1) if _min_ir(o) <= ir_version]
    choose = f"pass --opset {usable[0]} to {usable[-1]}" if usable else f"pass --opset {MIN_OPSET}"
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise InputError(f"--opset {opset} is not supported: this export writes opsets {MIN_OPSET} to {MAX_OPSET} "
                         f"(torch's TorchScript exporter stops at {MAX_OPSET}); {choose}")
    needed_ir = _min_ir(opset)
    if not needed_ir <= ir_version <= MAX_IR_VERSION:
        raise InputError(
            f"opset {opset} with IR version {ir_version} is not exportable: need opset >= {MIN_OPSET} "
            f"and {needed_ir} <= IR version <= {MAX_IR_VERSION} (ONNX Runtime here loads at most IR "
            f"{MAX_IR_VERSION}); {choose} or set ModelSpec.ir_version"
        )


def _min_ir(opset: int) -> int:
    return int(onnx.helper.find_min_ir_version_for([onnx.helper.make_opsetid("", opset)]))


def check_graph_io(proto: onnx.ModelProto, spec: ModelSpec, *, what: str = "ONNX graph") -> None:
    """Raise SpecMismatchError unless the graph takes uint8 (N,H,W,3) and returns float32 (N,D)."""
    expected = {
        spec.input_name: (onnx.TensorProto.UINT8, [BATCH_AXIS, *spec.image_shape]),
        spec.output_name: (onnx.TensorProto.FLOAT, [BATCH_AXIS, spec.embedding_dim]),
    }
    got = {v.name: _describe(v) for v in [*proto.graph.input, *proto.graph.output]}
    problems = []
    for name, (dtype, dims) in expected.items():
        if name not in got:
            problems.append(f"no tensor '{name}' (has {sorted(got)})")
        elif got[name] != (dtype, dims):
            problems.append(f"'{name}' is {_fmt(*got[name])}, expected {_fmt(dtype, dims)}")
    if len(got) != len(expected):
        problems.append(f"I/O tensors {sorted(got)}, expected exactly {sorted(expected)}")
    if problems:
        raise SpecMismatchError(
            f"{what} does not serve the spec: {'; '.join(problems)}; re-export from a checkpoint whose "
            "spec matches its model"
        )


def check_input_cast_first(proto: onnx.ModelProto, spec: ModelSpec, *, what: str = "ONNX graph") -> None:
    """Raise ArtifactError unless every node reading the uint8 input is a Cast.

    TensorRT's ONNX parser accepts UINT8 only as a network input or output ("UINT8 is only supported as
    network input or output"), so a Transpose or Reshape on the raw pixels before the Cast makes the
    graph unbuildable there although ONNX Runtime runs it.
    """
    readers = [n for n in proto.graph.node if spec.input_name in n.input]
    wrong = [f"{n.op_type} '{n.name}'" for n in readers if n.op_type != "Cast"]
    if not readers or wrong:
        raise ArtifactError(
            f"{what}: the uint8 input '{spec.input_name}' is read by {wrong or 'no node'}, expected only "
            "Cast nodes; cast the pixels to float before any permute/reshape in the model's forward"
        )


def _describe(value: onnx.ValueInfoProto) -> tuple[int, list[str | int]]:
    tensor = value.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in tensor.shape.dim]
    return tensor.elem_type, [BATCH_AXIS if isinstance(d, str) else d for d in dims[:1]] + dims[1:]


def _fmt(dtype: int, dims: list[str | int]) -> str:
    return f"{onnx.helper.tensor_dtype_to_np_dtype(dtype)} {tuple(dims)}"


def check_and_simplify(
    path: str | os.PathLike[str], spec: ModelSpec, *, simplify: bool = True,
    samples: np.ndarray | None = None,
) -> CheckReport:
    """Full-check ``path``, infer shapes, verify its I/O and (if onnxslim is installed) simplify it.

    The simplified graph replaces the file only if it gives the same outputs on ``samples`` (within
    ``SIMPLIFY_ATOL``) and still passes the checks, so simplification can never silently change results.
    """
    path = Path(path)
    proto = _checked(onnx.load(str(path)), spec, path)
    before = len(proto.graph.node)
    if not simplify:
        return CheckReport(path, before, before, False, 0.0, "simplification off (--no-simplify)")
    try:
        onnxslim = optional_import("onnxslim", needed_for="simplification")
    except BackendUnavailableError as exc:
        return CheckReport(path, before, before, False, 0.0, str(exc))
    slim = onnxslim.slim(proto)
    slim.ir_version = proto.ir_version
    slim = _checked(slim, spec, path)
    if samples is None:
        samples = np.random.default_rng(0).integers(0, 256, (3, *spec.image_shape), dtype=np.uint8)
    trial = path.with_name(f".{path.stem}.slim{path.suffix}")
    try:
        onnx.save(slim, str(trial))
        diff = float(np.abs(serve_graph(path, spec, samples) - serve_graph(trial, spec, samples)).max())
        if not diff <= SIMPLIFY_ATOL:
            raise ArtifactError(
                f"onnxslim changed the outputs of {path} by {diff:.3g} (allowed {SIMPLIFY_ATOL}); rerun "
                "with --no-simplify and report the onnxslim version"
            )
        os.replace(trial, path)
    finally:
        trial.unlink(missing_ok=True)
    return CheckReport(path, before, len(slim.graph.node), True, diff)


def serve_graph(path: str | os.PathLike[str], spec: ModelSpec, images: np.ndarray) -> np.ndarray:
    """Embed ``images`` with the ONNX file at ``path`` through the engine's own ONNX Runtime backend (CPU)."""
    from engine.backends.ort import OrtBackend

    with OrtBackend(Path(path).parent, spec, device="cpu", graph=path) as backend:
        return backend(images)


def _checked(proto: onnx.ModelProto, spec: ModelSpec, path: Path) -> onnx.ModelProto:
    try:
        onnx.checker.check_model(proto, full_check=True)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ArtifactError(f"{path} fails onnx.checker/shape inference: {exc}; re-export it") from exc
    check_graph_io(inferred, spec, what=str(path))
    check_input_cast_first(inferred, spec, what=str(path))
    return inferred

