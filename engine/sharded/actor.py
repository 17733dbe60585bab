"""One shard of a ShardedGallery: a Ray actor holding one in-process Gallery, loaded from its file.

The actor's only constructor arguments are the manifest's path and its shard index, so when Ray
restarts it (after a crash or a SIGKILL) it reads the manifest again and loads the file the manifest
names *now*: the last committed version, never a staged one. Adds are two-phase (see
engine.sharded.gallery): ``prepare`` appends the rows in memory and writes them to a new file, the
driver writes the manifest, then ``commit`` (or ``abort``, which reloads the committed file).

A load failure is kept and reported by ``info`` rather than raised: Ray would treat an exception in
the constructor as a dead actor and the driver would lose the message that says what is wrong.

The actors are shared by every ShardedGallery handle on the same manifest in one Ray cluster (named,
detached: see engine.sharded.gallery); ``holders`` counts those handles (``attach`` / ``detach``) so the
last one to close ends them. A restarted actor starts with none: a handle re-attaches when it finds its
shard restarted, and one that finds its shard ended by another's close starts it again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArtifactError, JLMLError
from ..gallery import Gallery
from .manifest import EMPTY, Manifest, ShardEntry, check_shard_file, shard_name


def _set_threads(threads: int) -> None:
    """torch's and faiss's (OpenMP) threads: Ray's OMP_NUM_THREADS would keep faiss at one."""
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss
    except ImportError:
        return
    faiss.omp_set_num_threads(threads)


def read_rows(files: list[str], rows: np.ndarray) -> np.ndarray:
    """The embeddings of row numbers ``rows`` (in file order) from .npz files of ``kept`` and
    ``embeddings`` (ShardedGallery.add_files), holding one file at a time beside this shard's rows."""
    wanted, parts = np.asarray(rows, np.int64), []
    for name in files:
        with np.load(name) as chunk:
            pick = np.isin(chunk["kept"], wanted)
            if pick.any():
                parts.append(chunk["embeddings"][pick])
    found = sum(len(p) for p in parts)
    if found != len(wanted):
        raise ArtifactError(f"the {len(files)} embedding files hold {found} of this shard's {len(wanted)} rows; "
                            "a file changed since the add began: embed again")
    return np.concatenate(parts)


class ShardActor:
    """Wrapped with ``ray.remote`` by the driver; plain Python otherwise (the tests use it directly too)."""

    def __init__(self, manifest_path: str, index: int, device: str = "cpu", threads: int | None = None) -> None:
        if threads is not None:  # Ray gives an actor one thread per reserved CPU (one at cpus=0)
            _set_threads(threads)
        self.manifest_path, self.index, self.device = Path(manifest_path), int(index), device
        self.gallery: Gallery | None = None
        self.entry: ShardEntry | None = None
        self.staged: ShardEntry | None = None
        self.error: JLMLError | None = None
        self.holders: set[str] = set()
        try:
            self._load()
        except JLMLError as exc:
            self.error = exc

    def _load(self) -> None:
        """Load the shard file the manifest names now, checked against the manifest."""
        manifest = Manifest.read(self.manifest_path)
        if self.index >= len(manifest.shards):
            raise ArtifactError(f"{self.manifest_path} has {len(manifest.shards)} shards, asked for shard "
                                f"{self.index}; load the gallery with the manifest that created it")
        entry = manifest.shards[self.index]
        if entry == EMPTY:  # no row routed here yet: a Gallery file is never empty, so there is none
            gallery = Gallery(manifest.dim, device=self.device, storage=manifest.storage, method=manifest.method)
        else:
            path = check_shard_file(self.manifest_path.parent, entry, self.manifest_path, self.index)
            gallery = Gallery.load(path, device=self.device, method=manifest.method)
        got = (gallery.dim, gallery.storage, len(gallery))
        if got != (manifest.dim, manifest.storage, entry.rows):
            raise ArtifactError(f"shard {self.index} file {path} holds (dim, storage, rows) {got}, the manifest "
                                f"{self.manifest_path} says {(manifest.dim, manifest.storage, entry.rows)}; the "
                                "file belongs to another gallery: restore the shard files with their manifest")
        self.gallery, self.entry, self.staged, self.error = gallery, entry, None, None

    def _ready(self) -> Gallery:
        if self.gallery is None:
            raise self.error or ArtifactError(f"shard {self.index} of {self.manifest_path} is not loaded")
        return self.gallery

    def info(self) -> dict[str, Any]:
        """pid, rows and the load error (None when loaded): the driver's check after starting the actor."""
        import torch

        return {"pid": os.getpid(), "rows": None if self.gallery is None else len(self.gallery), "error": self.error,
                "threads": torch.get_num_threads()}

    def attach(self, holder: str) -> dict[str, Any]:
        """One more handle uses this shard; its ``info``."""
        self.holders.add(holder)
        return self.info()

    def detach(self, holder: str) -> int:
        """That handle is closed; the handles left (0: the caller ends the actor)."""
        self.holders.discard(holder)
        return len(self.holders)

    def pid(self) -> int:
        return os.getpid()

    def search(self, queries: np.ndarray, k: int, query_ids: np.ndarray | None,
               query_cams: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        # Arrays from Ray's object store are read-only views; torch wants writable ones (a copy: Q x D).
        return self._ready().search(np.array(queries), k, query_ids=query_ids, query_cams=query_cams)

    def prepare(self, rows: dict[str, Any], version: int, images_root: str | None) -> ShardEntry:
        """Phase one: append ``rows`` (embeddings, ids, cams, paths) and write them to this version's new
        file; the committed file stays as it is until the manifest names the new one."""
        gallery = self._ready()
        if self.staged is not None:  # a previous add's abort never arrived: start from the committed file
            self.abort()
            gallery = self._ready()
        gallery.images_root = images_root
        embeddings = np.array(rows["embeddings"]) if "embeddings" in rows else read_rows(rows["files"], rows["rows"])
        gallery.add(embeddings, rows["ids"], rows["cams"], paths=rows["paths"])
        name = shard_name(self.manifest_path, self.index, version)
        gallery.save(self.manifest_path.parent / name)
        self.staged = ShardEntry.of(self.manifest_path.parent, name, len(gallery))
        return self.staged

    def commit(self, entry: ShardEntry) -> int:
        """Phase two, after the manifest names ``entry``. An actor restarted since ``prepare`` holds the
        old rows: it reloads, and the manifest now gives it the new file."""
        if self.staged == entry:
            self.entry, self.staged = entry, None
        else:
            self._load()
        return len(self._ready())

    def abort(self) -> None:
        """The add is not applied: back to the file the (unchanged) manifest names."""
        if self.staged is not None:
            self._load()

    def sync(self) -> int:
        """Reload if the manifest names another file for this shard now (another process added)."""
        if Manifest.read(self.manifest_path).shards[self.index] != self.entry:
            self._load()
        return len(self._ready())

    def save_to(self, manifest_path: str) -> ShardEntry:
        """Write this shard as the same shard of another manifest (ShardedGallery.save to a new place)."""
        target = Path(manifest_path)
        name = shard_name(target, self.index, 0)
        if len(self._ready()) == 0:
            return EMPTY
        self._ready().save(target.parent / name)
        return ShardEntry.of(target.parent, name, len(self._ready()))
