"""The three inference callables the server binds: embed, search and gallery_add.

They are plain Python over engine's public API (Embedder, Gallery), so they are tested without a
server too. Triton validates dtypes, ranks and the embed batch limit from the bound signatures before
a request reaches them; what only the engine can know (k <= 0, a batch above the artefact's max for
the unbatched models, ids that do not match the images, a missing input) is refused here with a
PyTritonBadParameterError carrying the engine's sentence, which the client gets as a one-line HTTP 400
/ gRPC INVALID_ARGUMENT (serve.wire_errors), and the server keeps serving.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine import Embedder, InputError, JLMLError
from engine.client import CAMS, COUNT, DISTANCES, EMBEDDINGS, IDS, IMAGES, K
from engine.gallery import UNKNOWN_CAM, Gallery

Request = Any  # pytriton.proxy.types.Request: a mapping of input name -> numpy array
Response = dict[str, np.ndarray]


def _bad_request(exc: Exception) -> Exception:
    from pytriton.exceptions import PyTritonBadParameterError

    return PyTritonBadParameterError(str(exc))


def _per_request(fn: Callable[[Request], Response]) -> Callable[[Sequence[Request]], list[Response]]:
    """Run ``fn`` on each request alone; an engine error becomes a bad-request error for the client."""
    def infer(requests: Sequence[Request]) -> list[Response]:
        try:
            return [fn(request) for request in requests]
        except JLMLError as exc:
            raise _bad_request(exc) from exc
    return infer


def _required(request: Request, name: str, what: str) -> np.ndarray:
    """``request[name]``; a request without it (Triton lets it through when the model has optional
    inputs) is refused with what to send."""
    if name not in request:
        raise InputError(f"missing input {name!r}: send {what}; got {sorted(request.keys())}")
    return request[name]


class SerialEmbedder:
    """The one Embedder behind every model, entered by one thread at a time.

    PyTriton runs each model's requests on its own thread, and a backend's device buffers and stream
    (TensorRT) belong to its Embedder; one device runs one batch at a time anyway.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder, self.spec = embedder, embedder.spec
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.embedder(images)


class EmbedModel:
    """uint8 (N, H, W, 3) -> unit embeddings (N, D); Triton's dynamic batcher merged the requests."""

    def __init__(self, embedder: SerialEmbedder) -> None:
        from pytriton.decorators import batch

        self.embedder = embedder
        self._infer = batch(self._batched)

    def __call__(self, requests: Sequence[Request]) -> list[Response]:
        return self._infer(requests)

    def _batched(self, **inputs: np.ndarray) -> Response:
        try:
            return {EMBEDDINGS: self.embedder(inputs[IMAGES])}
        except JLMLError as exc:
            raise _bad_request(exc) from exc


