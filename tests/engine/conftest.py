"""Fixtures for the backend and Embedder tests: a tiny embedding model and its artefact folder.

The model has the served contract (uint8 NHWC in, preprocessing and L2 normalisation inside, unit
vectors out) at 32x16 pixels, so exporting and running it takes well under a second.
"""
from __future__ import annotations

import copy
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from engine.spec import (
    ONNX_FILE,
    ONNX_FP16_FILE,
    PLAN_FILE,
    PLAN_SIDECAR_FILE,
    SPEC_FILE,
    ModelSpec,
    file_sha256,
)

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
nn, F = torch.nn, torch.nn.functional

TINY_SPEC = ModelSpec(height=32, width=16, embedding_dim=24, min_batch=1, opt_batch=16, max_batch=64)


class TinyEmbedder(nn.Module):
    """uint8 NHWC -> /255, mean/std -> NCHW conv -> global pool -> linear -> unit vectors."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 32, 3, padding=1)
        self.fc = nn.Linear(32, spec.embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        dtype = self.conv.weight.dtype  # a .half() copy exports the FP16-compute graph
        # Cast first: TensorRT's ONNX parser takes UINT8 only as a network input or output.
        x = images.to(dtype).permute(0, 3, 1, 2) / 255
        x = (x - self.mean.to(dtype)) / self.std.to(dtype)
        x = F.relu(self.conv(x)).mean(dim=(2, 3))
        return F.normalize(self.fc(x).float(), dim=1)


def export_tiny(module: nn.Module, path: Path, spec: ModelSpec) -> None:
    """Export with the artefact's names, dynamic batch, opset 17, IR 10 (what ORT here loads)."""
    example = torch.zeros((2, *spec.image_shape), dtype=torch.uint8)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but is what export/ uses
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=spec.opset,
                          input_names=[spec.input_name], output_names=[spec.output_name],
                          dynamic_axes={spec.input_name: {0: "batch"}, spec.output_name: {0: "batch"}})
    model = onnx.load(str(path))
    model.ir_version = spec.ir_version
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def tiny_module() -> nn.Module:
    torch.manual_seed(0)
    return TinyEmbedder(TINY_SPEC).eval()


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory, tiny_module: nn.Module) -> Path:
    """An artefact folder as export/ writes it: spec.json, model.onnx and model.fp16.onnx."""
    folder = tmp_path_factory.mktemp("artefact")
    export_tiny(tiny_module, folder / ONNX_FILE, TINY_SPEC)
    half = TinyEmbedder(TINY_SPEC)
    half.load_state_dict(tiny_module.state_dict())
    export_tiny(half.half().eval(), folder / ONNX_FP16_FILE, TINY_SPEC)
    TINY_SPEC.replace(onnx_sha256=file_sha256(folder / ONNX_FILE)).save(folder / SPEC_FILE)
    return folder


@pytest.fixture(scope="session")
def other_artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An artefact of another model (other weights) with the same spec and embedding size."""
    folder = tmp_path_factory.mktemp("other-artefact")
    torch.manual_seed(1)
    export_tiny(TinyEmbedder(TINY_SPEC).eval(), folder / ONNX_FILE, TINY_SPEC)
    TINY_SPEC.replace(onnx_sha256=file_sha256(folder / ONNX_FILE)).save(folder / SPEC_FILE)
    return folder


@pytest.fixture(scope="session")
def spec(artifact_dir: Path) -> ModelSpec:
    return ModelSpec.load(artifact_dir)


def _images(n: int, seed: int = 0) -> np.ndarray:
    """Images that differ in colour and texture, so their embeddings have distinct neighbours."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(n, 1, 1, 3))
    noise = rng.integers(-60, 61, size=(n, *TINY_SPEC.image_shape))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def make_images():
    """``make_images(n, seed=0)`` -> uint8 (n, 32, 16, 3) images for the tiny spec."""
    return _images


@pytest.fixture(scope="session")
def reference(tiny_module: nn.Module):
    """``reference(images)`` -> the tiny module's own fp32 CPU embeddings, the ground truth.

    It runs a private copy: the torch backend moves the module it serves to its device.
    """
    module = copy.deepcopy(tiny_module)

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(images)).numpy()
    return run


@pytest.fixture(scope="session")
def plan_folder(artifact_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """``plan_folder(precision)`` -> a copy of the artefact with a TensorRT plan built by export/.

    Only the TensorRT conformance cases ask for it, and only where TensorRT runs.
    """
    built: dict[str, Path] = {}

    def build(precision: str) -> Path:
        if precision not in built:
            trt_build = pytest.importorskip("export.trt_build")
            folder = tmp_path_factory.mktemp(f"plan-{precision}")
            shutil.copytree(artifact_dir, folder, dirs_exist_ok=True)
            spec, fp16 = ModelSpec.load(folder), precision == "fp16"
            parsed = trt_build.network_from_onnx(folder / (ONNX_FP16_FILE if fp16 else ONNX_FILE), spec)
            (folder / PLAN_FILE).write_bytes(trt_build.serialize_engine(parsed, spec, workspace_mib=256,
                                                                        fp16=fp16))
            version = trt_build.load_tensorrt().__version__
            trt_build.plan_sidecar(version, spec, fp16=fp16).save(folder / PLAN_SIDECAR_FILE)
            built[precision] = folder
        return built[precision]
    return build
