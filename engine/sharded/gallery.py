"""ShardedGallery: the Gallery contract over N Ray actors, each holding one shard file.

Rows are routed by ``id mod N`` (stable in every process; all rows of one id live on one shard, so
"equal ids in insertion order" holds across shards). ``search`` sends the query batch once to the
object store and to every shard, and merges their top-k by (distance, id), stable: the answer of one
Gallery over the same rows, tie rule and padding (inf / -1) included.

Guarantees (tests/engine/test_sharded_faults.py):
* search: a shard that dies mid-search is restarted by Ray (``max_restarts``), reloads its committed
  file and is asked again (``retries`` times); the answer is the fault-free one.
* add: all-or-none. Phase one writes every touched shard's new file (nothing replaced); the manifest
  is then replaced atomically -- the commit point; phase two tells the shards. If any shard fails in
  phase one, or the manifest cannot be written, every shard reloads its committed file and
  ``ShardedAddError`` says ``applied=False``: nothing changed, in memory or on disk. After the
  manifest is written the add is applied: a shard that dies then reloads the new file. The files the
  manifest names are always one consistent set. One process adds to a gallery at a time.

One set of shard actors per gallery: the actors are named (``shard-III-UUID``) in a Ray namespace
derived from the manifest's resolved path (``actor_namespace``) and detached, so every handle on that
manifest in one Ray cluster -- e.g. the server's ``search`` and ``gallery_add`` processes -- attaches
to the same actors (``get_if_exists``): an add through one is searched by the other at once, and the
gallery is held once. Each handle registers with every shard; ``close`` unregisters it and ends the
actors when it was the last. A handle that finds its shard gone (ended by another's ``close``) starts
it again from the manifest's files. A process killed without ``close`` leaves its registration behind:
the actors then stay until ``shutdown`` (or the Ray cluster stops), and the next handle reuses them.

``ray`` is imported here only (the ``ray`` extra); ``ray.init`` joins ``address`` (None: a cluster
already started in this process, else a new local one).
"""
from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, BackendUnavailableError, InputError, JLMLError
from ..gallery import UNKNOWN_CAM, Gallery
from ..search.file import is_fingerprint
from .actor import ShardActor
from .manifest import SUFFIX, Manifest, ShardEntry, stale_files


class ShardedAddError(JLMLError, RuntimeError):
    """An add that failed on a shard; ``applied`` says whether it took effect on every shard (True) or
    on none (False)."""

    def __init__(self, message: str, *, applied: bool) -> None:
        super().__init__(message)
        self.applied = applied


class ShardUnavailableError(ArtifactError):
    """A shard stayed unreachable through every retry."""


