"""Recording stand-ins for the TensorRT builder API, as TensorRT 10.x and 11.x present it.

``make_tensorrt("10.13.3.9")`` / ``make_tensorrt("11.4.0.106")`` return a module to install as
``tensorrt``: Builder, BuilderConfig, OnnxParser and IOptimizationProfile record every call in
``module.calls``, and refuse what the real API refuses:

- 11.x has no ``BuilderFlag.FP16``/``INT8``/``BF16`` and no ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH``
  (attribute access fails); every 11.x network is strongly typed.
- 10.x builds fail (``None`` + an ERROR log) for a strongly typed network with FP16/INT8/BF16 set.
- ``BuilderFlag.TF32`` is on in a fresh config (TensorRT's default).
- The ONNX parser fails for a file that is not ONNX, and for a UINT8 tensor that is not a network
  input or output (a non-Cast node reading the uint8 input), naming the node.
- ``set_shape`` raises ValueError for min > opt > max; a build without a profile fails.
- ``set_timing_cache(cache, False)`` fails for a cache made on another GPU/TensorRT (its header).

A "plan" is JSON saying how it was built, so tests can assert the flags and typing it got.
"""
from __future__ import annotations

import enum
import json
import types
from typing import Any

import onnx

GPU_KEY = "Fake GPU/sm9.0"


class _ErrorCode(enum.IntEnum):
    SUCCESS = 0
    MODEL_DESERIALIZE_FAILED = 5
    UNSUPPORTED_NODE = 8


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class _ParserError:
    def __init__(self, node: int, name: str, op: str, desc: str, code: _ErrorCode) -> None:
        self._facts = node, name, op, desc, code

    def node(self) -> int:
        return self._facts[0]

    def node_name(self) -> str:
        return self._facts[1]

    def node_operator(self) -> str:
        return self._facts[2]

    def desc(self) -> str:
        return self._facts[3]

    def code(self) -> _ErrorCode:
        return self._facts[4]


def make_tensorrt(version: str, *, gpu_key: str = GPU_KEY) -> types.ModuleType:
    """A stand-in ``tensorrt`` module of ``version`` (10.x or 11.x) on the GPU called ``gpu_key``."""
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    calls: list[tuple[Any, ...]] = []
    removed = {"FP16", "INT8", "BF16"} if major >= 11 else set()
    builder_flags = [n for n in ("FP16", "BF16", "INT8", "TF32", "REFIT", "STRICT_TYPES") if n not in removed]
    network_flags = ["STRONGLY_TYPED"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags, start=0)
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", network_flags, start=0)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
    reduced = {getattr(trt.BuilderFlag, n) for n in ("FP16", "INT8", "BF16") if n not in removed}

    class ILogger:
        Severity = _Severity

        def __init__(self) -> None:
            pass

    class Dims(tuple):
        pass

    class Network:
        def __init__(self, flags: int) -> None:
            strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
            self.strongly_typed = major >= 11 or bool(flags & strongly)
            self.inputs: list[types.SimpleNamespace] = []
            self.source = ""

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, index: int) -> types.SimpleNamespace:
            return self.inputs[index]

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            calls.append(("OnnxParser",))
            self.network, self.errors = network, []

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, index: int) -> _ParserError:
            return self.errors[index]

        def parse_from_file(self, path: str) -> bool:
            calls.append(("parse_from_file", path))
            try:
                graph = onnx.load(path).graph
            except Exception:  # noqa: BLE001 - what TensorRT reports for any unreadable file
                self.errors = [_ParserError(-1, "", "", "Failed to parse ONNX model from file",
                                            _ErrorCode.MODEL_DESERIALIZE_FAILED)]
                return False
            uint8 = {v.name for v in graph.input if v.type.tensor_type.elem_type == onnx.TensorProto.UINT8}
            self.errors = [_ParserError(i, n.name, n.op_type, "UINT8 is only supported as network input or "
                                        "output", _ErrorCode.UNSUPPORTED_NODE)
                           for i, n in enumerate(graph.node) if n.op_type != "Cast" and uint8 & set(n.input)]
            if self.errors:
                return False
            self.network.inputs = [types.SimpleNamespace(name=v.name) for v in graph.input]
            self.network.source = path
            return True

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple[Any, ...]] = {}

        def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
            calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))
            if not all(a <= b <= c for a, b, c in zip(low, opt, high, strict=True)):
                raise ValueError("min <= opt <= max does not hold")
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, key: str) -> None:
            self.key = key

        def serialize(self) -> memoryview:
            return memoryview(f"cache:{gpu_key}/trt{version}".encode())

    class IBuilderConfig:
        def __init__(self, logger: ILogger) -> None:
            self.logger, self.flags = logger, {trt.BuilderFlag.TF32}  # TF32 on by default
            self.profiles: list[IOptimizationProfile] = []
            self.cache: TimingCache | None = None

        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("set_memory_pool_limit", pool, size))

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", flag.name))
            self.flags.add(flag)

        def clear_flag(self, flag: Any) -> None:
            calls.append(("clear_flag", flag.name))
            self.flags.discard(flag)

        def get_flag(self, flag: Any) -> bool:
            return flag in self.flags

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            calls.append(("add_optimization_profile",))
            if not profile.shapes:
                return -1
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, blob: bytes) -> TimingCache | None:
            text = bytes(blob).decode(errors="replace")
            if blob and not text.startswith("cache:"):
                return None
            return TimingCache(text.removeprefix("cache:"))

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            calls.append(("set_timing_cache", cache.key, ignore_mismatch))
            if cache.key and cache.key != f"{gpu_key}/trt{version}" and not ignore_mismatch:
                self.logger.log(_Severity.ERROR, "Timing cache was created on a different device/version")
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            assert self.cache is not None
            return TimingCache(f"{gpu_key}/trt{version}")

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            calls.append(("Builder",))
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig(self.logger)

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: Network, config: IBuilderConfig) -> memoryview | None:
            calls.append(("build_serialized_network",))
            error = None
            if network.strongly_typed and config.flags & reduced:
                error = ("BuilderFlag::kFP16/kINT8/kBF16 are not allowed with strongly typed networks: "
                         "precision is set by the network's types")
            elif not config.profiles:
                error = "Network has dynamic or shape inputs, but no optimization profile has been defined."
            if error:
                self.logger.log(_Severity.ERROR, error)
                return None
            built = {"source": network.source, "strongly_typed": network.strongly_typed,
                     "flags": sorted(f.name for f in config.flags), "profile": config.profiles[0].shapes,
                     "tensorrt": version}
            return memoryview(json.dumps(built).encode())

    trt.__dict__.update(
        __version__=version, calls=calls, ILogger=ILogger, Dims=Dims, Builder=Builder, OnnxParser=OnnxParser,
        IBuilderConfig=IBuilderConfig, IOptimizationProfile=IOptimizationProfile, ErrorCode=_ErrorCode,
    )
    return trt


def make_pycuda(name: str = "Fake GPU", capability: tuple[int, int] = (9, 0), driver: int = 12080,
                ) -> types.ModuleType:
    """A stand-in ``pycuda.driver`` that names one GPU (what export records in the sidecar)."""
    cuda = types.ModuleType("pycuda.driver")
    device = types.SimpleNamespace(name=lambda: name, compute_capability=lambda: capability)
    cuda.__dict__.update(init=lambda: None, Device=lambda index: device, get_driver_version=lambda: driver,
                         Error=type("Error", (Exception,), {}))
    return cuda