class GalleryService:
    """The resident Gallery behind ``search`` and ``gallery_add``; one lock orders searches and adds.

    ``gallery_add`` embeds outside the lock, then adds and saves the file atomically (engine.atomic:
    a server killed mid-save leaves the previous file). If the save fails the in-memory gallery is
    reloaded from the file, so what is served is always what is saved.
    """

    def __init__(self, embedder: SerialEmbedder, path: Path | None, *, device: str = "cpu") -> None:
        self.embedder, self.path, self.device = embedder, path, device
        self.lock = threading.Lock()
        self.gallery = self._load()

    def _load(self) -> Gallery:
        if self.path is not None and self.path.exists():
            gallery = Gallery.load(self.path, device=self.device)
            if gallery.dim != self.embedder.spec.embedding_dim:
                raise InputError(f"gallery {self.path} holds {gallery.dim}-D embeddings, the artefact makes "
                                 f"{self.embedder.spec.embedding_dim}-D; embed it again with this artefact")
            return gallery
        return Gallery(self.embedder.spec.embedding_dim, device=self.device)

    def _check_batch(self, n: int, what: str) -> None:
        limit = self.embedder.spec.max_batch
        if not 1 <= n <= limit:
            raise InputError(f"{what} batch of {n}, expected 1..{limit} (the artefact's max batch); "
                             "split larger batches into several requests")

    def search(self, request: Request) -> Response:
        k = np.asarray(_required(request, K, "int32 k of shape [1], e.g. k=[10]")).reshape(-1)
        if k.size != 1 or int(k[0]) <= 0:
            raise InputError(f"k must be one positive int32, got {k.tolist()}; e.g. k=[10]")
        if (IMAGES in request) == (EMBEDDINGS in request):
            raise InputError(f"send exactly one of {IMAGES!r} (uint8 N,H,W,3) or {EMBEDDINGS!r} (float32 N,D)")
        if IMAGES in request:
            self._check_batch(len(request[IMAGES]), "search")
            queries = self.embedder(request[IMAGES])
        else:
            queries = request[EMBEDDINGS]
            self._check_batch(len(queries), "search")
        with self.lock:
            distances, ids = self.gallery.search(queries, int(k[0]))
        return {DISTANCES: np.asarray(distances, np.float32), IDS: np.asarray(ids, np.int64)}

    def add(self, request: Request) -> Response:
        if self.path is None:
            raise InputError("this server has no gallery file to save to; start it with --gallery PATH")
        images = _required(request, IMAGES, "uint8 images (N, H, W, 3)")
        self._check_batch(len(images), "gallery_add")
        ids = np.asarray(_required(request, IDS, "int64 ids, one per image")).reshape(-1)
        cams = np.asarray(request[CAMS]).reshape(-1) if CAMS in request else np.full(len(images), UNKNOWN_CAM)
        if len(ids) != len(images) or len(cams) != len(images):
            raise InputError(f"gallery_add got {len(images)} images, {len(ids)} ids and {len(cams)} cams; "
                             "send one id (and one cam) per image")
        embeddings = self.embedder(images)
        with self.lock:
            self.gallery.add(embeddings, ids, cams)
            try:
                self.gallery.save(self.path)
            except BaseException:
                self.gallery = self._load()
                raise
            return {COUNT: np.array([len(self.gallery)], np.int64)}


def bindings(embedder: SerialEmbedder, service: GalleryService | None, *,
             queue_delay_us: int) -> list[dict[str, Any]]:
    """Keyword arguments for ``Triton.bind`` of each model: names, callables, signatures, batching."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    from engine.client import ADD_MODEL, EMBED_MODEL, SEARCH_MODEL

    spec = embedder.spec
    images = Tensor(name=IMAGES, dtype=np.uint8, shape=(-1, *spec.image_shape))
    batcher = DynamicBatcher(max_queue_delay_microseconds=queue_delay_us,
                             preferred_batch_size=sorted({spec.opt_batch, spec.max_batch}))
    models = [dict(model_name=EMBED_MODEL, infer_func=EmbedModel(embedder),
                   inputs=[Tensor(name=IMAGES, dtype=np.uint8, shape=spec.image_shape)],
                   outputs=[Tensor(name=EMBEDDINGS, dtype=np.float32, shape=(spec.embedding_dim,))],
                   config=ModelConfig(max_batch_size=spec.max_batch, batcher=batcher))]
    if service is None:
        return models
    unbatched = ModelConfig(batching=False)
    models.append(dict(
        model_name=SEARCH_MODEL, infer_func=_per_request(service.search),
        inputs=[Tensor(name=IMAGES, dtype=np.uint8, shape=images.shape, optional=True),
                Tensor(name=EMBEDDINGS, dtype=np.float32, shape=(-1, spec.embedding_dim), optional=True),
                Tensor(name=K, dtype=np.int32, shape=(1,))],
        outputs=[Tensor(name=DISTANCES, dtype=np.float32, shape=(-1, -1)),
                 Tensor(name=IDS, dtype=np.int64, shape=(-1, -1))],
        config=unbatched))
    models.append(dict(
        model_name=ADD_MODEL, infer_func=_per_request(service.add),
        inputs=[images, Tensor(name=IDS, dtype=np.int64, shape=(-1,)),
                Tensor(name=CAMS, dtype=np.int64, shape=(-1,), optional=True)],
        outputs=[Tensor(name=COUNT, dtype=np.int64, shape=(1,))], config=unbatched))
    return models
