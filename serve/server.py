"""Run Triton Inference Server on the artefact's own model repository (``ARTIFACT/triton``).

The ``tritonserver`` binary and its Python backend ship inside the nvidia-pytriton wheel; this module
runs that binary directly on the repository export wrote (``--model-config-name engine``: ``embed``
through engine.Embedder in the Python backend, the only backend the wheel has), so what is served here
is what a stock Triton container serves from the same folder. Models are loaded at start-up, before
Triton opens its endpoints, and ``embed`` answers a warm-up request first, so ``/v2/health/ready``
(and ``/v2/models/NAME/ready``) say ready only once every model answers.
"""
from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine import BackendUnavailableError, InputError
from engine.client import ADD_MODEL, EMBED_MODEL, ENGINE_CONFIG, REPOSITORY_DIR, SEARCH_MODEL, TritonClient
from engine.embedder import artifact_spec

from .models import SHARDED_SUFFIX, check_manifest, load_gallery
from .triton_models import Settings

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
WATCH_PERIOD_S = 0.2  # how often start-up polls readiness and the main thread checks tritonserver
# The Python backend's shared memory per model process: small to start, grown as requests need.
SHM_BYTES, SHM_GROWTH_BYTES = 4 << 20, 1 << 20
# Where `engine` and `serve` import from. tritonserver runs with this as its working folder: the
# Python-backend stub ignores PYTHONPATH but puts its working folder first on sys.path.
PROJECT_ROOT = Path(__file__).resolve().parents[1]


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
    allow_other_model: bool = False  # serve a gallery embedded by another model than the artefact's
    ray: str | None = None  # the Ray cluster of a sharded gallery (engine.sharded)
    ort_spin: bool = True  # ONNX Runtime's threads spin-wait between batches (engine.Embedder's spin_wait)
    exit_timeout_s: int = 10
    verbose: bool = False

    @property
    def http_url(self) -> str:
        """Where a client on this machine reaches the HTTP endpoint."""
        host = "127.0.0.1" if self.address in ("0.0.0.0", "::") else self.address
        return f"http://{host}:{self.http_port}"

    def probe(self, model: str | None = None) -> str:
        """The readiness URL a load balancer or Kubernetes probe should ask (one model's, or the server's)."""
        return self.http_url + ("/v2/health/ready" if model is None else f"/v2/models/{model}/ready")


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


def repository(artifact_dir: str | os.PathLike[str]) -> Path:
    """``ARTIFACT/triton``, checked to hold the configs this server runs; InputError says how to get it."""
    artifact_spec(artifact_dir)  # a missing or foreign folder: the engine's own sentence
    root = Path(artifact_dir).resolve() / REPOSITORY_DIR
    missing = [str(p.relative_to(root)) for p in (root / EMBED_MODEL / "configs" / f"{ENGINE_CONFIG}.pbtxt",
                                                  root / SEARCH_MODEL / "config.pbtxt",
                                                  root / ADD_MODEL / "config.pbtxt") if not p.is_file()]
    if missing:
        raise InputError(f"{root} lacks {', '.join(missing)}: the artefact was exported before the repository "
                         "held every model; export it again with `python -m export.build_engine CKPT --out DIR`")
    return root


def _distribution() -> tuple[Path, Path, Path]:
    """(tritonserver binary, its python backend folder, its shared libraries) from the PyTriton wheel."""
    try:
        from pytriton.utils.distribution import get_libs_path, get_root_module_path
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the server needs nvidia-pytriton ({exc}); install the extra: pip install 'jlml-engine[serve]'"
        ) from exc
    dist = get_root_module_path() / "tritonserver"
    return dist / "bin" / "tritonserver", dist, get_libs_path()


