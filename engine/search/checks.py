"""The gallery's input checks, in one place: vectors, labels, k, nprobe and the constructor's options.

Every check returns the value in the form the search paths take (C-contiguous float arrays, int64
labels) or raises InputError saying what was got, what was expected and how to fix it. They are lean
for input already in shape: a one-query search at 10^3 rows takes ~40 us.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import InputError

STORAGES = ("float32", "float16")
ID_MAX = np.iinfo(np.int64).max
FP32_MAX = float(np.finfo(np.float32).max)
FP16_MAX = float(np.finfo(np.float16).max)  # 65504
# Squared norms up to FP32_MAX / 4: then every squared distance (<= (|q| + |g|)^2 <= 4 max(|q|^2, |g|^2)),
# every GEMM term (2 q.g <= 2 |q| |g|) and the norms themselves stay finite in FP32. Beyond it (values
# of ~1e19 and more) FP32 distances overflow to inf and rows come back as padding (-1).
SQNORM_MAX = FP32_MAX / 4
FLOAT_DTYPES = frozenset(np.dtype(t) for t in ("float16", "float32", "float64"))  # native byte order
# Columns of a search's results are k while k <= max(rows, MAX_PADDED_K); beyond that they stop there:
# the extra columns could only hold padding (inf / -1), and a k of 10^9 on a 60-row gallery would
# otherwise allocate 12 GB per query before any work. faiss's GPU indexes refuse k above 2048.
MAX_PADDED_K = 2048
Labels = tuple[np.ndarray, np.ndarray]  # (query ids, query cams): rows with both equal are skipped


def check_vectors(x: Any, dim: int, name: str) -> np.ndarray:
    """(N, dim) float array, C-contiguous (a negative-stride view such as ``emb[::-1]`` is copied)."""
    arr = x if type(x) is np.ndarray else np.asarray(x) if not hasattr(x, "detach") else x.detach().cpu().numpy()
    if arr.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name} must be float16/float32/float64, got {arr.dtype}; cast with "
                         ".astype(np.float32)")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InputError(f"{name} must have shape (N, {dim}), got {arr.shape}; the gallery was made "
                         f"for {dim}-D embeddings")
    if arr.size:
        safe = math.sqrt(SQNORM_MAX / dim)  # no value beyond it: no squared norm beyond SQNORM_MAX
        if not (-safe <= arr.min() and arr.max() <= safe):  # two reductions; NaN fails both
            _check_range(arr, name)
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _check_range(arr: np.ndarray, name: str) -> None:
    """Raise InputError for NaN/inf values or squared norms FP32 distances cannot hold."""
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contain NaN or inf (got {int((~np.isfinite(arr)).sum())} values); "
                         "check the model output")
    sq = np.einsum("ij,ij->i", arr, arr, dtype=np.float64)
    if sq.max() > SQNORM_MAX:
        raise InputError(f"{name} have squared L2 norms up to {sq.max():.3g} (row {int(sq.argmax())}), above "
                         f"the {SQNORM_MAX:.3g} (norm {math.sqrt(SQNORM_MAX):.3g}) whose distances FP32 can "
                         "hold: they would come back as inf / -1; L2-normalise the embeddings (the models "
                         "return unit vectors) or scale them down")


def check_storable(emb: np.ndarray, storage: str, name: str = "embeddings") -> None:
    """Raise InputError when ``emb`` has values the gallery's ``storage`` cannot hold (FP16: |x| > 65504
    becomes inf, and distances NaN)."""
    if storage == "float16" and emb.size and float(np.abs(emb).max()) > FP16_MAX:
        bad = np.abs(emb) > FP16_MAX
        raise InputError(f"storage='float16' holds values up to {FP16_MAX:g}, got {float(np.abs(emb).max()):g} "
                         f"in {name} ({int(bad.sum())} values, first in row {int(bad.any(axis=1).argmax())}); "
                         "use storage='float32' or L2-normalise the embeddings")


def check_labels(x: Any, n: int, name: str, *, ids: bool = False) -> np.ndarray:
    """int64 (n,) labels. ``ids``: must be in [0, 2^63) (-1 is the padding marker of search results)."""
    arr = np.asarray(x)
    if arr.shape != (n,) or arr.dtype.kind not in "iu":
        raise InputError(f"{name} must be an integer array of shape ({n},), got {arr.dtype} {arr.shape}; "
                         "give one label per row")
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > ID_MAX:
        raise InputError(f"{name} must be below 2^63, got {int(arr.max())}; it would wrap to a negative "
                         "int64 (-1 is the padding marker); use ids in [0, 2^63)")
    out = arr.astype(np.int64)
    if ids and out.size and int(out.min()) < 0:
        raise InputError(f"{name} must be >= 0, got {int(out.min())}; -1 marks padding in search results, "
                         "so use ids in [0, 2^63)")
    return out


def check_exclusion(query_ids: Any, query_cams: Any, n: int) -> Labels | None:
    """The (query ids, query cams) of a re-id search that skips same-id-same-camera rows, or None."""
    if query_ids is None and query_cams is None:
        return None
    if query_ids is None or query_cams is None:
        raise InputError("pass both query_ids and query_cams to exclude same-id-same-camera rows, "
                         f"got only {'query_ids' if query_cams is None else 'query_cams'}")
    return check_labels(query_ids, n, "query_ids"), check_labels(query_cams, n, "query_cams")


def check_k(k: Any) -> int:
    """k as an int, or InputError unless it is a positive int."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k <= 0:
        raise InputError(f"k must be a positive int, got {k!r}")
    return int(k)


def result_width(k: int, rows: int) -> int:
    """Result columns of a search for k neighbours among ``rows`` rows: k, bounded by the larger of the
    gallery size and MAX_PADDED_K, so that padding never exceeds MAX_PADDED_K columns and memory is
    bounded before anything is allocated."""
    return min(k, max(rows, MAX_PADDED_K))


def check_nprobe(value: Any) -> None:
    """Raise InputError unless ``value`` is a positive int (IVF lists probed, or HNSW efSearch)."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise InputError(f"nprobe must be a positive int (lists probed, or HNSW efSearch), got {value!r}")


def check_options(dim: Any, storage: str, chunk: int | None, query_batch: int, method: str,
                  methods: tuple[str, ...]) -> None:
    """The Gallery constructor's options, each on its own (the device-dependent ones are the plan's)."""
    if not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise InputError(f"dim must be a positive int, got {dim!r}; use the model's embedding_dim")
    if storage not in STORAGES:
        raise InputError(f"storage must be one of {STORAGES}, got {storage!r}")
    if (chunk is not None and chunk <= 0) or query_batch <= 0:
        raise InputError(f"chunk and query_batch must be positive, got {chunk} and {query_batch}")
    if method not in methods:
        raise InputError(f"method must be one of {methods}, got {method!r}")
    if method == "fp16" and storage != "float16":
        raise InputError("method='fp16' searches FP16 rows, got storage 'float32'; pass storage='float16'")
    if method == "faiss" and storage != "float32":
        raise InputError(f"method={method!r} searches FP32 rows, got storage {storage!r}; use "
                         "storage='float32' or method='auto'")