@dataclass(frozen=True)
class ShardOptions:
    """Per-shard actor resources and fault settings. ``strategy``: Ray's scheduling strategy ("SPREAD"
    puts the shards on different nodes when they fit)."""

    address: str | None = None
    cpus: float = 1.0
    gpus: float = 0.0
    device: str = "cpu"
    max_restarts: int = -1
    retries: int = 5
    strategy: Any = "DEFAULT"  # or a Ray scheduling strategy object (PlacementGroupSchedulingStrategy)
    start_timeout_s: float = 300.0
    threads: int | None = None  # torch threads per shard; None: Ray's default (one per reserved CPU)


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(f"a sharded gallery needs ray ({exc}); pip install 'jlml-engine[ray]'") from exc
    return ray


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The global top-k of per-shard top-k lists: by distance, then id; stable, so rows of one id (one
    shard) keep that shard's order."""
    dist = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    order = np.lexsort((ids, dist), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(ids, order, axis=1)


def actor_namespace(manifest_path: Path) -> str:
    """The Ray namespace of a gallery's shard actors: one per manifest file (its resolved path)."""
    return "jlml-gallery-" + hashlib.sha256(str(manifest_path.resolve()).encode()).hexdigest()[:16]


def _kept(name: str) -> np.ndarray:
    """An embedding file's row numbers (an .npz member is read on its own, not the embeddings)."""
    with np.load(name) as chunk:
        return np.asarray(chunk["kept"], np.int64).reshape(-1)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ShardedGallery:
    """Gallery's ``add`` / ``search`` / ``save`` / ``load`` over shard actors; make with ``create`` or ``load``."""

    def __init__(self, manifest_path: Path, manifest: Manifest, options: ShardOptions,
                 actor: type = ShardActor) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=options.address, include_dashboard=False, logging_level="ERROR")
        self.path, self._manifest, self.options = manifest_path, manifest, options
        self._stamp, self._token, self._class = _stamp(manifest_path), uuid.uuid4().hex, ray.remote(actor)
        self._actors = [self._start(i) for i in range(len(manifest.shards))]
        self._probe = Gallery(manifest.dim, storage=manifest.storage)  # empty: checks inputs as Gallery does
        # the folder the rows' paths are relative to, and the model that embedded the rows (as Gallery's);
        # a new value of either is recorded by the next add
        self.images_root: str | None = manifest.images_root
        self.model_fingerprint: str | None = manifest.model_fingerprint
        try:
            infos = self._call("attach", self._token, timeout=options.start_timeout_s)
        except ray.exceptions.GetTimeoutError as exc:
            self.shutdown()  # never started: nobody else can be using them
            raise ShardUnavailableError(
                f"the {len(manifest.shards)} shard actors of {manifest_path} did not start in "
                f"{options.start_timeout_s:.0f} s; each needs {options.cpus} CPUs and {options.gpus} GPUs: see `ray status`, or lower "
                "ShardOptions.cpus") from exc
        self.threads = [info["threads"] for info in infos]
        for info in infos:
            if info["error"] is not None:
                self.close()
                raise info["error"]

    def _start(self, index: int) -> Any:
        """The handle of shard ``index``'s actor: the running one of this manifest (started with its first
        handle's options), else a new one."""
        o = self.options
        return self._class.options(
            name=f"shard-{index:03d}-{self._manifest.uuid}", namespace=actor_namespace(self.path),
            lifetime="detached", get_if_exists=True, num_cpus=o.cpus, num_gpus=o.gpus, max_restarts=o.max_restarts,
            max_task_retries=0, scheduling_strategy=o.strategy,
        ).remote(str(self.path), index, o.device, o.threads)

    @classmethod
    def create(cls, path: str | os.PathLike[str], dim: int, shards: int, *, method: str = "auto",
               storage: str = "float32", options: ShardOptions = ShardOptions(), actor: type = ShardActor,
               model_fingerprint: str | None = None) -> ShardedGallery:
        """A new empty gallery of ``shards`` shards: the manifest at ``path`` (a shard gets its file with its
        first rows). A manifest already there is replaced; its shard files go at the first add.
        ``model_fingerprint``: the model that embeds the rows (engine.search.file.model_fingerprint)."""
        path = Path(path)
        if path.suffix != SUFFIX:
            raise InputError(f"a sharded gallery's manifest is a .json file, got {path}; e.g. gallery.json")
        if not isinstance(shards, (int, np.integer)) or shards <= 0:
            raise InputError(f"shards must be a positive int, got {shards!r}")
        Gallery(dim, storage=storage, method=method)  # the same checks of dim, storage and method
        if model_fingerprint is not None and not is_fingerprint(model_fingerprint):
            raise InputError(f"model_fingerprint must be 64 hex digits (engine.search.file.model_fingerprint), "
                             f"got {model_fingerprint!r}")
        manifest = Manifest.new(dim, method, storage, int(shards), model_fingerprint)
        manifest.write(path)
        return cls(path, manifest, options, actor)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, options: ShardOptions = ShardOptions(),
             actor: type = ShardActor) -> ShardedGallery:
        """Start one actor per shard of the manifest at ``path``; ArtifactError for a missing shard file
        or one that is not the manifest's (another gallery, dimension, storage, row count)."""
        path = Path(path)
        return cls(path, Manifest.read(path), options, actor)

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def storage(self) -> str:
        return self._manifest.storage

    @property
    def method(self) -> str:
        return self._manifest.method

    @property
    def shards(self) -> int:
        return len(self._actors)

    def __len__(self) -> int:
        return self._current().rows

    def _current(self) -> Manifest:
        """The manifest as written now (one stat when unchanged): another handle on these actors may have
        added, and its rows are in the actors already."""
        stamp = _stamp(self.path)
        if stamp != self._stamp:
            self._manifest, self._stamp = self._read_same(), stamp
        return self._manifest

    def _read_same(self) -> Manifest:
        """The manifest on disk; ArtifactError if it is another gallery's now (created again at this path)."""
        manifest = Manifest.read(self.path)
        if (manifest.uuid, len(manifest.shards)) != (self._manifest.uuid, self.shards):
            raise ArtifactError(f"{self.path} now holds another gallery ({len(manifest.shards)} shards, uuid "
                                f"{manifest.uuid[:8]}); load it again with ShardedGallery.load")
        return manifest

    def pids(self) -> list[int]:
        """The shard actors' process ids (the fault tests kill one)."""
        return self._call("pid")

    def _call(self, method: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """``method(*args)`` on every shard at once, answers in shard order."""
        answers = self._call_each(method, {i: args for i in range(self.shards)}, timeout=timeout)
        return [answers[i] for i in range(self.shards)]

    def _call_each(self, method: str, args_of: dict[int, tuple[Any, ...]],
                   timeout: float | None = None) -> dict[int, Any]:
        """``method(*args_of[i])`` on each shard i at once; a shard that dies is asked again once Ray
        has restarted it (or, ended by another handle's close, this one has started it again), up to
        ``options.retries`` times; a restarted shard is attached to again first."""
        ray = _ray()
        todo = list(args_of)
        results: dict[int, Any] = {}
        for attempt in range(self.options.retries + 1):
            refs = {i: getattr(self._actors[i], method).remote(*args_of[i]) for i in todo}
            todo = []
            for i, ref in refs.items():
                try:
                    results[i] = ray.get(ref, timeout=timeout)
                except ray.exceptions.RayActorError:
                    todo.append(i)
                    self._actors[i] = self._start(i)
                    self._actors[i].attach.remote(self._token)  # runs before the retried call (one caller's order)
                except ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, JLMLError):  # what the caller sent is wrong: Gallery's own error
                        raise exc.cause from None
                    raise
            if not todo:
                return results
            time.sleep(0.2 * (attempt + 1))
        raise ShardUnavailableError(f"shards {todo} of {self.path} did not answer {method!r} after "
                                    f"{self.options.retries} retries; check the Ray cluster (ray status)")

    def search(self, queries: Any, k: int, *, query_ids: Any = None,
               query_cams: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """As Gallery.search: float32 (Q, k) squared L2 ascending, int64 (Q, k) ids, inf / -1 padding."""
        padded = self._probe.search(queries, k, query_ids=query_ids, query_cams=query_cams)
        if len(self) == 0 or len(padded[0]) == 0:
            return padded
        q = np.asarray(queries, np.float32).reshape(len(padded[0]), self.dim)
        excl = (None, None) if query_ids is None else (np.asarray(query_ids, np.int64), np.asarray(query_cams, np.int64))
        ray = _ray()
        return merge_topk(self._call("search", ray.put(q), int(k), *excl), int(k))

    def add(self, embeddings: Any, ids: Any, cams: Any = None, *, paths: Sequence[str] | None = None) -> None:
        """As Gallery.add, all-or-none across shards and saved (see the module's guarantees); raises
        ShardedAddError with ``applied`` when a shard fails."""
        Gallery(self.dim, storage=self.storage).add(embeddings, ids, cams, paths=paths)  # Gallery's checks
        emb = np.asarray(embeddings).reshape(-1, self.dim)
        ids = np.asarray(ids, np.int64).reshape(-1)
        cams = np.full(len(ids), UNKNOWN_CAM, np.int64) if cams is None else np.asarray(cams, np.int64).reshape(-1)
        self._add_routed(ids, cams, paths, lambda on: {"embeddings": emb[on]})

    def add_files(self, files: Sequence[str | os.PathLike[str]], ids: Any, cams: Any = None, *,
                  paths: Sequence[str] | None = None) -> np.ndarray:
        """``add`` of rows the shards read from embedding files themselves (engine.ray_embed's chunks), so
        the caller never holds the embeddings: each file is an .npz of ``kept`` (int64 row numbers) and
        ``embeddings`` (one row each); ``ids``, ``cams`` and ``paths`` are indexed by row number. Rows are
        added in file order; every shard reads every file (on storage all shards see) and keeps its own.
        Returns the row numbers added."""
        files = [os.fspath(Path(f).resolve()) for f in files]
        kept = np.concatenate([_kept(f) for f in files])
        ids = np.asarray(ids, np.int64).reshape(-1)
        cams = np.full(len(ids), UNKNOWN_CAM, np.int64) if cams is None else np.asarray(cams, np.int64).reshape(-1)
        labels = {len(ids), len(cams), len(ids) if paths is None else len(paths)}
        if len(labels) != 1 or len(np.unique(kept)) != len(kept) or not np.all((kept >= 0) & (kept < len(ids))):
            raise InputError(f"add_files got {len(ids)} ids, {len(cams)} cams, {'no' if paths is None else len(paths)} "
                             f"paths and {len(kept)} row numbers in {kept.min(initial=0)}..{kept.max(initial=0)} "
                             f"({len(np.unique(kept))} unique); pass one id, cam and path per row number, each row "
                             "in one file")
        self._add_routed(ids[kept], cams[kept], None if paths is None else [paths[i] for i in kept],
                         lambda on: {"files": files, "rows": kept[on]})
        return kept

    def _add_routed(self, ids: np.ndarray, cams: np.ndarray, paths: Sequence[str] | None,
                    payload: Any) -> None:
        """The two-phase add of rows routed by id; ``payload(mask)``: how shard rows ``mask`` get their
        embeddings (the rows themselves, or the files to read them from)."""
        route = ids % self.shards
        touched = [s for s in range(self.shards) if np.any(route == s)]
        version, root = self._current().version + 1, self.images_root
        calls = [(s, {**payload(route == s), "ids": ids[route == s], "cams": cams[route == s],
                      "paths": None if paths is None else [p for p, r in zip(paths, route, strict=True) if r == s]})
                 for s in touched]
        entries = self._prepare(calls, version, root)
        new = self._manifest.with_shards(entries, root, self.model_fingerprint)
        try:
            new.write(self.path)
        except ArtifactError as exc:
            self._abort(touched)
            raise ShardedAddError(f"the add was applied on none of the shards: {exc}", applied=False) from exc
        self._manifest, self._stamp = new, _stamp(self.path)
        self._call_each("commit", {s: (entries[s],) for s in touched})
        self._clean()

    def _prepare(self, calls: list[tuple[int, dict[str, Any]]], version: int,
                 root: str | None) -> dict[int, ShardEntry]:
        """Phase one on every touched shard at once; on any failure all of them go back (applied=False)."""
        ray = _ray()
        refs = {s: self._actors[s].prepare.remote(rows, version, root) for s, rows in calls}
        entries, failed = {}, []
        for s, ref in refs.items():
            try:
                entries[s] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                failed.append((s, exc))
        if failed:
            self._abort(list(refs))
            s, exc = failed[0]
            raise ShardedAddError(f"the add was applied on none of the shards: shard {s} failed while staging "
                                  f"its rows ({type(exc).__name__}); the gallery is as before, add again",
                                  applied=False) from exc
        return entries

    def _abort(self, shards: list[int]) -> None:
        try:
            self._call_each("abort", {s: () for s in shards})
        finally:  # a shard that cannot be told reloads the unchanged manifest when Ray restarts it
            self._clean()

    def _clean(self) -> None:
        for stale in stale_files(self.path, self._manifest):
            stale.unlink(missing_ok=True)

    def reload(self) -> None:
        """Follow the manifest after another process added to it: shards whose file changed reload it."""
        manifest = self._read_same()
        self._call("sync")
        self._manifest, self._stamp = manifest, _stamp(self.path)
        self.images_root, self.model_fingerprint = manifest.images_root, manifest.model_fingerprint

    def save(self, path: str | os.PathLike[str]) -> None:
        """Every add is saved already: to this manifest nothing is written; elsewhere each shard writes
        its file beside ``path`` and the manifest (new uuid) comes last."""
        target = Path(path)
        if target.resolve() == self.path.resolve():
            return
        if target.suffix != SUFFIX:
            raise InputError(f"a sharded gallery saves to a .json manifest, got {target}; e.g. gallery.json")
        entries = self._call("save_to", str(target.resolve()))
        new = Manifest.new(self.dim, self.method, self.storage, self.shards)
        new.with_shards(dict(enumerate(entries)), self.images_root, self.model_fingerprint).write(target)

    def close(self) -> None:
        """Let go of the shard actors: the last handle on them (in any process of the cluster) ends them."""
        ray = _ray()
        refs = [actor.detach.remote(self._token) for actor in self._actors]
        for actor, ref in zip(self._actors, refs, strict=True):
            try:
                left = ray.get(ref)
            except ray.exceptions.RayActorError:
                left = 0  # gone already, or restarting with no handle registered
            if left == 0:
                ray.kill(actor, no_restart=True)
        self._actors = []

    def shutdown(self) -> None:
        """End the shard actors whoever else holds them (e.g. after a server was killed without closing)."""
        ray = _ray()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []
