"""TensorRT builder: ONNX graph -> serialized engine (``model.plan``) plus its sidecar facts.

Written against TensorRT 10 and 11. Networks are strongly typed on both (``STRONGLY_TYPED``: every
tensor keeps the type the ONNX graph gives it, so the FP32 preprocessing and final normalisation stay
FP32 and FP16 comes only from the FP16 ONNX graph). TensorRT 11 is always strongly typed and has no
``BuilderFlag.FP16``; TensorRT 10 refuses that flag on a strongly typed network, so it is never set.
FP32 plans clear ``BuilderFlag.TF32`` (on by default), or Ampere/Hopper would run their convolutions
in TF32. Every boolean return and every parser error is checked and reported with its node. The
runtime side lives in engine/backends.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from engine.atomic import write_bytes
from engine.backends.optional import optional_import
from engine.backends.plan_sidecar import PlanSidecar
from engine.errors import ArtifactError, BackendUnavailableError
from engine.spec import ModelSpec

if TYPE_CHECKING:
    import tensorrt as trt

# TensorRT logs at or above this severity are kept and quoted when a build step fails.
_KEPT_SEVERITIES = ("INTERNAL_ERROR", "ERROR")
_log = logging.getLogger(__name__)


def load_tensorrt() -> ModuleType:
    """The real tensorrt module (it has ``Builder``), or BackendUnavailableError naming the extra."""
    return optional_import("tensorrt", needed_for="building the TensorRT plan (or build without it)",
                           attribute="Builder")


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU a plan and its timing cache are built for."""

    name: str
    compute_capability: str  # "major.minor"
    cuda: str  # CUDA driver version "major.minor"


def gpu_identity() -> GpuIdentity:
    """GPU 0's name, compute capability and CUDA driver version, from pycuda only; else an error.

    One source: the engine's TensorRT backend names the GPU through pycuda when it checks the sidecar,
    and a second spelling (CUDA torch's runtime version) would give one machine two timing-cache names.
    A plan is built only where pycuda imports anyway (it runs through the engine before publishing).
    Never "unknown": a sidecar must name the GPU, or the plan could never be checked and loaded.
    """
    cuda = optional_import("pycuda.driver", needed_for="naming the GPU the plan is built for")
    try:
        cuda.init()
        device, version = cuda.Device(0), cuda.get_driver_version()
        return GpuIdentity(str(device.name()), "{}.{}".format(*device.compute_capability()),
                           f"{version // 1000}.{version % 1000 // 10}")
    except cuda.Error as exc:
        raise BackendUnavailableError(
            f"cannot name the GPU the plan is built for: the CUDA driver failed ({exc}); build the plan on "
            "a machine whose GPU pycuda sees"
        ) from exc


def timing_cache_name(trt_version: str, gpu: GpuIdentity) -> str:
    """A timing cache file name that only this GPU model, CUDA and TensorRT version share.

    A cache from another GPU or version makes ``set_timing_cache`` fail, so one folder can hold the
    caches of several machines side by side.
    """
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", gpu.name).strip("-")
    return f"timing-{slug}-sm{gpu.compute_capability}-cuda{gpu.cuda}-trt{trt_version}.cache"


@dataclass
class ParsedNetwork:
    """A parsed network with the objects that must outlive it (the parser owns the weights)."""

    builder: trt.Builder
    network: trt.INetworkDefinition
    parser: trt.OnnxParser
    logger: trt.ILogger
    source: Path
    messages: list[str] = field(default_factory=list)


