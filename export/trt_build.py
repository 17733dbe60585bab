"""TensorRT builder: ONNX graph -> serialized engine (``model.plan``) plus its sidecar facts.

Written against TensorRT 10 and 11. TensorRT 11 networks are always explicit-batch and strongly
typed (no ``BuilderFlag.FP16``, no ``EXPLICIT_BATCH``), so FP16 comes from the FP16 ONNX graph; on
TensorRT 10 ``BuilderFlag.FP16`` is found with getattr and set as well. Every boolean return and every
parser error is checked and reported with its node. The runtime side lives in engine/backends.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.atomic import write_bytes
from engine.backends.plan_sidecar import PlanSidecar
from engine.errors import ArtifactError, BackendUnavailableError
from engine.spec import ModelSpec

# TensorRT logs at or above this severity are kept and quoted when a build step fails.
_KEPT_SEVERITIES = ("INTERNAL_ERROR", "ERROR")


def load_tensorrt() -> Any:
    """Import tensorrt, or raise BackendUnavailableError naming the extra and the reason."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(
            f"TensorRT is not importable ({exc}); on a CUDA machine pip install 'jlml-engine[trt]' "
            "(NVIDIA's package index), or build without the plan"
        ) from exc
    return tensorrt


@dataclass
class ParsedNetwork:
    """A parsed network with the objects that must outlive it (the parser owns the weights)."""

    builder: Any
    network: Any
    parser: Any
    logger: Any
    source: Path
    messages: list[str] = field(default_factory=list)


def _logger(trt: Any, messages: list[str]) -> Any:
    """A TensorRT logger that keeps error messages so failures can quote them."""
    kept = {getattr(trt.ILogger.Severity, name) for name in _KEPT_SEVERITIES}

    class _Keeper(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if severity in kept:
                messages.append(str(msg))

    return _Keeper()


def network_from_onnx(onnx_path: str | os.PathLike[str], spec: ModelSpec) -> ParsedNetwork:
    """Parse ``onnx_path`` into a TensorRT network, raising ArtifactError with every parser error."""
    import tensorrt as trt

    path = Path(onnx_path)
    messages: list[str] = []
    logger = _logger(trt, messages)
    builder = trt.Builder(logger)
    if builder is None:
        raise ArtifactError(f"trt.Builder failed (no usable GPU?): {messages}")
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10 and 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [parser.get_error(i) for i in range(parser.num_errors)]
        described = [f"node {e.node()} '{e.node_name()}' ({e.node_operator()}): {e.desc()} [{e.code()}]"
                     for e in errors]
        raise ArtifactError(
            f"TensorRT cannot parse {path}: {'; '.join(described) or messages}; check the opset and "
            "that every operator is supported by this TensorRT version"
        )
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if names != [spec.input_name]:
        raise ArtifactError(f"{path} has inputs {names}, expected ['{spec.input_name}']; re-export it")
    return ParsedNetwork(builder, network, parser, logger, path, messages)


def serialize_engine(parsed: ParsedNetwork, spec: ModelSpec, *, workspace_mib: int, fp16: bool,
                     timing_cache: str | os.PathLike[str] | None = None) -> bytes:
    """Build a serialized engine for the spec's batch range; load and save ``timing_cache`` if given.

    One optimisation profile covers min/opt/max batch; the timing cache is loaded when the file exists
    and written back after a successful build, so rebuilds on the same GPU skip tactic timing.
    """
    import tensorrt as trt

    builder = parsed.builder
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    fp16_flag = getattr(trt.BuilderFlag, "FP16", None)  # TensorRT 10 only; 11 follows the graph's types
    if fp16 and fp16_flag is not None:
        config.set_flag(fp16_flag)
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, *[(b, *spec.image_shape) for b in
                                         (spec.min_batch, spec.opt_batch, spec.max_batch)])
    if config.add_optimization_profile(profile) < 0:
        raise ArtifactError(f"TensorRT rejected the batch profile {spec.min_batch}/{spec.opt_batch}/"
                            f"{spec.max_batch}: {parsed.messages}; check --min/--opt/--max-batch")
    cache_path = Path(timing_cache) if timing_cache is not None else None
    cached = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""
    cache = config.create_timing_cache(cached)
    if cache is None or not config.set_timing_cache(cache, False):
        raise ArtifactError(f"TensorRT cannot use the timing cache {cache_path}: {parsed.messages}; "
                            "delete the file to start a fresh cache")
    plan = builder.build_serialized_network(parsed.network, config)
    if plan is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {parsed.source}: "
                            f"{'; '.join(parsed.messages) or 'no error logged'}; try a larger "
                            "--workspace-mib or a smaller --max-batch")
    if cache_path is not None:
        write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def gpu_identity() -> tuple[str, str]:
    """(GPU name, compute capability "major.minor") from pycuda or torch.cuda, else ("unknown", ...)."""
    try:
        import pycuda.driver as cuda

        cuda.init()
        device = cuda.Device(0)
        return str(device.name()), "{}.{}".format(*device.compute_capability())
    except Exception:  # noqa: BLE001 - pycuda missing, no driver or no device: try torch next
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0), "{}.{}".format(*torch.cuda.get_device_capability(0))
    except ImportError:
        pass
    return "unknown", "unknown"


def plan_sidecar(trt_version: str, spec: ModelSpec, *, fp16: bool) -> PlanSidecar:
    """The facts the engine's TensorRT backend checks before it deserialises the plan.

    ``spec.onnx_sha256`` (of ``model.onnx``) is recorded also for an FP16 plan built through
    ``model.fp16.onnx``: the plan serves that exported model, whichever graph fed the builder.
    """
    gpu_name, capability = gpu_identity()
    return PlanSidecar(
        tensorrt_version=trt_version, gpu_name=gpu_name, compute_capability=capability,
        onnx_sha256=spec.onnx_sha256, min_batch=spec.min_batch, opt_batch=spec.opt_batch,
        max_batch=spec.max_batch, precision="fp16" if fp16 else "fp32",
    )
