"""The one contract between a trained model, its exported artefacts and every backend.

A ``ModelSpec`` says what goes in (uint8 NHWC pixels of a fixed size), what comes out (unit-length
float32 embeddings), the tensor names, the batch range the artefacts were built for and which ONNX file
they came from. It is written beside every artefact as ``spec.json`` and read back by every backend;
CLI defaults come from here, no constant is repeated elsewhere.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import read_json_object, write_text
from .errors import InputError, SpecMismatchError

SPEC_VERSION = 1

# File names inside an artefact folder (what export writes and Embedder reads).
SPEC_FILE = "spec.json"
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model.fp16.onnx"
ONNX_INT8_FILE = "model.int8.onnx"  # QDQ INT8 graph for CPUs (export/int8.py), served by ONNX Runtime
ONNX_INT8_TRT_FILE = "model.int8.trt.onnx"  # QDQ INT8 graph for TensorRT (zero points 0), export/int8.py
INT8_PARITY_FILE = "int8_parity.npz"  # the INT8 gate's images and FP32 reference (engine/int8_guard.py)
PLAN_FILE = "model.plan"
PLAN_SIDECAR_FILE = "model.plan.json"
PARITY_FILE = "parity.json"
MODEL_CARD_FILE = "MODEL_CARD.md"  # data, protocol, metrics and limits, from the provenance (export)

# ImageNet statistics in [0, 1] pixel units; the model graph applies them, host code never does.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """Frozen description of a JLML embedding artefact (see module docstring)."""

    height: int = 160
    width: int = 64
    channels: int = 3
    embedding_dim: int = 1024
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    input_name: str = "images"
    output_name: str = "embeddings"
    layout: str = "NHWC"
    input_dtype: str = "uint8"
    output_dtype: str = "float32"
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 256
    opset: int = 17
    ir_version: int = 10
    onnx_sha256: str = ""
    onnx_fp16_sha256: str = ""  # of model.fp16.onnx, when export wrote one
    onnx_int8_sha256: str = ""  # of model.int8.onnx, when export wrote one (--int8 and its gate passed)
    onnx_int8_trt_sha256: str = ""  # of model.int8.trt.onnx (the TensorRT INT8 graph), likewise
    int8_parity_sha256: str = ""  # of int8_parity.npz, the INT8 gate's images and FP32 embeddings
    # Where the INT8 gate ran and what it asked: {"cpu": engine.cpu.cpu_features(), "min_cosine": ...,
    # "min_topk_agreement": ...}; engine/int8_guard.py re-checks where the CPU's 8-bit path differs.
    int8_gate: dict[str, Any] = field(default_factory=dict, compare=False)
    plan_sha256: str = ""  # of model.plan, when export built one
    spec_version: int = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        problems = []
        if self.height <= 0 or self.width <= 0 or self.channels != 3:
            problems.append(f"input {self.height}x{self.width}x{self.channels} (need positive HxWx3)")
        if len(self.mean) != self.channels or len(self.std) != self.channels or min(self.std) <= 0:
            problems.append(f"mean {self.mean} / std {self.std} (need {self.channels} values, std > 0)")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            problems.append(
                f"batch range min={self.min_batch} opt={self.opt_batch} max={self.max_batch} "
                "(need 1 <= min <= opt <= max)"
            )
        if self.embedding_dim <= 0:
            problems.append(f"embedding_dim {self.embedding_dim} (need > 0)")
        if self.layout != "NHWC" or self.input_dtype != "uint8":
            problems.append(f"input {self.layout} {self.input_dtype} (only uint8 NHWC is served)")
        if problems:
            raise InputError("invalid ModelSpec: " + "; ".join(problems))

    # ---- shapes and input validation -------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def check_images(self, images: Any) -> np.ndarray:
        """Return ``images`` as a C-contiguous uint8 (N, H, W, 3) array, or raise InputError.

        A single (H, W, 3) image is accepted and given a batch axis of one.
        """
        if not isinstance(images, np.ndarray):
            raise InputError(
                f"expected a numpy uint8 array of shape (N, {self.height}, {self.width}, 3), got "
                f"{type(images).__name__}; decode and resize images with engine.images.load_image"
            )
        if images.ndim == 3:
            images = images[None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self.image_shape:
            raise InputError(
                f"expected uint8 images of shape (N, {self.height}, {self.width}, 3), got "
                f"{images.dtype} {tuple(images.shape)}; pass HWC uint8 pixels resized to "
                f"{self.height}x{self.width}, preprocessing happens inside the model"
            )
        return np.ascontiguousarray(images)

    # ---- compatibility -----------------------------------------------------------------------
    def check_compatible(self, other: ModelSpec, what: str = "artefact") -> None:
        """Raise SpecMismatchError when ``other`` serves a different contract than ``self``."""
        keys = ("height", "width", "channels", "embedding_dim", "mean", "std", "input_name",
                "output_name", "layout", "input_dtype")
        diffs = [f"{k}: {getattr(other, k)!r} != {getattr(self, k)!r}" for k in keys
                 if getattr(self, k) != getattr(other, k)]
        if diffs:
            raise SpecMismatchError(
                f"{what} was made for another contract ({'; '.join(diffs)}); re-export it from the "
                "checkpoint you want to serve"
            )

    def check_fingerprint(self, path: str | os.PathLike[str], field_name: str,
                          data: bytes | None = None) -> None:
        """Raise SpecMismatchError unless ``path`` (or its bytes ``data``) has the sha256 recorded in
        ``field_name``; a fingerprint never recorded (an older export) is not checked."""
        expected = getattr(self, field_name)
        if not expected:
            return
        digest = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path)
        if digest != expected:
            raise SpecMismatchError(
                f"{path} has sha256 {digest[:12]}..., spec.json expects {expected[:12]}... ({field_name}); "
                "the file was replaced after export (or belongs to another export), re-export the folder"
            )

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    # ---- JSON --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecMismatchError(
                f"spec has unknown fields {unknown} (spec_version {data.get('spec_version')!r}, this "
                f"code reads version {SPEC_VERSION}); upgrade jlml-engine or re-export the artefact"
            )
        if data.get("spec_version", SPEC_VERSION) != SPEC_VERSION:
            raise SpecMismatchError(
                f"spec_version {data.get('spec_version')!r}, expected {SPEC_VERSION}; re-export it"
            )
        return cls(**data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelSpec:
        path = Path(path)
        if path.is_dir():
            path = path / SPEC_FILE
        data = read_json_object(path, "spec", "point at an artefact folder written by "
                                "`python -m export.build_engine`, or re-export it")
        return cls.from_dict(data)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
