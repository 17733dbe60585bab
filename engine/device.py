"""The one spelling of devices in this project: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

Every backend, the Embedder and the Gallery parse devices here, whatever their library calls them, so
a device string that one accepts the others accept too.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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



def _setting(get: Callable[[], Any], set_: Callable[[Any], Any], new: list[Any], ieee: Any) -> tuple[Any, Any, Any]:
    """(read, write, IEEE value) of one precision setting, through the API family the caller is on:
    PyTorch >= 2.9 refuses to read a legacy flag once the per-backend ``fp32_precision`` was set (and
    the other way round), so the family that answers is the one saved, changed and restored."""
    try:
        get()
    except RuntimeError:
        objs = [o for o in new if hasattr(o, "fp32_precision")]
        return ((lambda: [o.fp32_precision for o in objs]),
                (lambda values: [setattr(o, "fp32_precision", v) for o, v in zip(objs, values, strict=True)]),
                ["ieee"] * len(objs))
    return get, set_, ieee


@contextlib.contextmanager
def ieee_fp32(torch: Any, *, convolutions: bool = False) -> Iterator[None]:
    """FP32 matrix products (and, with ``convolutions``, cuDNN convolutions) in IEEE FP32 inside the
    block; the caller's settings come back after it.

    Why: ``set_float32_matmul_precision("high")`` (what torch.compile's own warning recommends) or
    ``allow_tf32 = True`` turn CUDA FP32 GEMMs into TF32 (10-bit mantissa), and "medium" turns CPU
    oneDNN ones into bf16: the gallery's exactness proof assumes FP32 rounding. An "fp32" reference that
    runs cuDNN's TF32 convolutions (PyTorch's default) is not FP32 either. The settings are process-wide:
    another thread running meanwhile gets IEEE too, which is never wrong, at most slower.
    """
    b = torch.backends
    settings = [_setting(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision,
                         [b.cuda.matmul, b.mkldnn.matmul], "highest")]
    if convolutions:
        settings.append(_setting(lambda: b.cudnn.allow_tf32, lambda value: setattr(b.cudnn, "allow_tf32", value),
                                 [getattr(b.cudnn, "conv", None)], False))
    restore = []
    for read, write, ieee in settings:
        before = read()
        if before != ieee:
            write(ieee)
            restore.append((write, before))
    try:
        yield
    finally:
        for write, before in reversed(restore):
            write(before)
