"""PyTorch reference backend: runs the ``nn.Module`` it is handed (engine never imports train/).

The module's forward takes uint8 NHWC tensors and returns unit vectors, exactly like the exported
graph, so this backend is what every other backend is compared with.

Precision: "fp32" runs the module as is, in IEEE FP32: cuDNN's TF32 convolutions (PyTorch's default)
and TF32/bf16 matrix products are switched off around each call and the caller's settings restored.
"fp16" runs it under CUDA autocast, which keeps the module's own casts and its final L2
normalisation in float32 the way the FP16 ONNX graph does. fp16 is rejected on CPU: half-precision convolutions there are missing or far slower than fp32, so it
would be neither a faithful reference nor a fast one.
"""
from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from ..device import ieee_fp32, torch_device
from ..errors import InputError
from ..spec import ModelSpec
from .base import BaseBackend, check_precision
from .optional import optional_import


def _import_torch() -> Any:
    return optional_import("torch", needed_for="the 'torch' backend")


def available(device: str = "auto") -> tuple[bool, str]:
    """Whether PyTorch can run on ``device`` here, and why (not)."""
    torch = _import_torch()
    return True, f"torch {torch.__version__} on {torch_device(device, torch)}"


class TorchBackend(BaseBackend):
    """Serves an ``nn.Module`` eagerly or through ``torch.compile`` (opt-in: compiling takes time).

    Like ``module.to(device)``, this moves the module it is given to ``device`` and sets eval mode in
    place, rather than copying weights a large model may not have room for twice.
    """

    name = "torch"

    def __init__(self, module: Any, spec: ModelSpec, *, device: str = "auto", precision: str = "fp32",
                 compile: bool = False) -> None:
        torch = _import_torch()
        if not isinstance(module, torch.nn.Module):
            raise InputError(
                f"the 'torch' backend needs an nn.Module, got {type(module).__name__}; pass module= "
                "the model whose forward maps uint8 NHWC images to unit embeddings"
            )
        self.spec = spec
        self.precision = check_precision(precision)
        self.max_batch = spec.max_batch
        self.device = torch_device(device, torch)
        if precision == "int8":
            raise InputError("precision 'int8' is served by the 'ort' backend (model.int8.onnx); pass "
                             "backend='ort' or precision='fp32'")
        if precision == "fp16" and self.device.type != "cuda":
            raise InputError(
                "precision 'fp16' with the 'torch' backend needs a CUDA device (CPU half convolutions "
                "are missing or slow); pass precision='fp32' or device='cuda'"
            )
        self._torch = torch
        self._module = module.to(self.device).eval()
        self._forward = torch.compile(self._module) if compile else self._module
        self.compiled = compile

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp16":
            return self._torch.autocast(device_type="cuda", dtype=self._torch.float16)
        return ieee_fp32(self._torch, convolutions=True)  # "fp32" is IEEE: no TF32 convolutions or GEMMs

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        pixels = torch.from_numpy(batch).to(self.device)
        with torch.inference_mode(), self._autocast():
            out = self._forward(pixels)
        return out.float().cpu().numpy()

    def _release(self) -> None:
        del self._forward, self._module
