"""One exception hierarchy for the whole project.

Every message says what was got, what was expected and how to fix it. Subclasses also derive from
the built-in exception a caller would naturally catch (ValueError, FileNotFoundError, ImportError).
"""
from __future__ import annotations


class JLMLError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(JLMLError, ValueError):
    """Arrays or arguments handed to a public function are not what it accepts."""


class SpecMismatchError(JLMLError, ValueError):
    """An artefact was made for another contract (input size, ONNX file, TensorRT version, GPU...)."""


class ArtifactError(JLMLError, OSError):
    """A file the project wrote or reads is missing, corrupt or unwritable."""


class CheckpointError(ArtifactError):
    """A checkpoint cannot be read or does not match the configuration asked for."""


class DataError(JLMLError, ValueError):
    """A data set root is missing, empty or laid out in a way no loader knows."""


class BackendUnavailableError(JLMLError, ImportError):
    """An optional backend's packages (or device) are missing; the message names the extra to install."""


class ParityError(JLMLError):
    """An exported artefact disagrees with the PyTorch reference beyond the stated threshold."""
