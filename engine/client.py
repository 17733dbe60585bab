"""A client for the jlml Triton server (``python -m serve``): embed, search and add over HTTP or gRPC.

This is the wire protocol in one place: the model and tensor names below are what the model
repository (``export.triton``) declares, what ``serve`` runs and what this client sends, so export and
the server (top layer) import them from here and engine never imports serve. ``tritonclient`` is imported when a client is created, never by ``import engine``;
its absence is a BackendUnavailableError naming the ``serve`` extra.

Protocol: ``embed`` takes uint8 images (N, H, W, 3), N up to the artefact's max batch (Triton's
dynamic batcher merges concurrent requests), and returns unit ``embeddings`` (N, D). ``search`` takes
``images`` or ``embeddings`` plus ``k`` (int32, shape [1]) and returns ``distances`` (N, k) squared L2
ascending and int64 ``ids`` (N, k), padded with inf / -1 like Gallery.search; k may exceed the
gallery's rows by padding only up to ``MAX_PADDED_K`` (2048, FAISS's GPU limit on k): a larger k than
both is refused before anything is allocated, so one request cannot exhaust the server's memory.
``gallery_add`` takes
``images``, int64 ``ids`` and optionally ``cams``, saves the gallery file atomically and returns the
gallery's ``count``.
"""
from __future__ import annotations

import os
import time
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .errors import BackendUnavailableError, InputError, JLMLError

EMBED_MODEL, SEARCH_MODEL, ADD_MODEL = "embed", "search", "gallery_add"
MODELS = (EMBED_MODEL, SEARCH_MODEL, ADD_MODEL)
# The model repository export writes into the artefact folder, and the config variant (a Triton
# ``--model-config-name``) that runs ``embed`` through engine.Embedder in the Python backend.
REPOSITORY_DIR, ENGINE_CONFIG = "triton", "engine"
IMAGES, EMBEDDINGS, K = "images", "embeddings", "k"
IDS, CAMS, DISTANCES, COUNT = "ids", "cams", "distances", "count"
# The largest k ``search`` answers beyond the gallery's size (padded columns); k up to the gallery's
# rows is always answered. FAISS's GPU indexes refuse k > 2048 the same way.
MAX_PADDED_K = 2048
PROTOCOLS = ("http", "grpc")
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
UNREGISTER_S = 2.0  # how long closing a shared-memory client waits for Triton to let go of its region
TRITON_DTYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32",
                 np.dtype(np.int64): "INT64"}


class ServerError(JLMLError, RuntimeError):
    """The server refused a request or could not be reached; the message carries the server's reason."""


def parse_url(url: str) -> tuple[str, str]:
    """``"grpc://host:port"`` / ``"http://host:port"`` / ``"host:port"`` (HTTP) -> (protocol, "host:port")."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in PROTOCOLS or not parts.hostname:
        raise InputError(f"server url {url!r} is not http://HOST:PORT or grpc://HOST:PORT; e.g. "
                         "grpc://127.0.0.1:8001 for `python -m serve` on this machine")
    return parts.scheme, f"{parts.hostname}:{parts.port or DEFAULT_PORTS[parts.scheme]}"


def _triton_module(protocol: str) -> Any:
    try:
        if protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
    except ImportError as exc:
        raise BackendUnavailableError(
            f"talking to a Triton server needs tritonclient[{protocol}] ({exc}); install the extra: "
            "pip install 'jlml-engine[serve]'"
        ) from exc
    return module


def _reason(exc: Exception) -> str:
    """The server's own sentence from an InferenceServerException (the last line of a traceback)."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    errors = [line for line in lines if "Error: " in line]
    return (errors[-1].split("Error: ", 1)[1] if errors else lines[0] if lines else repr(exc))


