"""Start a Triton Inference Server (through PyTriton) with the engine's embed, search and gallery_add.

PyTriton runs NVIDIA's ``tritonserver`` binary with its Python backend; each model's requests reach
the callables of serve.models in this process. Health and readiness are Triton's own endpoints
(``/v2/health/ready``, ``/v2/models/embed/ready`` over HTTP; the same over gRPC).
"""
from __future__ import annotations

import os
import signal
import sysconfig
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import BackendUnavailableError, Embedder

from . import wire_errors
from .models import GalleryService, SerialEmbedder, bindings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often the main thread checks that tritonserver and the model proxies are still alive.
WATCH_PERIOD_S = 1.0


@dataclass(frozen=True)
class ServerOptions:
    """Where the server listens and how the engine behind it runs (the CLI's flags)."""

    address: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    backend: str = "auto"
    device: str = "auto"
    precision: str | None = None  # the best the artefact has for the device (engine.Embedder)
    gallery_device: str = "cpu"
    queue_delay_us: int = 1000
    exit_timeout_s: int = 10


def python_library_first(env: MutableMapping[str, str]) -> str:
    """Put this interpreter's own ``libpython`` folder first on ``env["LD_LIBRARY_PATH"]``.

    Triton's Python-backend stub links ``libpython3.X.so``; found elsewhere first (the system's build
    of the same minor version), it loads a library whose ``threading`` internals differ from the
    interpreter that pickled the objects and model loading fails with ``'_thread.RLock' object has no
    attribute '_recursion_count'``. Returns the new value.
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    rest = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *rest] if libdir else rest)
    return env["LD_LIBRARY_PATH"]


def _pytriton() -> Any:
    try:
        import pytriton.triton as module
        from pytriton.models.model import Model
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the server needs nvidia-pytriton ({exc}); install the extra: pip install 'jlml-engine[serve]'"
        ) from exc
    wire_errors.install(Model)  # a bad request is a one-line 400, never a traceback
    return module


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An Event set by SIGINT or SIGTERM while the block runs; the previous handlers come back after."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _triton_config(triton: Any, opts: ServerOptions) -> Any:
    return triton.TritonConfig(
        http_address=opts.address, http_port=opts.http_port, grpc_address=opts.address,
        grpc_port=opts.grpc_port, metrics_address=opts.address, metrics_port=opts.metrics_port,
        exit_timeout_secs=opts.exit_timeout_s, allow_gpu_metrics=False)


def serve(artifact_dir: str | os.PathLike[str], gallery: str | os.PathLike[str] | None,
          opts: ServerOptions, *, ready: threading.Event | None = None) -> bool:
    """Serve until SIGINT/SIGTERM (returns True) or until tritonserver dies (returns False).

    ``ready`` is set once every model answers; the stop signals are caught from the start, so a
    signal during start-up stops the server as soon as it is up, cleanly.
    """
    triton_module = _pytriton()
    python_library_first(os.environ)  # read by the tritonserver child PyTriton starts
    with stop_on_signals() as stop, Embedder(artifact_dir, backend=opts.backend, device=opts.device,
                                             precision=opts.precision) as embedder:
        serial = SerialEmbedder(embedder)
        service = None if gallery is None else GalleryService(serial, Path(gallery), device=opts.gallery_device)
        triton = triton_module.Triton(config=_triton_config(triton_module, opts))
        try:
            for model in bindings(serial, service, queue_delay_us=opts.queue_delay_us):
                triton.bind(**model)
            triton.run()
            print(f"serving {artifact_dir} ({embedder}: {embedder.choice}) on http://{opts.address}:{opts.http_port} and "
                  f"grpc://{opts.address}:{opts.grpc_port}; stop with Ctrl+C or SIGTERM", flush=True)
            if ready is not None:
                ready.set()
            while not stop.wait(WATCH_PERIOD_S) and triton.is_alive():
                pass
        finally:
            triton.stop()
        return stop.is_set()
