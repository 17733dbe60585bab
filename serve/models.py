"""The gallery behind ``search`` and ``gallery_add``: plain Python over engine's public API.

serve.triton_models wraps it in Triton's Python backend (one process per model); it is tested without
a server too. What only the engine can know (k <= 0, a batch above the artefact's max, ids that do not
match the images, a missing input) is refused with an engine InputError, which the client gets as a
one-line HTTP 400 / gRPC INVALID_ARGUMENT, and the server keeps serving.

The gallery file records the model that embedded its rows (engine.search.file.model_fingerprint);
``load_gallery`` refuses a file embedded by another model than the artefact's (SpecMismatchError naming
both) unless the override is given, and serves one that records none with a warning. Rows added to a
new file are stamped with the artefact's model. A sharded gallery's manifest records its model too and
is checked the same way (``check_manifest``), before any shard actor starts.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine import InputError, ModelSpec
from engine.client import CAMS, COUNT, DISTANCES, EMBEDDINGS, IDS, IMAGES, MAX_PADDED_K, K
from engine.gallery import UNKNOWN_CAM, Gallery
from engine.search.file import check_fingerprint, model_fingerprint
from engine.sharded.manifest import SUFFIX

Request = dict[str, np.ndarray]  # input name -> array, as the request carried it
Response = dict[str, np.ndarray]
SHARDED_SUFFIX = SUFFIX  # a gallery path ending so is a sharded gallery's manifest (engine.sharded)
Embed = Callable[[np.ndarray], np.ndarray]  # uint8 (N, H, W, 3) -> unit embeddings (N, D)
# How to serve a gallery embedded by another model on purpose (both ways the models are started).
OVERRIDE = "--allow-other-model (python -m serve) or JLML_ALLOW_OTHER_MODEL=1 (tritonserver)"


def load_gallery(path: Path, spec: ModelSpec, *, artifact: str, device: str = "cpu", allow_other_model: bool = False,
                 warn: bool = True, override: str = OVERRIDE) -> Gallery:
    """``Gallery.load(path)`` checked against the artefact (``spec``, named ``artifact`` in messages):
    InputError for rows of another embedding size, SpecMismatchError (both fingerprints named) for rows
    another model embedded unless ``allow_other_model``. A file that records no model is served, with
    one warning when ``warn``."""
    gallery = Gallery.load(path, device=device)
    check_gallery_model(path, gallery.dim, gallery.model_fingerprint, spec, artifact=artifact,
                        allow_other_model=allow_other_model, warn=warn, override=override)
    return gallery


def check_manifest(path: Path, spec: ModelSpec, *, artifact: str, allow_other_model: bool = False,
                   warn: bool = True, override: str = OVERRIDE) -> None:
    """``load_gallery``'s checks for a sharded gallery, from its manifest (before any shard actor starts)."""
    from engine.sharded.manifest import Manifest

    manifest = Manifest.read(path)
    check_gallery_model(path, manifest.dim, manifest.model_fingerprint, spec, artifact=artifact,
                        allow_other_model=allow_other_model, warn=warn, override=override)


def check_gallery_model(path: Path, dim: int, fingerprint: str | None, spec: ModelSpec, *, artifact: str,
                        allow_other_model: bool, warn: bool, override: str) -> None:
    """The gallery at ``path`` (``dim``, recorded ``fingerprint``) against the artefact: its size, and its
    model unless ``allow_other_model`` (one that records none: a warning when ``warn``)."""
    check_dim(path, dim, spec)
    if not allow_other_model and (warn or fingerprint is not None):
        check_fingerprint(fingerprint, spec, source=f"gallery {path}", artifact=artifact, override=override)