@contextmanager
def backend_directory(dist: Path) -> Iterator[Path]:
    """A backends folder whose ``python/`` holds the wheel's backend and the stub of this Python version."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    sources = [dist / "backends" / "python" / "libtriton_python.so",
               dist / "backends" / "python" / "triton_python_backend_utils.py",
               dist / "python_backend_stubs" / version / "triton_python_backend_stub"]
    if not all(p.is_file() for p in sources):
        raise BackendUnavailableError(f"the PyTriton wheel at {dist} has no Python backend for Python {version}; "
                                      "install a version of nvidia-pytriton that ships it")
    with tempfile.TemporaryDirectory(prefix="jlml-backends-") as tmp:
        (Path(tmp) / "python").mkdir()
        for source in sources:
            (Path(tmp) / "python" / source.name).symlink_to(source)
        yield Path(tmp)


SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "jlml"  # + the serving process's pid + "_": the Python backend's regions of one server


def remove_stale_regions(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the Python backend's shared-memory files left by servers that were killed (SIGKILL skips
    Triton's clean-up; 4 MiB per model each); those of running servers stay. Returns the names removed."""
    removed = []
    for path in shm_dir.glob(f"{SHM_PREFIX}[0-9]*_*"):
        pid = int(path.name[len(SHM_PREFIX):].split("_", 1)[0])
        if not Path(f"/proc/{pid}").exists():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


def command(binary: Path, root: Path, backends: Path, models: tuple[str, ...], opts: ServerOptions) -> list[str]:
    """The tritonserver command line: the repository, its engine config, only ``models``, loaded first."""
    quiet = [] if opts.verbose else ["--log-info=false"]
    return [str(binary), f"--model-repository={root}", f"--model-config-name={ENGINE_CONFIG}",
            "--model-control-mode=explicit", *(f"--load-model={m}" for m in models),
            "--disable-auto-complete-config", "--strict-readiness=true", "--exit-on-error=true",
            f"--backend-directory={backends}",
            f"--backend-config=python,shm-region-prefix-name={SHM_PREFIX}{os.getpid()}_",
            f"--backend-config=python,shm-default-byte-size={SHM_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            f"--http-address={opts.address}", f"--http-port={opts.http_port}",
            f"--grpc-address={opts.address}", f"--grpc-port={opts.grpc_port}",
            f"--metrics-address={opts.address}", f"--metrics-port={opts.metrics_port}",
            "--allow-gpu-metrics=false", f"--exit-timeout-secs={opts.exit_timeout_s}", *quiet]


def environment(settings: Settings, libs: Path) -> dict[str, str]:
    """tritonserver's environment: this interpreter's libpython, the wheel's libraries, this Python
    environment (the stub finds its site-packages through PATH) and the models' settings."""
    env = dict(os.environ)
    python_library_first(env)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (env["LD_LIBRARY_PATH"], str(libs)) if p)
    env["PATH"] = os.pathsep.join([str(Path(sys.exec_prefix) / "bin"), env.get("PATH", "")])
    return {**env, **settings.to_env()}


PORT_FLAGS = {"--http-port": "http_port", "--grpc-port": "grpc_port", "--metrics-port": "metrics_port"}


def _listen_address(address: str) -> tuple[socket.AddressFamily, tuple]:
    """The socket family and address ``address`` names; InputError when it is no address at all."""
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(address, None, type=socket.SOCK_STREAM,
                                                       flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--address {address!r} is not an address ({getattr(exc, 'strerror', None) or exc}); "
                         "pass 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or one of this "
                         "machine's addresses") from exc
    return family, sockaddr


def check_endpoints(opts: ServerOptions) -> None:
    """Prove, before tritonserver starts, that it can listen on ``opts.address`` at its three ports.

    InputError (one line, exit 2) for a port outside 1..65535, two endpoints on one port, an address
    that is not this machine's, or a port another process listens on. Without this check tritonserver
    fails late (a gRPC port in use hangs start-up) and, worse, the readiness poll would be answered by
    the *other* server on a used HTTP port. ``SO_REUSEADDR`` as servers set it: a port left in
    TIME_WAIT by a stopped server is free, one with a listener is not.
    """
    ports = {flag: getattr(opts, field) for flag, field in PORT_FLAGS.items()}
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise InputError(f"{flag} {port} is not a TCP port, expected 1..65535; e.g. {flag} "
                             f"{getattr(ServerOptions, PORT_FLAGS[flag])}")
    if len(set(ports.values())) < len(ports):
        shown = ", ".join(f"{flag} {port}" for flag, port in ports.items())
        raise InputError(f"the endpoints need three different ports, got {shown}; pass three free ports")
    family, sockaddr = _listen_address(opts.address)
    for flag, port in ports.items():
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((sockaddr[0], port, *sockaddr[2:]))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise InputError(f"{flag} {port} is already in use on {opts.address} (another server?); "
                                     f"stop that process or pass a free port with {flag}") from exc
                raise InputError(f"cannot listen on {opts.address} port {port} ({exc.strerror or exc}); "
                                 "--address must be one of this machine's addresses (127.0.0.1, 0.0.0.0), "
                                 "and ports below 1024 need root") from exc


