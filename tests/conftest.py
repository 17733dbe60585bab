"""The ``gpu`` marker means "needs a CUDA GPU": such tests skip here with the reason, in one place."""
from __future__ import annotations

import pytest


def _cuda_missing() -> str | None:
    try:
        import torch
    except ImportError:
        return "needs PyTorch with CUDA (torch is not installed)"
    return None if torch.cuda.is_available() else "needs a CUDA GPU (PyTorch sees none)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    reason = _cuda_missing() if gpu_items else None
    for item in gpu_items if reason else []:
        item.add_marker(pytest.mark.skip(reason=reason))
