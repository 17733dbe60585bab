"""A tiny real JLML checkpoint and its exported graphs, built once per test session (seconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.spec import ModelSpec
from export.fp16 import to_fp16
from export.onnx_export import onnx_from_checkpoint
from train.checkpoint import save_checkpoint
from train.config import JLMLConfig
from train.model import JLML

TINY = dict(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)
BATCHES = dict(min_batch=1, opt_batch=8, max_batch=64)


@pytest.fixture(scope="session")
def tiny_model() -> JLML:
    torch.manual_seed(0)
    model = JLML(JLMLConfig(**TINY), num_classes=5).eval()
    # Fresh BatchNorm statistics are 0/1; give them real values so parity covers the folded BN path.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="session")
def tiny_spec(tiny_model: JLML) -> ModelSpec:
    return tiny_model.spec.replace(**BATCHES)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_model: JLML) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    return save_checkpoint(path, tiny_model, tiny_model.cfg, epoch=3, num_classes=5)


@pytest.fixture(scope="session")
def fp32_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_model: JLML, tiny_spec: ModelSpec) -> Path:
    return onnx_from_checkpoint(tiny_model, tiny_spec, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="session")
def fp16_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_model: JLML, tiny_spec: ModelSpec) -> Path:
    return to_fp16(tiny_model, tiny_spec, tmp_path_factory.mktemp("onnx16") / "model.fp16.onnx")


def _random_images(n: int, spec: ModelSpec, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *spec.image_shape), dtype=np.uint8)


def _torch_embed(model: JLML, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="session")
def random_images():
    """``random_images(n, spec, seed=0)``: uint8 (n, H, W, 3) pixels."""
    return _random_images


@pytest.fixture(scope="session")
def torch_embed():
    """``torch_embed(model, images)``: the PyTorch reference embeddings as numpy."""
    return _torch_embed