def check_dim(path: Path, dim: int, spec: ModelSpec) -> None:
    """InputError unless the gallery at ``path`` (one file or a sharded manifest) holds the artefact's size."""
    if dim != spec.embedding_dim:
        raise InputError(f"gallery {path} holds {dim}-D embeddings, the artefact makes "
                         f"{spec.embedding_dim}-D; embed it again with this artefact")


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

    ``search`` and ``gallery_add`` run in separate processes (one Triton model each). A sharded gallery's
    actors are shared by both (engine.sharded: named per manifest), so an add is searched at once; the
    manifest is still followed as below. For a one-file gallery the file is what they share:
    ``gallery_add`` embeds (``embed``), adds and saves the file atomically (engine.atomic: a server
    killed mid-save leaves the previous file), and every request first reloads the file if another
    process replaced it (one stat). If the save fails the in-memory gallery is
    reloaded from the file, so what is served is always what is saved.

    Every load checks the file's model (``load_gallery``; ``artifact`` names the artefact, and
    ``allow_other_model`` lifts the check); ``warn``: say once, at the first load, that the file records
    no model (the search model does; gallery_add stays quiet so one server says it once).
    """

    def __init__(self, embed: Embed, spec: ModelSpec, path: Path | None, *, device: str = "cpu",
                 artifact: str = "the artefact", allow_other_model: bool = False, warn: bool = True,
                 ray: str | None = None, shard_options: Any = None) -> None:
        """``ray``: the Ray cluster of a sharded gallery (``path`` a .json manifest, engine.sharded);
        ``shard_options``: its engine.sharded.ShardOptions (default: one CPU per shard)."""
        self.embed, self.spec, self.path, self.device = embed, spec, path, device
        self.artifact, self.allow_other_model = artifact, allow_other_model
        self.ray, self.shard_options = ray, shard_options
        self._stamp: Any = None
        self.gallery: Any = None
        self.gallery = self._load(warn=warn)

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

    def _load(self, *, warn: bool = False) -> Any:
        """The Gallery (a .npz, its model checked: ``load_gallery``) or ShardedGallery (a .json manifest) at
        ``path``; a sharded one already open follows its manifest (only the shards whose file changed reload)."""
        self._stamp = self._file_stamp()
        if self.path is not None and self.path.suffix == SHARDED_SUFFIX:
            return self._load_sharded(warn)
        if self.path is None or self._stamp is None:
            return Gallery(self.spec.embedding_dim, device=self.device)
        return load_gallery(self.path, self.spec, artifact=self.artifact, device=self.device,
                            allow_other_model=self.allow_other_model, warn=warn)

    def _load_sharded(self, warn: bool) -> Any:
        from engine.sharded import ShardedGallery, ShardOptions

        check_ray_address(self.path, self.ray)  # type: ignore[arg-type]
        check_manifest(self.path, self.spec, artifact=self.artifact,  # type: ignore[arg-type]
                       allow_other_model=self.allow_other_model, warn=warn)
        if self.gallery is not None:
            try:
                self.gallery.reload()
            except Exception:
                self._stamp = None  # an add removed a file mid-reload: try again at the next request
                raise
            return self.gallery
        opts = dataclasses.replace(self.shard_options or ShardOptions(), address=self.ray, device=self.device)
        return ShardedGallery.load(self.path, options=opts)  # type: ignore[arg-type]

    def close(self) -> None:
        """Let go of a sharded gallery's actors (the last of the server's models to close ends them)."""
        close = getattr(self.gallery, "close", None)
        if close is not None:
            close()

    def _check_batch(self, n: int, what: str) -> None:
        limit = self.spec.max_batch
        if not 1 <= n <= limit:
            raise InputError(f"{what} batch of {n}, expected 1..{limit} (the artefact's max batch); "
                             "split larger batches into several requests")

    def _k(self, request: Request) -> int:
        """The request's k, bounded before anything is allocated: at most the gallery's rows, or
        MAX_PADDED_K where that is more (the columns past the gallery's rows are padding)."""
        k = np.asarray(_required(request, K, "int32 k of shape [1], e.g. k=[10]")).reshape(-1)
        if k.size != 1 or int(k[0]) <= 0:
            raise InputError(f"k must be one positive int32, got {k.tolist()}; e.g. k=[10]")
        limit = max(len(self.gallery), MAX_PADDED_K)
        if int(k[0]) > limit:
            raise InputError(f"k={int(k[0])} is more than the gallery's {len(self.gallery)} rows and the padding "
                             f"cap {MAX_PADDED_K}; ask for at most {limit} (columns past the gallery's rows "
                             "come back as inf / -1)")
        return int(k[0])

    def search(self, request: Request) -> Response:
        if (IMAGES in request) == (EMBEDDINGS in request):
            if K not in request:
                raise InputError(f"missing inputs: send {K!r} (int32 k of shape [1], e.g. k=[10]) and one of "
                                 f"{IMAGES!r} (uint8 N,H,W,3) or {EMBEDDINGS!r} (float32 N,D)")
            raise InputError(f"send exactly one of {IMAGES!r} (uint8 N,H,W,3) or {EMBEDDINGS!r} (float32 N,D)")
        query = request[IMAGES] if IMAGES in request else request[EMBEDDINGS]
        self._check_batch(len(query), "search")
        self.refresh()
        k = self._k(request)
        queries = self.embed(query) if IMAGES in request else query
        distances, ids = self.gallery.search(queries, k)
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
        if not len(self.gallery):
            # A new file (a saved one always has rows): its rows are this artefact's. A file that has rows
            # but records no model (written before fingerprints) is not stamped: its rows may be another's.
            self.gallery.model_fingerprint = model_fingerprint(self.spec)
        self.gallery.add(embeddings, ids, cams)
        try:
            self.gallery.save(self.path)
        except BaseException:
            self.gallery = self._load()
            raise
        self._stamp = self._file_stamp()
        return {COUNT: np.array([len(self.gallery)], np.int64)}