def _logger(messages: list[str]) -> trt.ILogger:
    """A TensorRT logger that keeps error messages so failures can quote them."""
    import tensorrt as trt

    kept = {getattr(trt.ILogger.Severity, name) for name in _KEPT_SEVERITIES}

    class _Keeper(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in kept:
                messages.append(str(msg))

    return _Keeper()


def network_from_onnx(onnx_path: str | os.PathLike[str], spec: ModelSpec) -> ParsedNetwork:
    """Parse ``onnx_path`` into a strongly typed network, raising ArtifactError with every parser error."""
    load_tensorrt()
    import tensorrt as trt

    path = Path(onnx_path)
    messages: list[str] = []
    logger = _logger(messages)
    builder = trt.Builder(logger)
    if builder is None:
        raise ArtifactError(f"trt.Builder failed (no usable GPU?): {messages}")
    # Explicit batch is the only mode in 10 and 11; strongly typed is a choice in 10, always on in 11.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
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


def _profile(parsed: ParsedNetwork, config: trt.IBuilderConfig, spec: ModelSpec) -> None:
    """One optimisation profile for the spec's min/opt/max batch, or ArtifactError."""
    import tensorrt as trt

    profile = parsed.builder.create_optimization_profile()
    profile.set_shape(spec.input_name, *[trt.Dims([b, *spec.image_shape]) for b in
                                         (spec.min_batch, spec.opt_batch, spec.max_batch)])
    if config.add_optimization_profile(profile) < 0:
        raise ArtifactError(f"TensorRT rejected the batch profile {spec.min_batch}/{spec.opt_batch}/"
                            f"{spec.max_batch}: {parsed.messages}; check --min/--opt/--max-batch")


def _timing_cache(config: trt.IBuilderConfig, path: Path | None, messages: list[str]) -> None:
    """Give ``config`` the timing cache saved at ``path``; one that does not fit is dropped with a warning.

    ``set_timing_cache(cache, ignore_mismatch=False)`` refuses a cache of another GPU, CUDA or
    TensorRT version; the build then starts from an empty cache instead of failing.
    """
    cached = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(cached)
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if cached:
        _log.warning("timing cache %s does not fit this GPU/CUDA/TensorRT (%s); starting with an empty "
                     "cache", path, "; ".join(messages) or "refused")
        cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        raise ArtifactError(f"TensorRT cannot create an empty timing cache: {messages}")


def serialize_engine(parsed: ParsedNetwork, spec: ModelSpec, *, workspace_mib: int, fp16: bool,
                     timing_cache: str | os.PathLike[str] | None = None) -> bytes:
    """Build a serialized engine for the spec's batch range; load and save ``timing_cache`` if given.

    ``fp16`` only says which graph was parsed: the precision is in its tensor types (strong typing),
    so no precision flag is set; an FP32 plan clears TF32. The timing cache is loaded when the file
    exists and fits, and written back after a successful build.
    """
    import tensorrt as trt

    config = parsed.builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if not fp16:
        config.clear_flag(trt.BuilderFlag.TF32)  # on by default: FP32 convolutions would run in TF32
    _profile(parsed, config, spec)
    cache_path = Path(timing_cache) if timing_cache is not None else None
    _timing_cache(config, cache_path, parsed.messages)
    plan = parsed.builder.build_serialized_network(parsed.network, config)
    if plan is None:
        raise ArtifactError(f"TensorRT failed to build an engine from {parsed.source}: "
                            f"{'; '.join(parsed.messages) or 'no error logged'}; try a larger "
                            "--workspace-mib or a smaller --max-batch")
    if cache_path is not None:
        write_bytes(cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def plan_sidecar(trt_version: str, spec: ModelSpec, *, fp16: bool, gpu: GpuIdentity | None = None,
                 ) -> PlanSidecar:
    """The facts the engine's TensorRT backend checks before it deserialises the plan.

    ``spec.onnx_sha256`` (of ``model.onnx``) is recorded also for an FP16 plan built through
    ``model.fp16.onnx``: the plan serves that exported model, whichever graph fed the builder.
    """
    gpu = gpu or gpu_identity()
    return PlanSidecar(
        tensorrt_version=trt_version, gpu_name=gpu.name, compute_capability=gpu.compute_capability,
        onnx_sha256=spec.onnx_sha256, min_batch=spec.min_batch, opt_batch=spec.opt_batch,
        max_batch=spec.max_batch, precision="fp16" if fp16 else "fp32",
    )
