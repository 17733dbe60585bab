"""jlml-engine serving library: contract, backends, batched embedder, gallery search, metrics.

Importing it needs only numpy; torch, onnxruntime, tensorrt and pycuda are imported by the backend
that uses them.
"""
from .embedder import Embedder
from .errors import (
    ArtifactError,
    BackendUnavailableError,
    CheckpointError,
    DataError,
    InputError,
    JLMLError,
    ParityError,
    SpecMismatchError,
)
from .spec import ModelSpec

__all__ = [
    "ArtifactError", "BackendUnavailableError", "CheckpointError", "DataError", "Embedder", "InputError",
    "JLMLError", "ModelSpec", "ParityError", "SpecMismatchError",
]
