"""The gallery behind ``search`` and ``gallery_add``: plain Python over engine's public API.

serve.triton_models wraps it in Triton's Python backend (one process per model); it is tested without
a server too. What only the engine can know (k <= 0, a batch above the artefact's max, ids that do not
match the images, a missing input) is refused with an engine InputError, which the client gets as a
one-line HTTP 400 / gRPC INVALID_ARGUMENT, and the server keeps serving.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine import InputError, ModelSpec
from engine.client import CAMS, COUNT, DISTANCES, EMBEDDINGS, IDS, IMAGES, K
from engine.gallery import UNKNOWN_CAM, Gallery

Request = dict[str, np.ndarray]  # input name -> array, as the request carried it
Response = dict[str, np.ndarray]
SHARDED_SUFFIX = ".json"  # a gallery path ending so is a sharded gallery's manifest (engine.sharded)
Embed = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> unit embeddings (N, D)


def check_ray_address(gallery: Path, ray: str | None) -> None:
    """A sharded gallery (a .json manifest) needs the Ray cluster its shards run on."""
    if gallery.suffix == SHARDED_SUFFIX and ray is None:
        raise InputError(f"gallery {gallery} is a sharded gallery's manifest: pass --ray ADDRESS (python -m "
                         "serve) or JLML_RAY=ADDRESS (tritonserver), the cluster its shards run on")


def _required(request: Request, name: str, what: str) -> np.ndarray:
    """``request[name]``; a request without it (Triton lets it through when the model has optional
    inputs) is refused with what to send."""
    if name not in request:
        raise InputError(f"missing input {name!r}: send {what}; got {sorted(request.keys())}")
    return request[name]


class GalleryService:
    """The Gallery behind ``search`` and ``gallery_add``, following its file.

    ``search`` and ``gallery_add`` run in separate processes (one Triton model each), so the gallery
    file is what they share: ``gallery_add`` embeds (``embed``), adds and saves the file atomically
    (engine.atomic: a server killed mid-save leaves the previous file), and every request first reloads
    the file if another process replaced it (one stat). If the save fails the in-memory gallery is
    reloaded from the file, so what is served is always what is saved.
    """

    def __init__(self, embed: Embed, spec: ModelSpec, path: Path | None, *, device: str = "cpu",
                 ray: str | None = None, shard_options: Any = None) -> None:
        """``ray``: the Ray cluster of a sharded gallery (``path`` a .json manifest, engine.sharded);
        ``shard_options``: its engine.sharded.ShardOptions (default: one CPU per shard)."""
        self.embed, self.spec, self.path, self.device = embed, spec, path, device
        self.ray, self.shard_options = ray, shard_options
        self._stamp: Any = None
        self.gallery: Any = None
        self.gallery = self._load()

    def _file_stamp(self) -> Any:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def refresh(self) -> None:
        """Reload the gallery file when another process saved a new one since it was read."""
        if self._file_stamp() != self._stamp:
            self.gallery = self._load()

    def _load(self) -> Any:
        """The Gallery (a .npz) or ShardedGallery (a .json manifest) at ``path``; a sharded one already
        open follows its manifest (only the shards whose file changed reload)."""
        self._stamp = self._file_stamp()
        if self.path is not None and self.path.suffix == SHARDED_SUFFIX:
            return self._load_sharded()
        if self._stamp is not None:
            return self._checked(Gallery.load(self.path, device=self.device))  # type: ignore[arg-type]
        return Gallery(self.spec.embedding_dim, device=self.device)

    def _load_sharded(self) -> Any:
        from engine.sharded import ShardedGallery, ShardOptions

        check_ray_address(self.path, self.ray)  # type: ignore[arg-type]
        if self.gallery is not None:
            try:
                self.gallery.reload()
            except Exception:
                self._stamp = None  # an add removed a file mid-reload: try again at the next request
                raise
            return self.gallery
        opts = dataclasses.replace(self.shard_options or ShardOptions(), address=self.ray, device=self.device)
        return self._checked(ShardedGallery.load(self.path, options=opts))  # type: ignore[arg-type]

    def _checked(self, gallery: Any) -> Any:
        if gallery.dim != self.spec.embedding_dim:
            raise InputError(f"gallery {self.path} holds {gallery.dim}-D embeddings, the artefact makes "
                             f"{self.spec.embedding_dim}-D; embed it again with this artefact")
        return gallery

    def _check_batch(self, n: int, what: str) -> None:
        limit = self.spec.max_batch
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
            queries = self.embed(request[IMAGES])
        else:
            queries = request[EMBEDDINGS]
            self._check_batch(len(queries), "search")
        self.refresh()
        distances, ids = self.gallery.search(queries, int(k[0]))
        return {DISTANCES: np.asarray(distances, np.float32), IDS: np.asarray(ids, np.int64)}

    def add(self, request: Request) -> Response:
        if self.path is None:
            raise InputError("this server has no gallery file to save to; start it with --gallery PATH "
                             "(python -m serve) or JLML_GALLERY=PATH (tritonserver)")
        images = _required(request, IMAGES, "uint8 images (N, H, W, 3)")
        self._check_batch(len(images), "gallery_add")
        ids = np.asarray(_required(request, IDS, "int64 ids, one per image")).reshape(-1)
        cams = np.asarray(request[CAMS]).reshape(-1) if CAMS in request else np.full(len(images), UNKNOWN_CAM)
        if len(ids) != len(images) or len(cams) != len(images):
            raise InputError(f"gallery_add got {len(images)} images, {len(ids)} ids and {len(cams)} cams; "
                             "send one id (and one cam) per image")
        embeddings = self.embed(images)
        self.refresh()
        self.gallery.add(embeddings, ids, cams)
        try:
            self.gallery.save(self.path)
        except BaseException:
            self.gallery = self._load()
            raise
        self._stamp = self._file_stamp()
        return {COUNT: np.array([len(self.gallery)], np.int64)}
