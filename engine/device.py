"""The one spelling of devices in this project: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

Every backend, the Embedder and the Gallery parse devices here, whatever their library calls them, so
a device string that one accepts the others accept too.
"""
from __future__ import annotations

from typing import Any

from .errors import BackendUnavailableError, InputError


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> (kind, GPU index); InputError otherwise."""
    kind, _, index = str(device).partition(":")
    if device in ("auto", "cpu", "cuda") or kind == "cuda" and index.isdigit():
        return kind, int(index or 0)
    raise InputError(f"device {device!r} is not 'auto', 'cpu', 'cuda' or 'cuda:N'")


def torch_device(device: str, torch: Any = None) -> Any:
    """``device`` as a ``torch.device``: ``"auto"`` is the first CUDA GPU when PyTorch sees one, else CPU.

    CUDA asked for where PyTorch sees none is BackendUnavailableError, never a silent CPU run.
    """
    if torch is None:
        from .backends.optional import optional_import

        torch = optional_import("torch", needed_for=f"device {device!r}")
    kind, index = parse_device(device)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA GPU; install a CUDA "
            "build of torch on a GPU machine or pass device='cpu'"
        )
    return torch.device(kind, index) if kind == "cuda" else torch.device("cpu")
