"""Squared-L2 gallery search that stays resident on the device it searches on (CPU or CUDA).

Exact by default, with the fastest path chosen per query batch from its shape (engine.search_plan,
the one place the measured crossovers live): faiss's ``knn_L2sqr`` on the Gallery's own rows where
faiss is installed and wins (small galleries, single queries), a provably exact bf16 two-pass search
(engine.twopass) on CPUs with native bf16 once a batch is big enough, an FP32 two-pass or one
chunked FP32 GEMM pass (engine.topk) otherwise and on CUDA. Every exact path returns faiss's
neighbours (same rows; ties broken by id, equal ids in insertion order); distances are FP32 squared
L2 as the path rounds them (FP64-exact then rounded on the two-pass paths). ``method="ivf"``,
``"hnsw"`` or ``"ivf-sq8"`` trades exactness for speed on 10^7+ rows (faiss indexes,
engine.faiss_search; "ivf-sq8" with FP16 storage holds 10^7 x 512 in 15 GB).

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
from typing import Any

import numpy as np

from . import faiss_search, gallery_file, search_plan, twopass
from .buffers import with_room
from .device import ieee_fp32, torch_device
from .distance import squared_norms
from .errors import InputError
from .gallery_file import STORAGES, check_labels, check_vectors
from .gallery_file import read as read_gallery_file  # for tools that need a file's rows
from .topk import Exclusion, SearchParams, search_batch

METHODS = ("auto", *search_plan.EXACT, *faiss_search.Approximate.KINDS)
# Scores per block: on CPU 8M for the one-pass search (FP32 scores + int64 keys, 96 MB) and 32M for the
# two-pass shortlist scan (bf16 scores, 64 MB: at 10^5 x 1024 x 1,000 queries 32,768-row chunks ran
# 1.93x faiss against 1.63x for 8,192, interleaved); on CUDA 64M, few launches.
BLOCK_ELEMENTS = {"cpu": 1 << 23, "cpu-two-pass": 1 << 25, "cuda": 1 << 26}
MIN_CHUNK = 1024
NORM_ELEMENTS = 1 << 20  # values whose FP64 norms are computed at once in add: an 8 MB FP64 temporary
DEFAULT_QUERY_BATCH = 1024
UNKNOWN_CAM = -1


class Gallery:
    """Embeddings with int64 ids (and optional cameras) searched by squared L2."""

    def __init__(self, dim: int, *, device: str = "cpu", storage: str = "float32", chunk: int | None = None,
                 query_batch: int = DEFAULT_QUERY_BATCH, method: str = "auto", nprobe: int | None = None) -> None:
        """``method``: "auto" picks the fastest exact path per batch (engine.search_plan); "faiss",
        "bf16", "fp32" (CPU), "fp16" or "torch" forces one ("fp16": FP16 rows searched, FP32 rows kept
        in host memory for an exact re-rank; the default of a CUDA gallery with storage="float16"); "ivf",
        "hnsw" and "ivf-sq8" are approximate (faiss, either storage), with ``nprobe`` lists (IVF) or
        efSearch (HNSW) per query (also settable later: ``gallery.nprobe = n``)."""
        import torch

        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise InputError(f"dim must be a positive int, got {dim!r}; use the model's embedding_dim")
        if storage not in STORAGES:
            raise InputError(f"storage must be one of {STORAGES}, got {storage!r}")
        if (chunk is not None and chunk <= 0) or query_batch <= 0:
            raise InputError(f"chunk and query_batch must be positive, got {chunk} and {query_batch}")
        if method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {method!r}")
        self._device = torch_device(device, torch)
        if self._device.type != "cpu" and method not in ("auto", "torch", "fp16"):
            raise InputError(f"method={method!r} is a CPU search, got device {device!r}; use method='auto', "
                             "'fp16' or 'torch' on CUDA")
        if method == "fp16" and storage != "float16":
            raise InputError("method='fp16' searches FP16 rows, got storage 'float32'; pass storage='float16'")
        if method in ("faiss", *faiss_search.Approximate.KINDS):
            faiss_search.load()  # fail now, not at the first search
            if method == "faiss" and storage != "float32":
                raise InputError(f"method={method!r} searches FP32 rows, got storage {storage!r}; use "
                                 "storage='float32' or method='auto'")
        if nprobe is not None:
            faiss_search.check_nprobe(nprobe)
        self._method, self._nprobe, self.counts = method, nprobe, twopass.Counts()
        self._dim, self._storage, self._chunk, self._query_batch = int(dim), storage, chunk, query_batch
        self._n, self._ids_sorted, self._ids_are_rows, self._has_faiss = 0, True, True, faiss_search.available()
        self._ranks: tuple[Any, Any] | None = None  # (rank, order), rebuilt after an add
        self._coarse = twopass.CoarseRows()
        self._approx: faiss_search.Approximate | None = None
        self._views: dict[str, np.ndarray] = {}
        self._plans: dict[tuple[int, bool], tuple[search_plan.Shape, str]] = {}
        dev, i64 = self._device, torch.int64
        self._store = {"emb": torch.empty((0, self._dim), dtype=getattr(torch, storage), device=dev),
                       "sqnorm": torch.empty(0, dtype=torch.float32, device=dev),
                       "sqnorm64": torch.empty(0, dtype=torch.float64, device=dev),
                       "ids": torch.empty(0, dtype=i64, device=dev), "cams": torch.empty(0, dtype=i64, device=dev)}
        self._images = gallery_file.RowPaths()
        self._fp16_bound = (0.0, 0.0)  # running r, G of the "fp16" path (see twopass.fp16_rows)
        self._norm_bound = 0.0  # running twopass.upper_max of the FP32 norms: the bounds' N, kept per add
        if self.search_path() == "fp16":  # FP32 rows for the exact re-rank, in host memory
            self._store["exact"] = torch.empty((0, self._dim), dtype=torch.float32)

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
    def nprobe(self) -> int | None:
        """Approximate methods: lists probed (IVF) or efSearch (HNSW) per query; None = the default."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int | None) -> None:
        """Takes effect at the next search, without rebuilding a built index."""
        if value is not None:
            faiss_search.check_nprobe(value)
        self._nprobe = value
        if self._approx is not None:
            self._approx.set_nprobe(value)

    def search_path(self, batch: int = 1, *, excluding: bool = False) -> str:
        """The path a search of ``batch`` queries takes now: one of search_plan.EXACT or
        faiss_search.Approximate.KINDS."""
        return self._plan(batch, excluding)[1]

    def _path(self, shape: search_plan.Shape) -> str:
        if self._method == "faiss" and shape.excluding:
            return "torch"  # faiss cannot skip same-id-same-camera rows per query
        if "exact" in self._store:
            return "fp16"  # FP32 rows are kept: every search re-ranks against them
        if self._method != "auto":
            return self._method
        return search_plan.choose(shape)

    def _plan(self, batch: int, excluding: bool) -> tuple[search_plan.Shape, str]:
        """The batch's Shape and path, chosen once per batch size until the next add: a search of one
        query at 10^3 rows takes tens of microseconds, so its bookkeeping must not."""
        key = (batch, excluding)
        plan = self._plans.get(key)
        if plan is None:
            shape = search_plan.Shape(
                rows=self._n, batch=batch, dim=self._dim, device=self._device.type, storage=self._storage,
                excluding=excluding, has_faiss=self._has_faiss, bf16_fast=twopass.bf16_is_fast())
            plan = self._plans[key] = (shape, self._path(shape))
        return plan

    def __len__(self) -> int:
        return self._n

    def _rows(self, name: str) -> Any:
        return self._store[name][:self._n]

    def _host(self, name: str) -> np.ndarray:
        """Zero-copy numpy view of a CPU gallery's rows (cached until the next add)."""
        if name not in self._views:
            self._views[name] = self._rows(name).numpy()
        return self._views[name]

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in all, so that adds up to there never reallocate: a gallery
        filled in chunks otherwise peaks at GROWTH + 1 times its final size during its last growth."""
        if not isinstance(rows, (int, np.integer)) or rows < 0:
            raise InputError(f"rows must be a non-negative int, got {rows!r}")
        for name in self._store:
            self._store[name] = with_room(self._store[name], self._n, max(0, int(rows) - self._n), growth=1)
        self._views = {}

    def add(self, embeddings: Any, ids: Any, cams: Any = None, *, paths: Sequence[str] | None = None) -> None:
        """Append rows (kept in insertion order); ``cams`` defaults to UNKNOWN_CAM (-1); ``paths``: the
        image of each row, relative to ``images_root`` (saved with the rows; "" for none)."""
        import torch

        emb = check_vectors(embeddings, self._dim, "embeddings")
        new = {"emb": emb, "ids": check_labels(ids, len(emb), "ids", ids=True),
               "cams": (np.full(len(emb), UNKNOWN_CAM, np.int64) if cams is None
                        else check_labels(cams, len(emb), "cams"))}
        n, m = self._n, len(emb)
        self._images.check(paths, m)
        last = int(self._store["ids"][n - 1]) if n else -1
        self._ids_sorted &= bool(m == 0 or (new["ids"][0] >= last and np.all(np.diff(new["ids"]) >= 0)))
        self._ids_are_rows &= bool(self._ids_sorted and np.array_equal(new["ids"], np.arange(n, n + m)))
        self._ranks, self._approx, self._views, self._plans = None, None, {}, {}
        for name in self._store:
            self._store[name] = with_room(self._store[name], n, m)
        for name, rows in new.items():  # copy_ converts dtype and device without a staging copy
            self._store[name][n:n + m].copy_(torch.from_numpy(rows))
        step = max(1, NORM_ELEMENTS // self._dim)
        if "exact" in self._store:
            self._store["exact"][n:n + m].copy_(torch.from_numpy(emb))
        starts = range(n, n + m, step)
        # Each block's maxima land in one buffer made before the blocks' temporaries (small tensors kept
        # between them would pin the allocator's heap, and the peak with it); read once per add: on
        # CUDA one host sync, not one per block.
        top = torch.zeros((len(starts), 3), dtype=torch.float32, device=self._device)
        for j, s in enumerate(starts):
            self._add_norms(s, min(s + step, n + m), top[j])
        if len(starts):
            self._norm_bound = max(self._norm_bound, twopass.upper_max(top[:, 0]))
            if "exact" in self._store:
                r, g = self._fp16_bound
                self._fp16_bound = (max(r, twopass.upper_max(top[:, 1])), max(g, twopass.upper_max(top[:, 2])))
        self._images.extend(n, paths, m)
        self._n = n + m

    def _add_norms(self, start: int, stop: int, top: Any) -> None:
        """Norms of rows [start, stop): of the FP32 rows when kept (the "fp16" path), else as stored.
        ``top`` gets the block's (max squared norm, max FP16 rounding error r, max FP16 norm G)."""
        import torch

        stored = self._store["emb"][start:stop]
        exact = self._store["exact"][start:stop].to(stored.device) if "exact" in self._store else stored
        self._store["sqnorm"][start:stop] = squared_norms(exact)
        self._store["sqnorm64"][start:stop] = squared_norms(exact.to(torch.float64))
        top[0] = self._store["sqnorm"][start:stop].max()
        if "exact" in self._store:
            low = stored.float()
            top[1], top[2] = (exact - low).norm(dim=1).max(), low.norm(dim=1).max()

    def _rank_order(self) -> tuple[Any, Any]:
        """(rank, order): ``rank[row]`` is the row's place in the ids' stable order (the tie key of
        every path), ``order`` its inverse. Identity while ids arrive in order (no sort at all)."""
        import torch

        if self._ranks is None:
            ids = self._rows("ids")
            order = (torch.arange(self._n, device=ids.device) if self._ids_sorted
                     else torch.sort(ids, stable=True).indices)
            rank = order if self._ids_sorted else torch.empty_like(order)
            if not self._ids_sorted:
                rank[order] = torch.arange(self._n, device=ids.device)
            self._ranks = rank, order
        return self._ranks

    def search(self, queries: Any, k: int, *, query_ids: Any = None,
               query_cams: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows per query: float32 (Q, k) squared L2 ascending and int64 (Q, k) ids.

        Padded with ``inf`` / ``-1`` when fewer than k rows qualify. With ``query_ids`` and
        ``query_cams`` (re-id evaluation), rows with the query's id *and* camera are skipped.
        """
        q = check_vectors(queries, self._dim, "queries")
        if q.dtype != np.float32:
            q = q.astype(np.float32)
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k must be a positive int, got {k!r}")
        k = int(k)
        excl = self._exclusion_labels(query_ids, query_cams, len(q))
        if len(q) <= self._query_batch and self._n:  # one batch: no result buffers to fill
            return self._search_batch(q, k, excl)
        dists, out = np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        for s in range(0, len(q) if self._n else 0, self._query_batch):
            part = slice(s, s + self._query_batch)
            dists[part], out[part] = self._search_batch(q[part], k, None if excl is None else
                                                        (excl[0][part], excl[1][part]))
        return dists, out

    def _search_batch(self, q: np.ndarray, k: int,
                      excl: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        shape, path = self._plan(len(q), excl is not None)
        if self._device.type != "cpu":
            return self._torch_search(q, k, excl, path)
        if search_plan.keeps_threads(shape):  # one query: not even a look at the thread count
            return self._cpu_search(q, k, excl, path)
        import torch

        cap = torch.get_num_threads()
        n = search_plan.threads(shape, cap)
        if n == cap:  # no switch: a small search takes tens of microseconds, keep it lean
            return self._cpu_search(q, k, excl, path)
        with search_plan.cpu_threads(n, faiss_search.load() if shape.has_faiss else None):
            return self._cpu_search(q, k, excl, path)

    def _cpu_search(self, q: np.ndarray, k: int, excl: tuple[np.ndarray, np.ndarray] | None,
                    path: str) -> tuple[np.ndarray, np.ndarray]:
        if path == "faiss":
            return self._faiss_search(q, k)
        if path in faiss_search.Approximate.KINDS:
            if excl is not None:
                raise InputError(f"method={path!r} cannot skip same-id-same-camera rows; search without "
                                 "query_ids/query_cams or use an exact method")
            if self._approx is None:
                self._approx = faiss_search.Approximate(path, self._host("emb"), self._nprobe)
            d, p = self._approx.search(q, k)
            return d, self._ids_of(p)
        return self._torch_search(q, k, excl, path)

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's exact scan on the Gallery's rows; ties faiss cannot rank by id go to the torch pass."""
        rank = None if self._ids_sorted else self._rank_order()[0].numpy()
        d, p, redo = faiss_search.exact(q, self._host("emb"), self._host("sqnorm"), k, rank)
        ids = self._ids_of(p)
        if redo.size:  # ties at the k-th beyond faiss's candidates: the torch pass ranks them by id
            d[redo], ids[redo] = self._torch_search(q[redo], k, None, "torch")
        return d, ids

    def _torch_search(self, q: np.ndarray, k: int, excl: tuple[np.ndarray, np.ndarray] | None,
                      path: str) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) from the torch paths (topk / twopass); positions become ids on the device."""
        import torch

        dev = self._device
        qt = torch.from_numpy(q).to(dev)
        exclusion = None if excl is None else Exclusion(
            torch.from_numpy(excl[0]).to(dev), torch.from_numpy(excl[1]).to(dev), self._rows("ids"),
            self._rows("cams"))
        rank, order = self._rank_order()
        block = BLOCK_ELEMENTS["cpu-two-pass" if path in ("bf16", "fp32") and dev.type == "cpu" else dev.type]
        chunk = self._chunk or max(MIN_CHUNK, block // max(1, len(qt)))
        params = SearchParams(k, chunk, rank, exclusion)
        with ieee_fp32(torch):  # the bounds assume FP32 GEMMs: no TF32 (CUDA) or bf16 (oneDNN) however set
            if path == "torch":
                d, p = search_batch(qt, self._rows("emb"), self._rows("sqnorm"), params, order)
            else:
                sqnorm, big_n = self._rows("sqnorm"), self._norm_bound
                exact = twopass.fp32_rows(self._rows("exact" if path == "fp16" else "emb"), sqnorm, big_n)
                first = (self._coarse.rows(self._rows("emb"), sqnorm, big_n) if path == "bf16" else
                         twopass.fp16_rows(self._rows("emb"), sqnorm, big_n, *self._fp16_bound)
                         if path == "fp16" else exact)
                d, p = twopass.search(qt, twopass.TwoPass(first, exact, self._rows("sqnorm64")), params,
                                      self.counts)
        ids = torch.where(p >= 0, self._rows("ids")[p.clamp(min=0)], p)
        return d.cpu().numpy(), ids.cpu().numpy()

    def _ids_of(self, positions: np.ndarray) -> np.ndarray:
        """Ids of faiss's row positions (CPU galleries only), -1 kept."""
        if self._ids_are_rows:  # ids 0..n-1 in insertion order (the common case): positions are the ids
            return positions
        ids = self._host("ids")[positions]
        ids[positions < 0] = -1
        return ids

    def _exclusion_labels(self, query_ids: Any, query_cams: Any,
                          n: int) -> tuple[np.ndarray, np.ndarray] | None:
        if query_ids is None and query_cams is None:
            return None
        if query_ids is None or query_cams is None:
            raise InputError("pass both query_ids and query_cams to exclude same-id-same-camera rows, "
                             f"got only {'query_ids' if query_cams is None else 'query_cams'}")
        return check_labels(query_ids, n, "query_ids"), check_labels(query_cams, n, "query_cams")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an .npz with a JSON header (format, version, dim, count, storage[, images_root]) and
        the rows' image paths if any, atomically: one file, so rows and their images never disagree.

        A gallery that keeps exact FP32 rows beside its FP16 ones (the "fp16" path) writes the FP32
        rows: the FP16 ones are their rounding, remade on load, so a reloaded gallery stays exact.
        """
        images_header, images = self._images.header_and_arrays()
        header = {"format": gallery_file.FORMAT_NAME, "version": gallery_file.FORMAT_VERSION, "dim": self._dim,
                  "count": len(self), "storage": self._storage, **images_header}
        rows = self._rows("exact" if "exact" in self._store else "emb")
        gallery_file.save(path, header, {name: self._rows(name).cpu().numpy() for name in ("ids", "cams")}
                          | {"embeddings": rows.cpu().numpy()} | images)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str = "cpu", method: str = "auto") -> Gallery:
        """Read a file written by ``save``; raise ArtifactError if it is missing, corrupt or too new."""
        return cls.from_file_arrays(*read_gallery_file(path), device=device, method=method)

    @classmethod
    def from_file_arrays(cls, header: dict[str, Any], arrays: dict[str, np.ndarray], *, device: str = "cpu",
                         method: str = "auto") -> Gallery:
        """The gallery of a file already read with ``read_gallery_file`` (header, arrays)."""
        gallery = cls(header["dim"], device=device, storage=header["storage"], method=method)
        gallery.images_root = header.get("images_root")
        if header["count"]:
            paths = arrays["paths"].tolist() if "paths" in arrays else None
            gallery.add(arrays["embeddings"], arrays["ids"], arrays["cams"], paths=paths)
        return gallery

