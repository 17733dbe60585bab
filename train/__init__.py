"""JLML training: ``train.run(config, options, data, out)`` trains, evaluates and returns a ``TrainResult``.

The names below are imported on first use, so ``import train`` stays light (no torch until needed).
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {"run": "runner", "DataChoice": "runner", "Pretrain": "runner", "TrainResult": "runner",
         "TrainOptions": "loop", "Runtime": "loop", "JLMLConfig": "config"}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
