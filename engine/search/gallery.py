"""Squared-L2 gallery search that stays resident on the device it searches on (CPU or CUDA).

The façade of engine.search (after FAISS): it holds the rows (engine.search.rows), checks its inputs
(engine.search.checks), reads and writes its file (engine.search.file), and hands each query batch to
the one path the plan (engine.search.plan, the one place the measured crossovers live) picks from the
batch's shape. Exact by default: faiss's ``knn_L2sqr`` on the Gallery's own rows where faiss is
installed and wins (small galleries, single queries; faiss_flat.FaissFlat), a provably exact bf16
two-pass search (twopass.TwoPassSearch) on CPUs with native bf16 once a batch is big enough, an FP32
two-pass or one chunked FP32 GEMM pass (gemm.Gemm) otherwise and on CUDA. Every exact path returns faiss's
neighbours (same rows; ties broken by id, equal ids in insertion order); distances are FP32 squared
L2 as the path rounds them (FP64-exact then rounded on the two-pass paths). ``method="ivf"``,
``"hnsw"`` or ``"ivf-sq8"`` trades exactness for speed on 10^7+ rows (faiss indexes,
engine.search.approximate; "ivf-sq8" with FP16 storage holds 10^7 x 512 in 15 GB).

Memory (n rows of dim D; "block" = query_batch x chunk scores):
* resident: the rows (4 or 2 bytes x D each), FP32 and FP64 squared norms, int64 ids and cameras
  (28 bytes a row); a rank per row (8 bytes) once ids are not in insertion order.
* ``add``: the new rows, plus, when the capacity runs out, one buffer GROWTH times the gallery (the
  old one is freed right after): amortised O(1) copies per row, never a sort of all rows.
* ``search``: faiss -- faiss's own fixed blocks (tens of MB), no copy of the rows; torch -- one FP32
  block and its int64 tie keys (12 bytes per score, 96 MB at the CPU default); bf16 -- a bf16 copy
  of the rows ((D + 16) x 2 bytes a row, kept and extended incrementally: built at the first bf16
  search, then only rows added since are converted), one bf16 block (64 MB) and a bounded FP64 re-rank;
  fp32 -- one FP32 block (128 MB) and the re-rank. Nothing scales with n beyond the bf16 copy. ivf / hnsw: faiss's
  own FP32 copy of the rows plus its lists or graph, rebuilt at the first search after an add;
  ivf-sq8: one byte a value plus the lists (the exact re-rank reads the Gallery's own rows).

Duplicate ids are allowed (several images of one person can share an id). Ids must lie in [0, 2^63):
-1 is the padding of results. torch is imported when a Gallery is created, never by ``import engine``.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ..device import torch_device
from ..errors import InputError
from . import faiss_flat, file, plan, twopass
from .approximate import Approximate
from .checks import (
    Labels,
    check_exclusion,
    check_k,
    check_labels,
    check_nprobe,
    check_options,
    check_storable,
    check_vectors,
    result_width,
)
from .faiss_flat import FaissFlat
from .gemm import Gemm
from .rows import RowStore
from .twopass import TwoPassSearch

METHODS = plan.METHODS
DEFAULT_QUERY_BATCH = 1024
UNKNOWN_CAM = -1


class SearchPath(Protocol):
    """What every path class meets (after faiss's Index.search)."""

    name: str

    def search(self, queries: np.ndarray, k: int, exclusion: Labels | None) -> tuple[np.ndarray, np.ndarray]:
        ...


class Gallery:
    """Embeddings with int64 ids (and optional cameras) searched by squared L2."""

    def __init__(self, dim: int, *, device: str = "cpu", storage: str = "float32", chunk: int | None = None,
                 query_batch: int = DEFAULT_QUERY_BATCH, method: str = "auto", nprobe: int | None = None) -> None:
        """``method``: "auto" picks the fastest exact path per batch (engine.search.plan); "faiss",
        "bf16", "fp32" (CPU), "fp16" or "torch" forces one ("fp16": FP16 rows searched, FP32 rows kept
        in host memory for an exact re-rank; the default of a CUDA gallery with storage="float16"); "ivf",
        "hnsw" and "ivf-sq8" are approximate (faiss, either storage), with ``nprobe`` lists (IVF) or
        efSearch (HNSW) per query (also settable later: ``gallery.nprobe = n``)."""
        import torch

        check_options(dim, storage, chunk, query_batch, method, METHODS)
        self._device = torch_device(device, torch)
        if self._device.type != "cpu" and method not in ("auto", "torch", "fp16"):
            raise InputError(f"method={method!r} is a CPU search, got device {device!r}; use method='auto', "
                             "'fp16' or 'torch' on CUDA")
        if method in ("faiss", *plan.APPROXIMATE):
            faiss_flat.load()  # fail now, not at the first search
        if nprobe is not None:
            check_nprobe(nprobe)
        self._method, self._nprobe, self.counts = method, nprobe, twopass.Counts()
        self._dim, self._storage, self._chunk, self._query_batch = int(dim), storage, chunk, query_batch
        self._has_faiss = faiss_flat.available()
        self._store = RowStore(self._dim, self._device, storage,
                               plan.keeps_fp32_rows(method, self._device.type, storage))
        self._paths: dict[str, SearchPath] = {}  # made at a batch's first need, kept across adds
        self._plans: dict[tuple[int, bool], tuple[plan.Shape, SearchPath]] = {}
        self._images = file.RowPaths()
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def device(self) -> str:
        return str(self._device)

    @property
    def storage(self) -> str:
        return self._storage

    @property
    def method(self) -> str:
        return self._method

    @property
    def images_root(self) -> str | None:
        """The folder the rows' ``paths`` are relative to (saved in the file's header)."""
        return self._images.root

    @images_root.setter
    def images_root(self, root: str | None) -> None:
        self._images.root = root

    @property
    def paths(self) -> list[str] | None:
        """The image behind each row ("" where a row was added without one); None when no row has one."""
        return None if self._images.paths is None else list(self._images.paths)

    @property
    def model_fingerprint(self) -> str | None:
        """``engine.search.file.model_fingerprint`` of the artefact that embedded the rows (saved in the
        file's header; consumers check it with ``engine.search.file.check_fingerprint``); None: unknown."""
        return self._fingerprint

    @model_fingerprint.setter
    def model_fingerprint(self, value: str | None) -> None:
        if value is not None and not file.is_fingerprint(value):
            raise InputError(f"model_fingerprint must be 64 hex digits from engine.search.file.model_fingerprint"
                             f"(spec), got {value!r}")
        self._fingerprint = value

    @property
    def nprobe(self) -> int | None:
        """Approximate methods: lists probed (IVF) or efSearch (HNSW) per query; None = the default."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int | None) -> None:
        """Takes effect at the next search, without rebuilding a built index."""
        if value is not None:
            check_nprobe(value)
        self._nprobe = value
        for path in self._paths.values():
            if isinstance(path, Approximate):
                path.nprobe = value

    def __len__(self) -> int:
        return self._store.n

    def search_path(self, batch: int = 1, *, excluding: bool = False) -> str:
        """The path a search of ``batch`` queries takes now: one of plan.EXACT or plan.APPROXIMATE."""
        return self._plan(batch, excluding)[1].name

    def _plan(self, batch: int, excluding: bool) -> tuple[plan.Shape, SearchPath]:
        """The batch's Shape and path, chosen once per batch size until the next add: a search of one
        query at 10^3 rows takes tens of microseconds, so its bookkeeping must not."""
        key = (batch, excluding)
        chosen = self._plans.get(key)
        if chosen is None:
            shape = plan.Shape(
                rows=len(self), batch=batch, dim=self._dim, device=self._device.type, storage=self._storage,
                excluding=excluding, has_faiss=self._has_faiss, bf16_fast=twopass.bf16_is_fast())
            chosen = self._plans[key] = (shape, self._path(plan.path_for(self._method, shape,
                                                                         self._store.fp32_rows)))
        return chosen

    def _path(self, name: str) -> SearchPath:
        """The path object ``name`` (one per gallery: the bf16 copy and the approximate index live in it)."""
        path = self._paths.get(name)
        if path is None:
            path = self._paths[name] = (
                Gemm(self._store, self._chunk) if name == "torch" else
                FaissFlat(self._store, Gemm(self._store, self._chunk)) if name == "faiss" else
                TwoPassSearch(self._store, name, self.counts, self._chunk) if name in TwoPassSearch.MODES else
                Approximate(self._store, name, self._nprobe))
        return path

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in all, so that adds up to there never reallocate: a gallery
        filled in chunks otherwise peaks at GROWTH + 1 times its final size during its last growth."""
        if not isinstance(rows, (int, np.integer)) or rows < 0:
            raise InputError(f"rows must be a non-negative int, got {rows!r}")
        self._store.reserve(int(rows))

    def add(self, embeddings: Any, ids: Any, cams: Any = None, *, paths: Sequence[str] | None = None) -> None:
        """Append rows (kept in insertion order); ``cams`` defaults to UNKNOWN_CAM (-1); ``paths``: the
        image of each row, relative to ``images_root`` (saved with the rows; "" for none)."""
        emb = check_vectors(embeddings, self._dim, "embeddings")
        check_storable(emb, self._storage)
        m = len(emb)
        ids = check_labels(ids, m, "ids", ids=True)
        cams = np.full(m, UNKNOWN_CAM, np.int64) if cams is None else check_labels(cams, m, "cams")
        self._images.check(paths, m)
        n = len(self)
        self._plans = {}
        self._store.add(emb, ids, cams)
        self._images.extend(n, paths, m)

    def search(self, queries: Any, k: int, *, query_ids: Any = None,
               query_cams: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows per query: float32 (Q, k) squared L2 ascending and int64 (Q, k) ids.

        Padded with ``inf`` / ``-1`` when fewer than k rows qualify. With ``query_ids`` and
        ``query_cams`` (re-id evaluation), rows with the query's id *and* camera are skipped. A k above
        both the gallery size and checks.MAX_PADDED_K (2048) gives max(len(gallery), 2048) columns,
        not k: padding stops there, so a huge k never allocates more than the gallery can fill.
        """
        q = check_vectors(queries, self._dim, "queries")
        if q.dtype != np.float32:
            q = q.astype(np.float32)
        k = result_width(check_k(k), len(self))
        excl = check_exclusion(query_ids, query_cams, len(q))
        if len(q) <= self._query_batch and len(self):  # one batch: no result buffers to fill
            return self._search_batch(q, k, excl)
        dists, out = np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        for s in range(0, len(q) if len(self) else 0, self._query_batch):
            part = slice(s, s + self._query_batch)
            dists[part], out[part] = self._search_batch(q[part], k, None if excl is None else
                                                        (excl[0][part], excl[1][part]))
        return dists, out

    def _search_batch(self, q: np.ndarray, k: int, excl: Labels | None) -> tuple[np.ndarray, np.ndarray]:
        """One batch through the one path the plan chose, on the CPU threads the plan gives it."""
        shape, path = self._plan(len(q), excl is not None)
        if self._device.type != "cpu" or plan.keeps_threads(shape):  # one query: not even a look at threads
            return path.search(q, k, excl)
        import torch

        cap = torch.get_num_threads()
        n = plan.threads(shape, cap)
        if n == cap:  # no switch: a small search takes tens of microseconds, keep it lean
            return path.search(q, k, excl)
        with plan.cpu_threads(n, faiss_flat.load() if shape.has_faiss else None):
            return path.search(q, k, excl)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an .npz with a JSON header (format, version, dim, count, storage, method, nprobe[,
        images_root][, model_fingerprint]) and the rows' image paths if any, atomically: one file, so rows and their images
        never disagree, and a load searches the way this gallery does (an approximate index is rebuilt
        at the first search; the log says how long it took).

        A gallery that keeps exact FP32 rows beside its FP16 ones (the "fp16" path) writes the FP32
        rows: the FP16 ones are their rounding, remade on load, so a reloaded gallery stays exact.
        """
        images_header, images = self._images.header_and_arrays()
        header = {"format": file.FORMAT_NAME, "version": file.FORMAT_VERSION, "dim": self._dim,
                  "count": len(self), "storage": self._storage, "method": self._method, "nprobe": self._nprobe,
                  **images_header} | ({} if self._fingerprint is None else {"model_fingerprint": self._fingerprint})
        store = self._store
        file.save(path, header, {name: store.rows(name).cpu().numpy() for name in ("ids", "cams")}
                  | {"embeddings": store.saved_rows()} | images)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str = "cpu", method: str | None = None) -> Gallery:
        """Read a file written by ``save``; raise ArtifactError if it is missing, corrupt or too new.
        ``method`` None: the one the file records, with its nprobe; a method given overrides it."""
        return cls.from_file_arrays(*file.read(path), device=device, method=method)

    @classmethod
    def from_file_arrays(cls, header: dict[str, Any], arrays: dict[str, np.ndarray], *, device: str = "cpu",
                         method: str | None = None) -> Gallery:
        """The gallery of a file already read with ``read_gallery_file`` (header, arrays)."""
        recorded = header.get("method", "auto")
        if method is None:
            method = recorded
            if device != "cpu" and recorded in plan.EXACT and recorded not in ("torch", "fp16"):
                method = "auto"  # a CPU path on a GPU: the GPU's exact path gives the same neighbours
        nprobe = header.get("nprobe") if method == recorded else None
        gallery = cls(header["dim"], device=device, storage=header["storage"], method=method, nprobe=nprobe)
        gallery.images_root = header.get("images_root")
        gallery.model_fingerprint = header.get("model_fingerprint")
        if header["count"]:
            paths = arrays["paths"].tolist() if "paths" in arrays else None
            gallery.add(arrays["embeddings"], arrays["ids"], arrays["cams"], paths=paths)
        return gallery
