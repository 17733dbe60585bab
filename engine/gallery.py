"""Exact squared-L2 gallery search that stays resident on the device it searches on (CPU or CUDA).

Why these choices (measured on the 2-core AMD EPYC dev box, 100,000 x 1024 gallery, 1,000 queries,
k=10; see benchmarks/gallery.py and the report for the figures):

* torch GEMM (MKL / cuBLAS) through the ``||g||^2 - 2 q.g`` expansion (engine.distance) with gallery
  norms computed once at ``add``. The per-query ``||q||^2`` is added only to the k results.
* The gallery is scanned in chunks with a running top-k (engine.topk), queries in batches of
  ``query_batch``: memory is bounded by one (batch x chunk) block, not by gallery size. By default
  the chunk is sized so a block holds BLOCK_ELEMENTS[device type] floats: 8M (32 MB) keeps the CPU
  GEMM cache-friendly; on CUDA every chunk costs a host sync (tie check), so blocks are 64M (256 MB)
  and a small query batch scans a big gallery in few chunks (H200, 1M x 1024: batch 1 went from
  32.7 to 1.8 ms, batch 100 from 47.7 to 8.8 ms against 8192-row chunks).
* Rows stay in insertion order in buffers with amortised capacity growth (GROWTH), so ``add`` copies
  only its new rows and computes only their norms: its peak extra memory is the new rows, plus, when
  the capacity runs out, one buffer GROWTH times the gallery (the old one is freed right after). The
  old sort-by-id-on-add held old + new + concatenated + reordered copies and ran out of memory for a
  10^7 x 1024 FP32 gallery on a 140 GB H200. Ties are broken at search time by a per-row rank (the
  row's place in the ids' stable order: smaller id first, equal ids in insertion order), derived from
  the ids alone, with the two-pass rows below, at the first search after an add.
* On CPU the default search is two-pass (engine.twopass): a shortlist from a bf16 GEMM (~2x the FP32
  GEMM rate on AVX512_BF16 CPUs; this is what beats faiss-cpu) or an FP32 one, re-ranked in FP64, with
  a per-query error bound that proves the shortlist holds the exact top k (else the query is redone
  with FP32 / wider shortlists). Distances are then FP64 squared L2 rounded to FP32, independent of
  batching, so both shortlists give bit-identical answers. Costs a bf16 copy (half the FP32 gallery),
  rebuilt at the first search after an add (many adds, then searches, pay it once).
  ``coarse="off"`` (the default on CUDA) is the single FP32 GEMM pass with GEMM-rounded distances.
* FP32 storage is exact (same neighbours as faiss.IndexFlatL2, tie-aware); FP16 storage halves the
  memory and accumulates in FP32 (exact with respect to the FP16-rounded vectors).

Duplicate ids are allowed (several images of one person can share an id); equal ids keep insertion
order. torch is imported when a Gallery is created, never by ``import engine``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .atomic import atomic_path
from .device import torch_device
from .distance import squared_norms
from .errors import ArtifactError, InputError
from .topk import Exclusion, search_batch
from .twopass import Counts, bf16_is_fast, coarse_rows, fp32_rows
from .twopass import search as two_pass_search

FORMAT_NAME = "jlml-gallery"
FORMAT_VERSION = 1
STORAGES = ("float32", "float16")
COARSE = ("auto", "bf16", "fp32", "off")
BF16_MIN_ROWS = 16_384  # below this the bf16 pass saves less than its shortlist re-rank costs
BLOCK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 26}
GROWTH = 1.5  # capacity factor when an add overflows the buffers: amortised O(1) copies per added row
MIN_CHUNK = 1024
DEFAULT_QUERY_BATCH = 1024
UNKNOWN_CAM = -1


class Gallery:
    """Embeddings with int64 ids (and optional cameras) searched by exact squared L2."""

    def __init__(self, dim: int, *, device: str = "cpu", storage: str = "float32",
                 chunk: int | None = None, query_batch: int = DEFAULT_QUERY_BATCH,
                 coarse: str = "auto") -> None:
        """``coarse`` picks the search: "bf16" / "fp32" shortlist + exact FP64 re-rank (CPU only;
        identical results), "off" one FP32 GEMM pass (GEMM-rounded distances), "auto" bf16 on CPUs
        with native bf16 for float32 galleries of >= BF16_MIN_ROWS rows, fp32 on other CPUs, off on CUDA.
        """
        import torch

        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise InputError(f"dim must be a positive int, got {dim!r}; use the model's embedding_dim")
        if storage not in STORAGES:
            raise InputError(f"storage must be one of {STORAGES}, got {storage!r}")
        if (chunk is not None and chunk <= 0) or query_batch <= 0:
            raise InputError(f"chunk and query_batch must be positive, got {chunk} and {query_batch}")
        if coarse not in COARSE:
            raise InputError(f"coarse must be one of {COARSE}, got {coarse!r}")
        self._device = torch_device(device, torch)
        if self._device.type != "cpu" and coarse in ("bf16", "fp32"):
            raise InputError(f"coarse={coarse!r} is a CPU search, got device {device!r}; use coarse='off' "
                             "or 'auto' on CUDA")
        self._coarse, self.counts = coarse, Counts()
        self._dim, self._storage, self._chunk, self._query_batch = int(dim), storage, chunk, query_batch
        self._n, self._derived = 0, None  # _derived: (rank, two-pass rows or None), see _prepared
        dev, i64 = self._device, torch.int64
        self._store = {"emb": torch.empty((0, self._dim), dtype=getattr(torch, storage), device=dev),
                       "sqnorm": torch.empty(0, dtype=torch.float32, device=dev),
                       "ids": torch.empty(0, dtype=i64, device=dev), "cams": torch.empty(0, dtype=i64, device=dev)}

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
    def search_mode(self) -> str:
        """The search ``coarse`` resolves to for the current rows: "bf16", "fp32" or "off"."""
        if self._coarse != "auto":
            return self._coarse
        if self._device.type != "cpu":
            return "off"
        big = len(self) >= BF16_MIN_ROWS and self._storage == "float32" and bf16_is_fast()
        return "bf16" if big else "fp32"

    def __len__(self) -> int:
        return self._n

    @property
    def _emb(self) -> Any:
        return self._store["emb"][:self._n]

    @property
    def _sqnorm(self) -> Any:
        return self._store["sqnorm"][:self._n]

    @property
    def _ids(self) -> Any:
        return self._store["ids"][:self._n]

    @property
    def _cams(self) -> Any:
        return self._store["cams"][:self._n]

    def add(self, embeddings: Any, ids: Any, cams: Any = None) -> None:
        """Append rows (kept in insertion order); ``cams`` defaults to UNKNOWN_CAM (-1)."""
        import torch

        emb = _check_vectors(embeddings, self._dim, "embeddings")
        new = {"emb": emb, "ids": _check_labels(ids, len(emb), "ids"),
               "cams": (np.full(len(emb), UNKNOWN_CAM, np.int64) if cams is None
                        else _check_labels(cams, len(emb), "cams"))}
        self._derived = None  # it holds views of the buffers: drop it so a grown buffer frees the old one
        n, m = self._n, len(emb)
        for name, rows in new.items():  # copy_ converts dtype and device without a staging copy
            self._store[name] = _with_room(self._store[name], n, m)
            self._store[name][n:n + m].copy_(torch.from_numpy(rows))
        self._store["sqnorm"] = _with_room(self._store["sqnorm"], n, m)
        self._store["sqnorm"][n:n + m] = squared_norms(self._store["emb"][n:n + m])
        self._n = n + m

    def _prepared(self) -> tuple[Any, Any]:
        """(rank, two-pass rows or None), built once at the first search after an add.

        ``rank[row]`` is the row's place in the ids' stable order, the tie key of engine.topk. Both
        depend on all rows, so they are derived lazily: a run of adds pays for them once.
        """
        import torch

        if self._derived is None:
            ids = self._ids
            rank = torch.empty_like(ids)
            rank[torch.sort(ids, stable=True).indices] = torch.arange(self._n, device=ids.device)
            two_pass = self.search_mode != "off" and self._n > 0  # an empty gallery only pads
            self._derived = rank, self._two_pass_rows() if two_pass else None
        return self._derived

    def _two_pass_rows(self) -> tuple[Any, Any, Any]:
        """(first-pass rows, exact rows, FP64 squared norms) for the two-pass search."""
        import torch

        exact = fp32_rows(self._emb, self._sqnorm)
        first = coarse_rows(self._emb, self._sqnorm) if self.search_mode == "bf16" else exact
        return first, exact, squared_norms(self._emb.to(torch.float64))

    def search(self, queries: Any, k: int, *, query_ids: Any = None,
               query_cams: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest rows per query: float32 (Q, k) squared L2 ascending and int64 (Q, k) ids.

        Padded with ``inf`` / ``-1`` when fewer than k rows qualify. With ``query_ids`` and
        ``query_cams`` (re-id evaluation), rows with the query's id *and* camera are skipped.
        """
        import torch

        q = _check_vectors(queries, self._dim, "queries").astype(np.float32, copy=False)
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise InputError(f"k must be a positive int, got {k!r}")
        excl = self._exclusion_labels(query_ids, query_cams, len(q))
        dists, pos = [], []
        for s in range(0, len(q), self._query_batch):
            qt = torch.from_numpy(q[s:s + self._query_batch]).to(self._device)
            exclusion = None if excl is None else Exclusion(
                *(torch.from_numpy(a[s:s + self._query_batch]).to(self._device) for a in excl),
                self._ids, self._cams)
            chunk = self._chunk or max(MIN_CHUNK, BLOCK_ELEMENTS[self._device.type] // len(qt))
            rank, rows = self._prepared()
            if rows is None:
                d, p = search_batch(qt, self._emb, self._sqnorm, rank, int(k), chunk, exclusion)
            else:
                d, p = two_pass_search(qt, *rows, rank, int(k), chunk, exclusion, self.counts)
            dists.append(d.cpu())
            pos.append((p if len(self) == 0 else torch.where(p >= 0, self._ids[p.clamp(min=0)], p)).cpu())
        if not dists:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return torch.cat(dists).numpy(), torch.cat(pos).numpy()

    def _exclusion_labels(self, query_ids: Any, query_cams: Any, n: int) -> tuple[np.ndarray, ...] | None:
        if query_ids is None and query_cams is None:
            return None
        if query_ids is None or query_cams is None:
            raise InputError("pass both query_ids and query_cams to exclude same-id-same-camera rows, "
                             f"got only {'query_ids' if query_cams is None else 'query_cams'}")
        return _check_labels(query_ids, n, "query_ids"), _check_labels(query_cams, n, "query_cams")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an .npz with a JSON header (format, version, dim, count, storage), atomically."""
        header = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "dim": self._dim,
                  "count": len(self), "storage": self._storage}
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, header=np.array(json.dumps(header)), embeddings=self._emb.cpu().numpy(),
                     ids=self._ids.cpu().numpy(), cams=self._cams.cpu().numpy())

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str = "cpu") -> Gallery:
        """Read a file written by ``save``; raise ArtifactError if it is missing, corrupt or too new."""
        header, arrays = read_gallery_file(path)
        gallery = cls(header["dim"], device=device, storage=header["storage"])
        if header["count"]:
            gallery.add(arrays["embeddings"], arrays["ids"], arrays["cams"])
        return gallery


def _with_room(buf: Any, used: int, extra: int) -> Any:
    """``buf`` when it holds ``used + extra`` rows, else its first ``used`` rows copied into a buffer
    GROWTH times larger (exactly ``used + extra`` when that is more, e.g. the first add)."""
    need = used + extra
    if need <= buf.shape[0]:
        return buf
    grown = buf.new_empty((max(need, int(buf.shape[0] * GROWTH)), *buf.shape[1:]))
    grown[:used] = buf[:used]
    return grown


def _check_vectors(x: Any, dim: int, name: str) -> np.ndarray:
    arr = np.asarray(x) if not hasattr(x, "detach") else x.detach().cpu().numpy()
    if arr.dtype not in (np.float16, np.float32, np.float64):
        raise InputError(f"{name} must be float16/float32/float64, got {arr.dtype}; cast with "
                         ".astype(np.float32)")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(f"{name} must have shape (N, {dim}), got {arr.shape}; the gallery was made "
                         f"for {dim}-D embeddings")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contain NaN or inf (got {int((~np.isfinite(arr)).sum())} values); "
                         "check the model output")
    return arr


def _check_labels(x: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.shape != (n,) or arr.dtype.kind not in "iu":
        raise InputError(f"{name} must be an integer array of shape ({n},), got {arr.dtype} {arr.shape}; "
                         "give one label per row")
    return arr.astype(np.int64)


def read_gallery_file(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the ``embeddings``, ``ids`` and ``cams`` arrays of a file written by
    ``Gallery.save``, checked; for tools that need rows (e.g. to show the images behind results)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ("header", "embeddings", "ids", "cams")}
        header = json.loads(str(arrays.pop("header")))
    except FileNotFoundError as exc:
        raise ArtifactError(f"no gallery file at {path}; write one with Gallery.save") from exc
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ArtifactError(f"gallery file {path} is corrupt or not a gallery ({exc}); rebuild it") from exc
    if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"gallery file {path} has format {header.get('format')!r} version {header.get('version')!r}, "
            f"expected {FORMAT_NAME!r} version {FORMAT_VERSION}; rebuild it with this jlml-engine"
        )
    n, dim = header.get("count"), header.get("dim")
    emb = arrays["embeddings"]
    if emb.shape != (n, dim) or arrays["ids"].shape != (n,) or arrays["cams"].shape != (n,) \
            or header.get("storage") not in STORAGES:
        raise ArtifactError(f"gallery file {path} is inconsistent: header {header}, embeddings "
                            f"{emb.shape}, ids {arrays['ids'].shape}; rebuild it")
    return header, arrays
