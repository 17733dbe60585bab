"""The TensorRT plan's sidecar (``model.plan.json``) and the checks made before deserialising a plan.

A TensorRT engine is only valid for the TensorRT version and GPU it was built on, and only serves the
ONNX graph it was built from. Deserialising a foreign plan can crash or, worse, answer wrongly, so
every fact is compared first and each mismatch is reported with how to fix it. This module needs
neither tensorrt nor a GPU, so export writes the sidecar with it and the checks are tested anywhere.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import read_json_object, write_text
from ..errors import ArtifactError, SpecMismatchError
from ..spec import ModelSpec
from .base import check_precision


def format_capability(capability: str | tuple[int, int] | list[int]) -> str:
    """``(8, 6)``, ``[8, 6]`` or ``"8.6"`` -> ``"8.6"``: one spelling, so comparisons are exact."""
    if isinstance(capability, str):
        return capability
    major, minor = capability
    return f"{int(major)}.{int(minor)}"


@dataclass(frozen=True)
class PlanSidecar:
    """What a plan was built for: TensorRT version, GPU, source ONNX, batch profile and precision.

    ``onnx_sha256`` is always the spec's fingerprint of ``model.onnx``, also for an fp16 plan built
    through ``model.fp16.onnx``: the plan serves that exported model, whichever graph fed the builder.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    onnx_sha256: str
    min_batch: int
    opt_batch: int
    max_batch: int
    precision: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "compute_capability", format_capability(self.compute_capability))
        if not re.fullmatch(r"\d+\.\d+", self.compute_capability):
            raise ArtifactError(
                f"plan sidecar compute capability {self.compute_capability!r} is not 'major.minor'; a plan "
                "only loads on the GPU it was built for, so rebuild it where pycuda or CUDA torch can name it"
            )
        check_precision(self.precision)
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ArtifactError(
                f"plan sidecar batch profile min={self.min_batch} opt={self.opt_batch} "
                f"max={self.max_batch} is not 1 <= min <= opt <= max; rebuild the engine"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanSidecar:
        names = [f.name for f in dataclasses.fields(cls)]
        missing, unknown = sorted(set(names) - set(data)), sorted(set(data) - set(names))
        if missing or unknown:
            raise ArtifactError(
                f"plan sidecar has missing fields {missing} and unknown fields {unknown}, expected "
                f"exactly {names}; rebuild the engine with `python -m export.build_engine`"
            )
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PlanSidecar:
        data = read_json_object(path, "plan sidecar", "a TensorRT plan without a readable sidecar cannot "
                                "be checked; rebuild the engine with `python -m export.build_engine`")
        return cls.from_dict(data)

    def mismatches(self, spec: ModelSpec, *, tensorrt_version: str, gpu_name: str,
                   compute_capability: str | tuple[int, int], precision: str | None = None) -> list[str]:
        """Every way this plan does not fit ``spec`` and this machine, one phrase each; [] when it fits."""
        wanted = {
            "tensorrt_version": tensorrt_version,
            "gpu_name": gpu_name,
            "compute_capability": format_capability(compute_capability),
            "onnx_sha256": spec.onnx_sha256,
        }
        if precision is not None:
            wanted["precision"] = precision
        return [f"{k}: plan has {getattr(self, k)!r}, here {v!r}" for k, v in wanted.items()
                if getattr(self, k) != v]

    def check(self, spec: ModelSpec, *, tensorrt_version: str, gpu_name: str,
              compute_capability: str | tuple[int, int], precision: str | None = None) -> None:
        """Raise SpecMismatchError listing every way this plan does not fit ``spec`` and this machine."""
        diffs = self.mismatches(spec, tensorrt_version=tensorrt_version, gpu_name=gpu_name,
                                compute_capability=compute_capability, precision=precision)
        if diffs:
            raise SpecMismatchError(
                "TensorRT plan does not fit (" + "; ".join(diffs) + "); rebuild it on this machine "
                "from the artefact's model.onnx with `python -m export.build_engine`"
            )
