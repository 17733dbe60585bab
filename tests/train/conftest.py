"""Tiny models and images shared by the train tests (build in milliseconds)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train.config import JLMLConfig

TINY = dict(height=32, width=16, stripes=4, widths=(4, 8), blocks=(1, 1), feat_dim=16, dropout=0.0)


@pytest.fixture
def tiny_cfg() -> JLMLConfig:
    return JLMLConfig(**TINY)


@pytest.fixture
def tiny_images() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy(rng.integers(0, 256, (6, 32, 16, 3), dtype=np.uint8))
