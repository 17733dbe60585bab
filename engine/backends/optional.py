"""The one way this project imports an optional package: a missing one names the extra to install.

``import tensorrt`` alone proves nothing: the ``tensorrt-stubs`` package (and a half-removed wheel)
leave a ``tensorrt/`` folder that imports as an empty namespace package. So a module can name an
attribute that only the real package has, and is "installed" only when that attribute is there.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import BackendUnavailableError

# What to install for each optional module, as the message shows it.
EXTRAS = {
    "onnxruntime": "`pip install 'jlml-engine[ort]'` (CPU) or `pip install 'jlml-engine[ort-gpu]'` (CUDA)",
    "tensorrt": "`pip install 'jlml-engine[trt]'` on a CUDA machine (NVIDIA's package index)",
    "pycuda.driver": "`pip install 'jlml-engine[trt]'` on a CUDA machine (pycuda builds against its CUDA)",
    "torch": "torch (see the README: the CPU or CUDA build you want, first)",
    "onnxslim": "`pip install 'jlml-engine[simplify]'`",
    "faiss": "`pip install faiss-cpu` (or faiss-gpu for CUDA galleries)",
}


def optional_import(module: str, *, needed_for: str, attribute: str | None = None) -> ModuleType:
    """Import ``module`` or raise BackendUnavailableError saying what needs it and what to install.

    ``attribute``: a name only the real package has (``tensorrt.Builder``); without it the module
    counts as missing. OSError covers a wheel whose native libraries are absent.
    """
    how = EXTRAS.get(module, f"`pip install {module}`")
    try:
        loaded = importlib.import_module(module)
    except (ImportError, OSError) as exc:
        raise BackendUnavailableError(f"{needed_for} needs {module} ({exc}); install it with {how}") from exc
    if attribute is not None and not hasattr(loaded, attribute):
        raise BackendUnavailableError(
            f"{needed_for} needs {module}, but the importable {module!r} has no {attribute!r} (an empty "
            f"namespace package such as the one tensorrt-stubs installs?); install it with {how}"
        )
    return loaded


def is_installed(module: str, attribute: str | None = None) -> bool:
    """Whether ``optional_import`` would succeed; never raises."""
    try:
        optional_import(module, needed_for="this check", attribute=attribute)
    except BackendUnavailableError:
        return False
    return True