def check_gallery(artifact_dir: str | os.PathLike[str], gallery: str | os.PathLike[str] | None,
                  opts: ServerOptions) -> None:
    """Refuse, before tritonserver starts, a gallery file the ``search`` and ``gallery_add`` models would
    fail to load: unreadable, of another embedding size, or embedded by another model than the artefact's
    (SpecMismatchError naming both fingerprints, unless ``opts.allow_other_model``). The search model
    itself warns of a file that records no model. A file that does not exist yet is created by the first
    gallery_add."""
    if gallery is None or not os.path.lexists(gallery):
        return
    if Path(gallery).suffix == SHARDED_SUFFIX:  # a sharded gallery's manifest: no actors yet
        check_manifest(Path(gallery), artifact_spec(artifact_dir), artifact=f"artefact {artifact_dir}",
                       allow_other_model=opts.allow_other_model, warn=False, override="--allow-other-model")
        return
    load_gallery(Path(gallery), artifact_spec(artifact_dir), artifact=f"artefact {artifact_dir}",
                 allow_other_model=opts.allow_other_model, warn=False, override="--allow-other-model")


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


def _wait_ready(proc: subprocess.Popen, models: tuple[str, ...], opts: ServerOptions,
                stop: threading.Event) -> bool:
    """True once the server and ``models`` report ready; False if tritonserver exited or a signal came."""
    with TritonClient(opts.http_url, timeout_s=5) as client:
        while not stop.is_set() and proc.poll() is None:
            if client.ready(models):
                return True
            stop.wait(WATCH_PERIOD_S)
    return False


def _stop(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM (Triton finishes in-flight requests for up to its exit timeout), SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(artifact_dir: str | os.PathLike[str], gallery: str | os.PathLike[str] | None,
          opts: ServerOptions, *, ready: threading.Event | None = None) -> bool:
    """Serve until SIGINT/SIGTERM (returns True) or until tritonserver dies (returns False).

    ``ready`` is set, and one line printed, once every model answers; the stop signals are caught from
    the start, so a signal during start-up stops the server cleanly.
    """
    root = repository(artifact_dir)
    check_endpoints(opts)
    check_gallery(artifact_dir, gallery, opts)
    binary, dist, libs = _distribution()
    remove_stale_regions()
    models = (EMBED_MODEL,) if gallery is None else (EMBED_MODEL, SEARCH_MODEL, ADD_MODEL)
    settings = Settings(backend=opts.backend, device=opts.device, precision=opts.precision,
                        gallery=None if gallery is None else str(Path(gallery).resolve()),
                        gallery_device=opts.gallery_device, allow_other_model=opts.allow_other_model, ray=opts.ray,
                        spin_wait=opts.ort_spin)
    with stop_on_signals() as stop, backend_directory(dist) as backends:
        proc = subprocess.Popen(command(binary, root, backends, models, opts), env=environment(settings, libs),
                                cwd=PROJECT_ROOT)
        try:
            if _wait_ready(proc, models, opts, stop):
                print(f"ready: serving {root} ({', '.join(models)}) on http://{opts.address}:{opts.http_port} and "
                      f"grpc://{opts.address}:{opts.grpc_port}; readiness probe: GET {opts.probe()} (per model: "
                      f"{opts.probe('NAME')}); stop with Ctrl+C or SIGTERM", flush=True)
                if ready is not None:
                    ready.set()
            while not stop.wait(WATCH_PERIOD_S) and proc.poll() is None:
                pass
        finally:
            _stop(proc, opts.exit_timeout_s + 20)
        return stop.is_set()

