"""Backends that turn uint8 NHWC pixels into unit embeddings: ``ort``, ``torch`` and ``trt``.

Each module imports its heavy dependency lazily, so importing this package needs only numpy.
"""
from .base import PRECISIONS, Backend, BaseBackend, check_precision

BACKEND_NAMES = ("auto", "trt", "ort", "torch")

__all__ = ["BACKEND_NAMES", "PRECISIONS", "Backend", "BaseBackend", "check_precision"]