class _SharedInputs:
    """One system shared-memory region for request inputs, registered with the server (Triton's
    system shared-memory extension): the inputs are copied into it instead of into the request body.
    Only for a server on this machine; grown (re-created and re-registered) when a request needs more."""

    def __init__(self, client: Any) -> None:
        import tritonclient.utils.shared_memory as shm

        self._shm, self._client, self._handle, self.size = shm, client, None, 0
        self.name = f"jlml_{os.getpid()}_{id(self):x}"

    def place(self, arrays: list[np.ndarray]) -> list[int]:
        """Copy ``arrays`` one after another into the region; their offsets."""
        offsets = [int(o) for o in np.cumsum([0] + [a.nbytes for a in arrays])]
        if offsets[-1] > self.size:
            self.close()
            self.size = max(offsets[-1], 2 * self.size)
            self._handle = self._shm.create_shared_memory_region(self.name, f"/{self.name}", self.size)
            self._client.register_system_shared_memory(self.name, f"/{self.name}", self.size)
        self._shm.set_shared_memory_region(self._handle, arrays)
        return offsets[:-1]

    def close(self) -> None:
        """Unregister and remove the region. Triton lets go of it a moment after the last answer
        ("currently in use"), so unregistering is retried for up to UNREGISTER_S; past that the file is
        removed anyway and the server holds a registration of a removed region until it stops."""
        if self._handle is None:
            return
        deadline = time.monotonic() + UNREGISTER_S
        while True:
            try:
                self._client.unregister_system_shared_memory(self.name)
                break
            except Exception:  # noqa: BLE001 - InferenceServerException; the region is removed below anyway
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        self._shm.destroy_shared_memory_region(self._handle)
        self._handle = None


