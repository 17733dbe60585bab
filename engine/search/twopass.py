"""Provably exact two-pass k-NN: a coarse shortlist, then an FP64 re-rank of it (the "bf16", "fp32"
and "fp16" paths, class ``TwoPassSearch``).

Why: on AVX512_BF16 CPUs a bf16 GEMM runs ~2x faster than FP32, which is what it takes to beat
faiss-cpu's FP32 IndexFlatL2. bf16 alone would change neighbours, so every query carries a rigorous
bound on its coarse error and its answer is used only when the bound proves it exact; the others are
redone with an FP32 shortlist (tiny bound), then with ever wider shortlists until proven.

The answer of a query is defined by ``exact_distances`` (squared L2 in FP64, rounded to FP32), ranked
ascending, ties by row rank (id, then insertion order; see engine.search.gemm). It does not depend on the
coarse dtype, the shortlist width or the batching, so "bf16" and "fp32" modes return bit-identical results.

Bound (per query q, gallery rows g_j, ranking score S_j = ||g_j||^2 - 2 q.g_j in exact arithmetic;
u = 2^-24, gamma_m = m u / (1 - m u), n = dim, q~ = bf16(q), g~_j = bf16(g_j)):
  r = max_j ||g_j - g~_j||, G = max_j ||g~_j||, N = max_j fl(||g_j||^2), s_q = ||q - q~||.
The coarse GEMM sums n + 3 products (the norm rides in 3 bf16 columns, see distance.bf16_rows) in
FP32 and rounds the result to bf16 (unit roundoff u_b = 2^-8; a ~ acc -> |fl(a) - a| <= u_b/(1-u_b)
|fl(a)| =: u' |S~_j|). So |S~_j - S_j| <= u' |S~_j| + eps_q with
  eps_q = gamma_n N                                (FP32 norm vs exact norm)
        + 2 (||q|| r + s_q G)                      (Cauchy-Schwarz on the bf16 rounding of q and g)
        + gamma_{n+3} (2 ||q~|| G + N) + 2 e_split (FP32 accumulation; norm split residual)
        + 2 u (N + 2 ||q|| G)                      (slack for the remaining FP32 roundings).
Every row outside the c-row shortlist has S~_j >= c_last, hence (s - u'|s| is increasing)
S_j >= c_last - u'|c_last| - eps_q =: L and its true distance >= ||q||^2 + L. If that exceeds the
k-th re-ranked distance T by more than the FP32/FP64 rounding of the re-rank, no outside row can
enter (or tie into) the top k: the shortlist answer is the exact answer. The FP32 shortlist uses
the same test with r = s_q = u' = 0 (its one output rounding is in the last term).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..device import ieee_fp32
from ..errors import InputError
from . import plan
from .buffers import with_room
from .checks import Labels
from .distance import bf16_rows, bf16_width, exact_distances
from .gemm import SearchParams, by_value_then_rank, smallest, torch_batch
from .plan import cpu_threads

if TYPE_CHECKING:
    import torch

    from .rows import RowStore

U32 = 2.0**-24
U_BF16 = 2.0**-8
NATIVE_BF16_ENV = "JLML_NATIVE_BF16"
WIDEN = 8  # a failed shortlist is retried this many times wider
RERANK_BLOCK = 32  # queries re-ranked at once: their gathered rows stay cache-sized
CONVERT_ROWS = 1 << 16  # rows converted to bf16 at once: the FP32 temporaries stay a few hundred MB


def shortlist_size(k: int) -> int:
    """Rows re-ranked per query; measured on 100k x 1024 unit vectors (see engine.search.gallery)."""
    return max(4 * k, 32)


@functools.cache
def bf16_is_fast() -> bool:
    """True where the CPU has native bf16 dot products (AVX512_BF16 or AMX); else bf16 is emulated.
    NATIVE_BF16_ENV=0/1 overrides the detection (a VM whose /proc/cpuinfo is wrong, or measuring the
    plan of a CPU without native bf16 on one that has it)."""
    forced = os.environ.get(NATIVE_BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise InputError(f"{NATIVE_BF16_ENV} must be 0 or 1, got {forced!r}; unset it to detect the CPU")
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Rows:
    """One searchable copy of the gallery plus the constants its error bound needs."""

    data: torch.Tensor  # FP32/FP16 rows, or bf16 rows with embedded norms (distance.bf16_rows)
    sqnorm: torch.Tensor  # FP32 ||g||^2 (ignored by bf16 rows, which carry it)
    row_error: float  # r
    norm_max: float  # G
    sqnorm_max: float  # N
    split_error: float  # max |sum of the 3 bf16 norm pieces + ||g||^2 / 2|
    out_rounding: float  # u' of the GEMM's output dtype (0 when covered by eps)


@dataclass(frozen=True)
class TwoPass:
    """The rows a two-pass search reads: shortlist rows, exact rows (possibly in host memory, for a
    GPU gallery stored as FP16) and their FP64 squared norms (on the queries' device)."""

    first: Rows
    exact: Rows
    sqnorm64: torch.Tensor

    @property
    def retry(self) -> Rows:
        """Rows of the wider retries: the exact rows where they live with the queries, else ``first``."""
        return self.exact if self.exact.data.device == self.sqnorm64.device else self.first


def fp16_rows(rows16: torch.Tensor, sqnorm: torch.Tensor, big_n: float, row_error: float,
              norm_max: float) -> Rows:
    """FP16 rows scanned with an FP32 GEMM against the FP32 rows' norms: r = max ||g - fp16(g)||,
    G = max ||fp16(g)|| (kept as running maxima by the Gallery), no bf16 terms. ``big_n`` is
    ``upper_max(sqnorm)``, which the Gallery keeps as a running maximum too (so no search rescans n)."""
    return Rows(rows16, sqnorm, row_error, norm_max, big_n, 0.0, 0.0)


def fp32_rows(gallery: torch.Tensor, sqnorm: torch.Tensor, big_n: float) -> Rows:
    """The gallery as stored: its own shortlist pass has the FP32 bound only. G comes from the FP32
    norms (``big_n`` = ``upper_max(sqnorm)``), rounded up by their own error bound
    (fl(||g||^2) >= (1 - gamma_n) ||g||^2)."""
    return Rows(gallery, sqnorm, 0.0, math.sqrt(big_n * (1 + _gamma(gallery.shape[1]))), big_n, 0.0, 0.0)


class CoarseRows:
    """The bf16 copy of the gallery, extended at each search by the rows added since the last one.

    Why incremental: a full conversion of 10^5 x 1024 rows costs more than a small search, so only
    new rows are converted (in CONVERT_ROWS blocks, bounding the FP32 temporaries), and the bound's
    constants r, G and the split residual are running maxima.
    """

    def __init__(self) -> None:
        self._buf: Any = None
        self._n, self._row_error, self._norm_max, self._split = 0, 0.0, 0.0, 0.0

    def rows(self, gallery: torch.Tensor, sqnorm: torch.Tensor, big_n: float) -> Rows:
        """The bf16 rows of ``gallery`` (converting only those added since the last call); ``big_n``
        is ``upper_max(sqnorm)``."""
        import torch

        n = gallery.shape[0]
        if self._buf is None:
            self._buf = torch.empty((0, bf16_width(gallery.shape[1])), dtype=torch.bfloat16)
        self._buf = with_room(self._buf, self._n, n - self._n)  # one growth for all new rows
        for start in range(self._n, n, CONVERT_ROWS):
            self._append(gallery[start:start + CONVERT_ROWS], sqnorm[start:start + CONVERT_ROWS])
        return Rows(self._buf[:n], sqnorm, self._row_error, self._norm_max, big_n, self._split,
                    U_BF16 / (1 - U_BF16))

    def _append(self, gallery: torch.Tensor, sqnorm: torch.Tensor) -> None:
        import torch

        data, dim = bf16_rows(gallery, sqnorm), gallery.shape[1]
        self._buf[self._n:self._n + len(data)] = data
        self._n += len(data)
        rounded = data[:, :dim].float()
        split = (data[:, dim:dim + 3].to(torch.float64).sum(dim=1) + 0.5 * sqnorm.to(torch.float64)).abs()
        self._row_error = max(self._row_error, upper_max((gallery.float() - rounded).norm(dim=1)))
        self._norm_max = max(self._norm_max, upper_max(rounded.norm(dim=1)))
        self._split = max(self._split, upper_max(split))


def upper_max(x: torch.Tensor) -> float:
    """Max as a float, rounded up by one part in 2^20 so the bound never rests on a rounded-down max."""
    return float(x.max()) * (1 + 2.0**-20) if x.numel() else 0.0


def _gamma(m: int) -> float:
    return m * U32 / (1 - m * U32)


def _error(queries: torch.Tensor, rows: Rows) -> torch.Tensor:
    """eps_q of the module docstring, FP64, one per query."""
    import torch

    n = queries.shape[1]
    q = queries.to(torch.float64)
    q_norm = q.norm(dim=1)
    if rows.data.dtype == torch.bfloat16:
        rounded = queries.to(torch.bfloat16).to(torch.float64)
        s_q, q_norm_t = (q - rounded).norm(dim=1), rounded.norm(dim=1)
    else:
        s_q, q_norm_t = torch.zeros_like(q_norm), q_norm
    g, big_n = rows.norm_max, rows.sqnorm_max
    return (_gamma(n) * big_n + 2 * (q_norm * rows.row_error + s_q * g)
            + _gamma(n + 3) * (2 * q_norm_t * g + big_n) + 2 * rows.split_error
            + 2 * U32 * (big_n + 2 * q_norm * g)) * (1 + 2.0**-20)


def _rerank(queries: torch.Tensor, rows: TwoPass, rank: torch.Tensor, positions: torch.Tensor,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact distances of each query's shortlist rows; the k best by (distance, rank)."""
    import torch

    q64 = queries.to(torch.float64)
    q_sq = (q64 * q64).sum(dim=1)
    safe = positions.clamp(min=0)
    dist = torch.empty(positions.shape, dtype=torch.float32, device=queries.device)
    gather = _Gather(rows.exact.data, safe, queries.device, RERANK_BLOCK)
    for s in range(0, len(queries), RERANK_BLOCK):
        idx = safe[s:s + RERANK_BLOCK]
        gathered = gather(s).view(*idx.shape, -1)
        dist[s:s + RERANK_BLOCK] = exact_distances(q64[s:s + RERANK_BLOCK], gathered, rows.sqnorm64[idx],
                                                   q_sq[s:s + RERANK_BLOCK])
    dist.masked_fill_(positions < 0, float("inf"))
    d, p = by_value_then_rank(dist, positions, rank)
    return d[:, :k], p[:, :k]


class _Gather:
    """The exact rows of each block of queries' shortlists, on the queries' device.

    Rows on the queries' device are gathered there. Host rows of a GPU gallery (FP16 storage) are
    gathered on the host: the positions come over once per batch (one sync, not one per block), and
    each block's rows go through one of two pinned buffers with an asynchronous copy; a buffer is
    refilled only after the CUDA event recorded behind its last copy, so the host prepares block i+1
    while block i is still being copied.
    """

    def __init__(self, rows: torch.Tensor, positions: torch.Tensor, device: torch.device, block: int) -> None:
        import torch

        self._rows, self._device, self._block, self._torch = rows, device, block, torch
        self._host = rows.device != device
        self._where = positions.to(rows.device) if self._host else positions
        width = positions.shape[1] if positions.dim() == 2 else 0
        self._buffers = ([torch.empty((block * width, rows.shape[1]), dtype=rows.dtype, pin_memory=True)
                          for _ in range(2)] if self._host else [])
        self._copied: list[Any] = [None, None]

    def __call__(self, start: int) -> torch.Tensor:
        flat = self._where[start:start + self._block].reshape(-1)
        if not self._host:
            return self._rows.index_select(0, flat)
        slot = start // self._block % 2
        if self._copied[slot] is not None:
            self._copied[slot].synchronize()  # its previous block's copy has left the buffer
        staged = self._buffers[slot][:len(flat)]
        self._torch.index_select(self._rows, 0, flat, out=staged)
        out = staged.to(self._device, non_blocking=True)
        self._copied[slot] = self._torch.cuda.Event()
        self._copied[slot].record(self._torch.cuda.current_stream(self._device))  # the copy's stream
        return out


def _proven(last: torch.Tensor, kth: torch.Tensor, queries: torch.Tensor, rows: Rows) -> torch.Tensor:
    """Queries whose outside rows are all provably farther than their k-th re-ranked distance."""
    import torch

    q64 = queries.to(torch.float64)
    q_sq = (q64 * q64).sum(dim=1)
    last64, kth64 = last.to(torch.float64), kth.to(torch.float64)
    lower = q_sq + last64 - rows.out_rounding * last64.abs() - _error(queries, rows)
    slack = kth64 * 2.0**-20 + 2.0**-40 * (q_sq + last64.abs() + rows.sqnorm_max) + 1e-30
    return torch.isinf(last64) | (lower > kth64 + slack)


def _pass(queries: torch.Tensor, first: Rows, rows: TwoPass, params: SearchParams,
          c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One shortlist + re-rank: (distances, positions, proven mask)."""
    scores, positions = smallest(queries, first.data, first.sqnorm, c, params.chunk, params.exclusion)
    # The re-rank is many small memory-bound ops: on one thread, because an OpenMP fork/join per op
    # (and, on a shared machine, barriers waiting for descheduled threads) made it 4x slower on two
    # (10^4 x 1024, 1,000 queries: 784 ms on two threads, 181 ms on one).
    with cpu_threads(1) if queries.device.type == "cpu" else contextlib.nullcontext():
        d, p = _rerank(queries, rows, params.rank, positions, params.k)
        ok = _proven(scores[:, -1], d[:, -1], queries, first)
    if c >= first.data.shape[0]:  # every row was re-ranked
        ok[:] = True
    return d, p, ok


@dataclass
class Counts:
    """How many queries each pass had to answer (the first pass answers all of them)."""

    queries: int = 0
    fp32: int = 0
    wide: int = 0


def search(queries: torch.Tensor, rows: TwoPass, params: SearchParams,
           counts: Counts) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN (distances FP32 (Q, k), row positions, -1 pad): ``first`` shortlist, then ``retry`` ones.

    ``params.rank`` orders tied rows (gemm.by_value_then_rank).
    """
    c, n = shortlist_size(params.k), rows.exact.data.shape[0]
    d, p, ok = _pass(queries, rows.first, rows, params, c)
    counts.queries += len(queries)
    retry = rows.retry
    widths = [] if rows.first is retry else [c]
    widths += [c * WIDEN**i for i in range(1, 64) if c * WIDEN**(i - 1) < n]
    for width in widths:
        todo = (~ok).nonzero().squeeze(1)
        if len(todo) == 0:
            break
        if width == c:
            counts.fp32 += len(todo)
        else:
            counts.wide += len(todo)
        d[todo], p[todo], ok[todo] = _pass(queries[todo], retry, rows, params.subset(todo), min(width, n))
    return d, p


class TwoPassSearch:
    """The two-pass paths over a RowStore: "bf16" (bf16 shortlist, needs native bf16 to pay off),
    "fp32" (FP32 shortlist) and "fp16" (FP16 rows shortlisted on their device, re-ranked against the
    FP32 rows kept in host memory). ``counts`` tallies the queries each pass answered."""

    MODES = ("bf16", "fp32", "fp16")

    def __init__(self, store: RowStore, mode: str, counts: Counts, chunk: int | None = None) -> None:
        self.name, self._store, self._counts, self._chunk = mode, store, counts, chunk
        self._coarse = CoarseRows() if mode == "bf16" else None

    def search(self, queries: np.ndarray, k: int, exclusion: Labels | None) -> tuple[np.ndarray, np.ndarray]:
        """(distances (Q, k) float32 ascending, ids (Q, k) int64), padded with inf / -1."""
        import torch

        store = self._store
        chunk = self._chunk or plan.chunk_rows(self.name, store.device.type, len(queries))
        qt, params = torch_batch(store, queries, k, exclusion, chunk)
        with ieee_fp32(torch):  # the bounds assume FP32 GEMMs: no TF32 (CUDA) or bf16 (oneDNN) however set
            sqnorm, big_n, emb = store.rows("sqnorm"), store.norm_bound, store.rows("emb")
            exact = fp32_rows(store.rows("exact") if self.name == "fp16" else emb, sqnorm, big_n)
            first = (self._coarse.rows(emb, sqnorm, big_n) if self._coarse is not None else
                     fp16_rows(emb, sqnorm, big_n, *store.fp16_bound) if self.name == "fp16" else exact)
            d, p = search(qt, TwoPass(first, exact, store.rows("sqnorm64")), params, self._counts)
        return store.results(d, p)