class TritonClient:
    """One connection to ``python -m serve``; a context manager. Use one per thread (tritonclient's
    clients are not meant to be shared between threads; they are cheap to make).

    ``timeout_s`` bounds each request (network and queueing included). ``shared_memory=True`` sends
    inputs through system shared memory instead of the request body: only for a server on the same
    machine (large batches; see benchmarks/README.md for what it saves).
    """

    def __init__(self, url: str, *, timeout_s: float = 60.0, shared_memory: bool = False) -> None:
        self.protocol, self.address = parse_url(url)
        self._module = _triton_module(self.protocol)
        self._timeout_s = float(timeout_s)
        if self.protocol == "grpc":
            self._client = self._module.InferenceServerClient(self.address)
        else:
            self._client = self._module.InferenceServerClient(
                self.address, connection_timeout=self._timeout_s, network_timeout=self._timeout_s)
        self._image_shape: tuple[int, ...] | None = None
        self._max_batch = self._dim = 0
        self._shared = _SharedInputs(self._client) if shared_memory else None

    # ---- server facts --------------------------------------------------------------------------
    def ready(self, models: tuple[str, ...] = (EMBED_MODEL,)) -> bool:
        """True when the server answers and ``models`` are ready (Triton's own readiness endpoints)."""
        try:
            return bool(self._client.is_server_ready()
                        and all(self._client.is_model_ready(model) for model in models))
        except Exception:  # noqa: BLE001 - any transport failure means "not ready yet"
            return False

    def statistics(self, model: str = EMBED_MODEL) -> dict[str, tuple[int, int]]:
        """Triton's cumulative statistics of ``model`` since it loaded: name -> (count, total ns) for
        ``success`` (receipt to response), ``queue``, ``compute_input``, ``compute_infer``, ``compute_output``."""
        kwargs = {"as_json": True} if self.protocol == "grpc" else {}
        stats = self._call(self._client.get_inference_statistics, model_name=model, **kwargs)
        found = stats["model_stats"][0]["inference_stats"]
        return {name: (int(found.get(name, {}).get("count", 0)), int(found.get(name, {}).get("ns", 0)))
                for name in ("success", "queue", "compute_input", "compute_infer", "compute_output")}

    def _load_metadata(self) -> None:
        config = self._call(self._client.get_model_config, EMBED_MODEL)
        config = config.config if self.protocol == "grpc" else config
        config = config if isinstance(config, dict) else _message_to_dict(config)
        self._max_batch = int(config["max_batch_size"])
        dims = next(i["dims"] for i in config["input"] if i["name"] == IMAGES)
        self._image_shape = tuple(int(d) for d in dims)
        self._dim = int(next(o["dims"][0] for o in config["output"] if o["name"] == EMBEDDINGS))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, 3) the server's model takes."""
        if self._image_shape is None:
            self._load_metadata()
        return self._image_shape  # type: ignore[return-value]

    @property
    def max_batch(self) -> int:
        """The largest batch one embed request may carry (the artefact's max batch)."""
        if not self._max_batch:
            self._load_metadata()
        return self._max_batch

    @property
    def embedding_dim(self) -> int:
        if not self._dim:
            self._load_metadata()
        return self._dim

    # ---- the three models ----------------------------------------------------------------------
    def embed(self, images: np.ndarray) -> np.ndarray:
        """Unit embeddings (N, D) for uint8 (N, H, W, 3) images, sent in requests of at most max_batch."""
        images = np.ascontiguousarray(images)
        step = self.max_batch
        parts = [self.infer(EMBED_MODEL, {IMAGES: images[i:i + step]}, [EMBEDDINGS])[EMBEDDINGS]
                 for i in range(0, len(images), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)

    def search(self, k: int, *, images: np.ndarray | None = None,
               embeddings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), each (N, k), for query images or query embeddings (exactly one of them)."""
        if (images is None) == (embeddings is None):
            raise InputError("pass exactly one of images= or embeddings= to search")
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= np.iinfo(np.int32).max:
            raise InputError(f"k must be a positive int32, got {k!r}; e.g. search(10, ...)")
        query = (IMAGES, images) if images is not None else (EMBEDDINGS, embeddings)
        rows = np.asarray(query[1])
        if rows.ndim == 0 or len(rows) == 0:
            raise InputError(f"search got no query rows ({query[0]} of shape {rows.shape}); send at least one")
        inputs: dict[str, np.ndarray] = {query[0]: rows, K: np.array([k], np.int32)}
        out = self.infer(SEARCH_MODEL, inputs, [DISTANCES, IDS])
        return out[DISTANCES], out[IDS]

    def add(self, images: np.ndarray, ids: np.ndarray, cams: np.ndarray | None = None) -> int:
        """Add images with their int64 ids (and cameras) to the served gallery; returns its new size."""
        inputs = {IMAGES: images, IDS: np.asarray(ids, np.int64)}
        if cams is not None:
            inputs[CAMS] = np.asarray(cams, np.int64)
        return int(self.infer(ADD_MODEL, inputs, [COUNT])[COUNT][0])

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """One raw request: named numpy inputs in, named numpy outputs back; ServerError on refusal."""
        arrays = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        wire = []
        for name, array in arrays.items():
            if array.dtype not in TRITON_DTYPES:
                raise InputError(f"input {name!r} has dtype {array.dtype}; the server takes "
                                 f"{sorted(str(d) for d in TRITON_DTYPES)}")
            wire.append(self._module.InferInput(name, list(array.shape), TRITON_DTYPES[array.dtype]))
        if self._shared is not None:
            empty = [name for name, array in arrays.items() if not array.nbytes]
            if empty:  # Triton would answer "Invalid offset + byte size for shared memory region"
                raise InputError(f"input(s) {empty} hold no data (a dimension of 0); send at least one row")
            offsets = self._call(self._shared.place, list(arrays.values()))
            for tensor, array, offset in zip(wire, arrays.values(), offsets, strict=True):
                tensor.set_shared_memory(self._shared.name, array.nbytes, offset)
        else:
            for tensor, array in zip(wire, arrays.values(), strict=True):
                tensor.set_data_from_numpy(array)
        requested = [self._module.InferRequestedOutput(name) for name in outputs]
        kwargs = {"client_timeout": self._timeout_s} if self.protocol == "grpc" else {}
        result = self._call(self._client.infer, model, wire, outputs=requested, **kwargs)
        return {name: result.as_numpy(name) for name in outputs}

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise ServerError(f"server {self.protocol}://{self.address} refused: {_reason(exc)}") from exc
        except (OSError, ConnectionError) as exc:
            raise ServerError(f"cannot reach {self.protocol}://{self.address} ({exc}); start it with "
                              "`python -m serve ARTIFACT_DIR` or check --url") from exc

    def close(self) -> None:
        if self._shared is not None:
            self._shared.close()
        self._client.close()

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _message_to_dict(message: Any) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(message, preserving_proto_field_name=True)
